"""The report document: gathered from a run folder (:class:`edgesft.runfolder.RunFolder`) and checked
against ``report.schema.json``; the quality-vs-speed points and their Pareto front."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from edgesft import __version__
from edgesft.environment import LIBRARIES
from edgesft.errors import EdgesftError
from edgesft.io import read_json
from edgesft.machine import machine_info
from edgesft.quality import POINT_METRICS, common_rows
from edgesft.runfolder import RunFolder, bundle_primary, primary_key

SCHEMA = "edgesft.report/2"  # 2: size_bytes (was file_bytes); primary is an artifact key
SCHEMA_FILE = "report.schema.json"
MODEL_STAGES = ("train", "merge", "prune")


@dataclass(frozen=True)
class QualityAxis:
    """One choice of the quality axis of the Pareto front; ``sign`` -1 turns lower-is-better into higher."""

    name: str
    label: str
    keys: tuple[str, ...]
    sign: float


# In order of preference: what a device user gets (task exact match), then closeness to the tuned model.
QUALITY_AXES = (
    QualityAxis("test.exact_match", "test exact match", ("test", "exact_match"), 1.0),
    QualityAxis("-kl_mean", "KL divergence vs the reference model (nats)", ("kl_mean",), -1.0),
    QualityAxis("-val_perplexity", "validation perplexity", ("val_perplexity",), -1.0),
)


def build_report(run_dir: Path) -> dict[str, Any]:
    """Gather a run folder's stage manifests into the report document (see ``report.schema.json``).

    Raises:
        EdgesftError: ``run_dir`` is not a folder or holds no stage manifest.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EdgesftError(f"{run_dir}: no such run folder")
    run = RunFolder(run_dir)
    manifests = run.manifests()
    if not manifests:
        raise EdgesftError(f"{run_dir}: no stage manifest.json in it (not a run folder?)")
    bench = _bench(run_dir, manifests)
    artifacts = bench["artifacts"] if bench else _export_artifacts(run)
    axis, points = quality_points(artifacts)
    return {
        "schema": SCHEMA,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "edgesft": __version__,
        "run": run_dir.resolve().name,
        "run_dir": str(run_dir),
        "environment": _environment(manifests, bench),
        "stages": [
            {"name": name, "duration_s": m.get("duration_s"), "finished": m.get("finished")}
            for name, m in manifests.items()
        ],
        "quality_by_stage": _quality_by_stage(manifests),
        "training": _training(run_dir, manifests),
        "artifacts": artifacts,
        "pareto": pareto_front(points),
        "quality_metric": axis.name if axis else None,
        "verify": {r.key: r.verified for r in run.artifacts().values() if r.verified is not None},
        "primary": primary_key(artifacts, bundle_primary(run.manifest("export"))),
        "bench": (
            {
                k: bench.get(k)
                for k in (
                    "threads",
                    "reference_stage",
                    "val_rows",
                    "test_rows",
                    "primary_test_rows",
                    "seconds",
                )
            }
            if bench
            else None
        ),
    }


def _bench(run_dir: Path, manifests: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    bench = read_json(run_dir / "bench" / "bench.json")
    if not isinstance(bench, dict):
        bench = dig(manifests, "bench", "metrics")
    return bench if isinstance(bench, dict) and isinstance(bench.get("artifacts"), dict) else None


def _environment(manifests: dict[str, dict[str, Any]], bench: dict[str, Any] | None) -> dict[str, Any]:
    """The machine the figures were measured on (bench's own record when it ran) and the library versions.

    Versions are the ones the stage manifests recorded, i.e. those of the processes that produced the
    figures (the latest stage's where they differ), never the ones installed where the report is rebuilt.
    A library no stage recorded is left out.
    """
    recorded: dict[str, str] = {}
    for m in manifests.values():
        recorded.update(m.get("versions") or {})
    libraries = {lib: recorded[lib] for lib in LIBRARIES if lib in recorded}
    machine = bench.get("machine") if bench else None
    env: dict[str, Any] = {}
    shown = ("cpu_model", "physical_cores", "logical_cpus", "memory_gb")  # the report schema's machine fields
    if isinstance(machine, dict):
        env = {k: machine.get(k) for k in shown}
        for k in ("bandwidth_gb_s", "bandwidth_threads"):
            if machine.get(k) is not None:
                env[k] = machine[k]
        env["source"] = "bench"
    else:
        here = machine_info()
        env = {**{k: here.get(k) for k in shown}, "source": "report"}
    env.update(
        platform=recorded.get("platform", platform.platform()),
        python=recorded.get("python", platform.python_version()),
        libraries=libraries,
    )
    return env


def _test_metrics(test: Any) -> dict[str, Any] | None:
    if not isinstance(test, dict):
        return None
    return {k: test[k] for k in ("n", *POINT_METRICS) if test.get(k) is not None}


def _quality_by_stage(manifests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Quality after each model stage, base (the untuned model, measured by train) first."""
    rows: list[tuple[str, dict[str, Any]]] = []
    base = dig(manifests, "train", "metrics", "base")
    if isinstance(base, dict):
        rows.append(("base", base))
    rows += [(s, manifests[s].get("metrics") or {}) for s in MODEL_STAGES if s in manifests]
    return [
        {
            "stage": stage,
            "params_total": m.get("params_total"),
            "val_loss": m.get("val_loss"),
            "val_perplexity": m.get("val_perplexity"),
            "test": _test_metrics(m.get("test")),
        }
        for stage, m in rows
    ]


def _training(run_dir: Path, manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name, stage, file in (
        ("train", "train", "loss_curve.json"),
        ("heal", "prune", "heal_loss_curve.json"),
    ):
        curve = read_json(run_dir / stage / file) if stage in manifests else None
        if isinstance(curve, dict):
            out[name] = {
                part: [[int(p["step"]), float(p["loss"])] for p in curve.get(part) or []]
                for part in ("train", "val")
            }
    return out


def _export_artifacts(run: RunFolder) -> dict[str, dict[str, Any]]:
    """Per-artifact figures without the bench stage: size, precision and fallbacks from the export stages,
    parity (KL, top-1 agreement) from verify. Same shape as bench.json's entries, less latency."""
    out: dict[str, dict[str, Any]] = {}
    for key, r in run.artifacts().items():
        if r.kind == "torch":
            continue  # no figure of its own without bench
        parity = {"kl_mean": r.kl_mean, "kl_p99": r.kl_p99, "top1_agreement": r.top1_agreement}
        out[key] = {
            "kind": r.kind,
            "runtime": None,
            "stage": r.stage,
            "precision": r.precision,
            "path": r.relpath,
            "size_bytes": r.size_bytes,
            "status": r.status,
            "error": r.error,
            "verified": r.verified,
            "fallback_tensors": r.fallback_tensors,
            "params": r.params,
            "quality": parity if any(v is not None for v in parity.values()) else None,
        }
    return out


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Keys of the points no other point dominates, both coordinates maximized, by decreasing first one.

    A point is dominated when another is at least as good on both coordinates and better on one; equal
    points are all on the front. Points with a NaN or infinite coordinate are left out.
    """
    pts = {k: p for k, p in points.items() if all(math.isfinite(v) for v in p)}
    front = [
        k
        for k, (x, y) in pts.items()
        if not any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in pts.values())
    ]
    return sorted(front, key=lambda k: (-pts[k][0], -pts[k][1], k))


def decode_speed(artifact: dict[str, Any], depth: str = "0") -> float | None:
    """Median decode tokens/s at a context depth, None for an artifact that did not run."""
    if artifact.get("status") != "ok":
        return None
    value = dig(artifact, "latency", "decode", depth, "tok_s", "median")
    return float(value) if isinstance(value, (int, float)) else None


def quality_value(artifact: dict[str, Any], axis: QualityAxis) -> float | None:
    """The artifact's figure on ``axis`` (unsigned), None where it has none; test metrics on the rows every
    artifact answered (:func:`edgesft.quality.common_rows`), so that the front compares like with like."""
    quality = dict(artifact.get("quality") or {})
    if axis.keys[0] == "test":
        quality["test"] = common_rows(quality.get("test"))
    value = dig(quality, *axis.keys)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def quality_points(
    artifacts: dict[str, dict[str, Any]],
) -> tuple[QualityAxis | None, dict[str, tuple[float, float]]]:
    """The quality axis and each artifact's (decode tok/s at depth 0, signed quality) point.

    The axis is the first of :data:`QUALITY_AXES` that the most benchmarked artifacts have (test exact match
    where the test split was evaluated, else KL, else perplexity), so that one missing figure does not drop
    the artifact off the plot.
    """
    best: tuple[QualityAxis | None, dict[str, tuple[float, float]]] = (None, {})
    for axis in QUALITY_AXES:
        points = {}
        for key, a in artifacts.items():
            speed, value = decode_speed(a), quality_value(a, axis)
            if speed is not None and value is not None:
                points[key] = (speed, axis.sign * value)
        if len(points) > len(best[1]):
            best = (axis, points)
    return best


def schema() -> dict[str, Any]:
    """``report.schema.json``, shipped in the package."""
    text = resources.files("edgesft").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def validate_report(report: dict[str, Any]) -> None:
    """Check a report against ``report.schema.json``.

    Raises:
        EdgesftError: one line per violation, naming the field's path.
    """
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(report), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise EdgesftError(
            *(
                f"report.json: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in errors[:20]
            )
        )


def dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...``, or None where a level is missing or not a dict."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj
