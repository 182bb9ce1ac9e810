"""The run report: ``report.json`` (a versioned, schema-checked document), ``report.md`` and ``report.html``.

The report is built from the stage manifests alone (plus ``bench/bench.json``), never from the models, so
``edgesft report RUN`` rebuilds it in about a second on any machine, without importing torch, even from a run
folder copied off the device that made it. Any stage may be missing (a recipe without pruning, ONNX or the
bench stage): its rows are left out, and a plot without data is replaced by a one-line note instead of an
empty frame. Without the bench stage the artifact figures come from the export stages (size, precision,
fallback tensors) and from verify (KL and top-1 agreement against the PyTorch model).

The HTML page is a single file (CSS inline, plots as base64 PNG drawn by matplotlib's Agg canvas, no
script, no external URL) so that it can be attached to a CI run or mailed as is; :func:`screenshot` turns it
into a PNG with a headless Chromium for the README.
"""

from __future__ import annotations

import base64
import io
import json
import math
import platform
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesft import __version__
from edgesft.benchmark import machine_info
from edgesft.environment import LIBRARIES
from edgesft.errors import EdgesftError
from edgesft.io import atomic_file, atomic_write_json, atomic_write_text, path_size, read_json
from edgesft.quality import POINT_METRICS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCHEMA = "edgesft.report/1"
SCHEMA_FILE = "report.schema.json"
MODEL_STAGES = ("train", "merge", "prune")
METRIC_LABELS = {
    "exact_match": "exact match",
    "intent_accuracy": "intent",
    "slot_f1": "slot F1",
    "valid_json": "valid JSON",
}
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
KIND_COLORS = {"gguf": "#1f77b4", "onnx": "#ff7f0e", "torch": "#2ca02c"}


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


# --------------------------------------------------------------------------------------------------------
# Building the report


def build_report(run_dir: Path) -> dict[str, Any]:
    """Gather a run folder's stage manifests into the report document (see ``report.schema.json``).

    Raises:
        EdgesftError: ``run_dir`` is not a folder or holds no stage manifest.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EdgesftError(f"{run_dir}: no such run folder")
    manifests = _read_manifests(run_dir)
    if not manifests:
        raise EdgesftError(f"{run_dir}: no stage manifest.json in it (not a run folder?)")
    bench = _bench(run_dir, manifests)
    export = manifests.get("export", {})
    artifacts = bench["artifacts"] if bench else _export_artifacts(run_dir, manifests)
    axis, points = quality_points(artifacts)
    verify = _dig(manifests, "verify", "metrics", "artifacts") or {}
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
        "verify": {key: rec.get("status") for key, rec in verify.items()},
        "primary": bundle_primary(export),
        "bench": (
            {k: bench.get(k) for k in ("threads", "reference_stage", "val_rows", "test_rows", "seconds")}
            if bench
            else None
        ),
    }


def _read_manifests(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Complete stage manifests in pipeline order; folders the registry does not know come last.

    Output hashes are not checked (that is the pipeline's cache test and would read every weight file);
    an unreadable or unfinished manifest counts as a stage that did not run.
    """
    from edgesft.stages import STAGES

    found: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        m = read_json(folder / "manifest.json")
        if isinstance(m, dict) and m.get("status") == "complete":
            found[folder.name] = m
    order = [n for n in STAGES if n in found]
    extra = sorted((n for n in found if n not in STAGES), key=lambda n: str(found[n].get("started", "")))
    return {n: found[n] for n in order + extra}


def _bench(run_dir: Path, manifests: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    bench = read_json(run_dir / "bench" / "bench.json")
    if not isinstance(bench, dict):
        bench = _dig(manifests, "bench", "metrics")
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
    if isinstance(machine, dict):
        env = {k: machine.get(k) for k in ("cpu_model", "physical_cores", "logical_cpus", "memory_gb")}
        for k in ("bandwidth_gb_s", "bandwidth_threads"):
            if machine.get(k) is not None:
                env[k] = machine[k]
        env["source"] = "bench"
    else:
        env = {**machine_info(), "source": "report"}
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
    base = _dig(manifests, "train", "metrics", "base")
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


def _export_artifacts(run_dir: Path, manifests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-artifact figures without the bench stage: size, precision and fallbacks from the gguf and onnx
    manifests, parity (KL, top-1 agreement) from verify. Same shape as bench.json's entries, less latency."""
    verify = _dig(manifests, "verify", "metrics", "artifacts") or {}
    out: dict[str, dict[str, Any]] = {}
    for stage in ("gguf", "onnx"):
        for a in _dig(manifests, stage, "metrics", "artifacts") or []:
            key = f"{stage}/{a['file']}"
            rec = verify.get(key) or {}
            logits = _dig(rec, "checks", "logits") or {}
            size = a.get("bytes", a.get("size_bytes"))
            if size is None and (run_dir / key).exists():
                size = path_size(run_dir / key)
            ok = a.get("status") == "ok"
            out[key] = {
                "kind": stage,
                "runtime": None,
                "stage": stage,
                "precision": a.get("precision"),
                "path": key,
                "file_bytes": size,
                "status": "ok" if ok else "failed",
                "error": None if ok else str(a.get("error") or "export failed"),
                "verified": rec.get("status"),
                "fallback_tensors": len(a.get("fallbacks") or []) if stage == "gguf" and ok else None,
                "params": None,
                "quality": (
                    {k: logits.get(k) for k in ("kl_mean", "kl_p99", "top1_agreement")} if logits else None
                ),
            }
    return out


def bundle_primary(export: Any) -> str | None:
    """The export bundle's primary artifact name (a GGUF file or an ONNX folder) from the export stage's
    manifest, None without one."""
    name = _dig(export, "info", "primary") or _dig(export, "metrics", "primary")
    return name if isinstance(name, str) else None


def primary_key(artifacts: dict[str, dict[str, Any]], primary: str | None) -> str | None:
    """The primary artifact as an artifact key (``gguf/<file>`` or ``onnx/<folder>``): the one the export
    bundle names (``primary``, see :func:`bundle_primary`); without one, the first GGUF, else the first
    ONNX, else the first torch artifact that benchmarked ok; None when none did. The report marks this
    artifact and ``edgesft check`` gates its decode time by default."""
    if primary:
        for key in (f"gguf/{primary}", f"onnx/{primary}"):
            if key in artifacts:
                return key
    for kind in ("gguf", "onnx", "torch"):
        for key, a in artifacts.items():
            if a.get("kind") == kind and a.get("status") == "ok":
                return key
    return None


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
    value = _dig(artifact, "latency", "decode", depth, "tok_s", "median")
    return float(value) if isinstance(value, (int, float)) else None


def _quality_value(artifact: dict[str, Any], axis: QualityAxis) -> float | None:
    value = _dig(artifact.get("quality") or {}, *axis.keys)
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
            speed, value = decode_speed(a), _quality_value(a, axis)
            if speed is not None and value is not None:
                points[key] = (speed, axis.sign * value)
        if len(points) > len(best[1]):
            best = (axis, points)
    return best


def _schema() -> dict[str, Any]:
    text = resources.files("edgesft").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_report(report: dict[str, Any]) -> None:
    """Check a report against ``report.schema.json``.

    Raises:
        EdgesftError: one line per violation, naming the field's path.
    """
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(report), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise EdgesftError(
            *(
                f"report.json: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in errors[:20]
            )
        )


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Build, validate and write ``report.json``, ``report.md`` and ``report.html``; return the HTML path.

    ``out_dir`` defaults to ``run_dir / "report"``. Each file is replaced atomically.
    """
    run_dir = Path(run_dir)
    report = build_report(run_dir)
    validate_report(report)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_text(out / "report.html", render_html(report))
    return out / "report.html"


# --------------------------------------------------------------------------------------------------------
# Tables (shared by the Markdown and the HTML page)


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    note: str = ""


def _num(x: Any, digits: int | None = None) -> str:
    """A figure at a readable precision; '–' for a missing one."""
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return "–"
    if digits is not None:
        return f"{x:,.{digits}f}"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1 or ax == 0:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _sig(x: Any) -> str:
    """Three significant digits, for small figures such as KL divergences."""
    return f"{x:.3g}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _mib(n: Any) -> str:
    return _num(n / 2**20, 1 if n >= 10 * 2**20 else 2) if isinstance(n, (int, float)) else "–"


def _keys(artifacts: dict[str, dict[str, Any]], *path: str) -> list[str]:
    """The depths or prompt lengths measured by any artifact, in numeric order."""
    found: set[str] = set()
    for a in artifacts.values():
        found.update((_dig(a, *path) or {}).keys())
    return sorted(found, key=lambda k: int(k) if k.isdigit() else math.inf)


def _median(a: dict[str, Any], *path: str) -> float | None:
    v = _dig(a, *path, "median")
    return float(v) if isinstance(v, (int, float)) else None


def _label(report: dict[str, Any], key: str) -> str:
    return f"{key} (primary)" if key == primary_key(report["artifacts"], report.get("primary")) else key


def _tables(report: dict[str, Any]) -> dict[str, Table]:
    env = report["environment"]
    arts: dict[str, dict[str, Any]] = report["artifacts"]
    tables: dict[str, Table] = {}

    env_rows = [
        ["CPU", str(env.get("cpu_model") or "–")],
        [
            "cores (physical / logical)",
            f"{env.get('physical_cores') or '–'} / {env.get('logical_cpus') or '–'}",
        ],
        ["memory (GB)", _num(env.get("memory_gb"), 1)],
    ]
    if env.get("bandwidth_gb_s") is not None:
        threads = env.get("bandwidth_threads")
        env_rows.append(
            [
                "memory read bandwidth (GB/s)",
                _num(env["bandwidth_gb_s"], 1) + (f", {threads} threads" if threads else ""),
            ]
        )
    bench = report.get("bench") or {}
    if bench.get("threads"):
        env_rows.append(["benchmark threads", str(bench["threads"])])
    env_rows += [["platform", env["platform"]], ["python", env["python"]]]
    env_rows += [[lib, v] for lib, v in env["libraries"].items()]
    source = (
        "measured by the bench stage" if env.get("source") == "bench" else "the machine that built the report"
    )
    tables["environment"] = Table("Environment", ["", ""], env_rows, note=f"Machine figures: {source}.")

    stage_rows = [[s["name"], _num(s["duration_s"], 1), str(s["finished"] or "–")] for s in report["stages"]]
    total = sum(s["duration_s"] or 0 for s in report["stages"])
    stage_rows.append(["total", _num(total, 1), ""])
    tables["stages"] = Table("Stages", ["stage", "duration (s)", "finished"], stage_rows, {1})

    q_rows = []
    for q in report["quality_by_stage"]:
        test = q["test"] or {}
        q_rows.append(
            [
                "base (untuned)" if q["stage"] == "base" else q["stage"],
                _num(q["params_total"], 0) if q["params_total"] is not None else "–",
                _num(q["val_loss"], 4),
                _num(q["val_perplexity"]),
                *(_pct(test.get(m)) for m in POINT_METRICS),
                _num(test.get("n"), 0),
            ]
        )
    tables["quality_by_stage"] = Table(
        "Quality after each stage",
        [
            "stage",
            "params",
            "val loss",
            "val ppl",
            *(f"{METRIC_LABELS[m]} %" for m in POINT_METRICS),
            "test n",
        ],
        q_rows,
        set(range(1, 9)),
        note="Task metrics on the test split with greedy decoding; base is the untuned model.",
    )

    bench_ran = any(a.get("latency") for a in arts.values())
    art_headers = ["artifact", "status", "precision", "size (MiB)", "verified", "fallback tensors"]
    if bench_ran:
        art_headers += ["threads", "load (s)", "peak RSS (MiB)"]
    art_rows = []
    for key, a in arts.items():
        row = [
            _label(report, key),
            str(a["status"]),
            str(a.get("precision") or "–"),
            _mib(a.get("file_bytes")),
            str(a.get("verified") or "–"),
            _num(a.get("fallback_tensors"), 0),
        ]
        if bench_ran:
            row += [
                _num(_dig(a, "latency", "threads"), 0),
                _num(_dig(a, "latency", "load_s")),
                _num(_dig(a, "latency", "peak_rss_mb")),
            ]
        art_rows.append(row)
    note = "" if bench_ran else "No bench stage in this run: size, precision and verification only."
    tables["artifacts"] = Table("Artifacts", art_headers, art_rows, {3, 5, 6, 7, 8}, note)

    # Latency in a table of its own: one row per artifact that ran, columns per measured depth and length.
    depths = _keys(arts, "latency", "decode")
    lengths = _keys(arts, "latency", "prefill")
    lat_headers = [
        "artifact",
        *(f"decode tok/s @{d}" for d in depths),
        *(f"% of bound @{d}" for d in depths),
        *(f"TTFT ms @{n}" for n in lengths),
        *(f"prefill tok/s @{n}" for n in lengths),
    ]
    lat_rows = []
    for key, a in arts.items():
        if a["status"] != "ok" or not a.get("latency"):
            continue
        ttft = [_median(a, "latency", "prefill", n, "ttft_s") for n in lengths]
        lat_rows.append(
            [
                _label(report, key),
                *(_num(_median(a, "latency", "decode", d, "tok_s")) for d in depths),
                *(_pct(_dig(a, "bandwidth", "bound", d, "fraction")) for d in depths),
                *(_num(t * 1000 if t is not None else None) for t in ttft),
                *(_num(_median(a, "latency", "prefill", n, "tok_s")) for n in lengths),
            ]
        )
    tables["latency"] = Table(
        "Artifacts: latency",
        lat_headers,
        lat_rows,
        set(range(1, len(lat_headers))),
        "Medians over repeated runs (min, max and n in report.json). @d: decode at context depth d; "
        "% of bound: decode speed over (memory bandwidth / bytes read per token); TTFT: time to first token "
        "for an n-token prompt.",
    )

    test_keys = [
        m for m in POINT_METRICS if any(_dig(a, "quality", "test", m) is not None for a in arts.values())
    ]
    quality_rows = []
    for key, a in arts.items():
        q = a.get("quality") or {}
        test = q.get("test") or {}
        quality_rows.append(
            [
                _label(report, key),
                _num(q.get("val_perplexity")),
                _sig(q.get("kl_mean")),
                _sig(q.get("kl_p99")),
                _pct(q.get("top1_agreement")),
                *(_pct(test.get(m)) for m in test_keys),
            ]
        )
    ref = bench.get("reference_stage") or "the PyTorch model"
    tables["artifact_quality"] = Table(
        "Artifacts: quality",
        [
            "artifact",
            "val ppl",
            "KL mean",
            "KL p99",
            "top-1 agreement %",
            *(f"{METRIC_LABELS[m]} %" for m in test_keys),
        ],
        quality_rows,
        set(range(1, 5 + len(test_keys))),
        f"KL divergence (nats) and top-1 agreement against {ref}, in each artifact's own runtime.",
    )
    return tables


def _pareto_lines(report: dict[str, Any]) -> list[str]:
    axis = next((a for a in QUALITY_AXES if a.name == report["quality_metric"]), None)
    if axis is None:
        return []
    lines = []
    for key in report["pareto"]:
        a = report["artifacts"][key]
        lines.append(
            f"{_label(report, key)}: {_num(decode_speed(a))} tok/s, "
            f"{axis.label} {_num(_quality_value(a, axis))}"
        )
    return lines


def _failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{k}: {a['status']}: {a.get('error') or ''}".rstrip(": ")
        for k, a in report["artifacts"].items()
        if a["status"] != "ok"
    ]


# --------------------------------------------------------------------------------------------------------
# Markdown


def _md_table(t: Table) -> list[str]:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in t.headers) + " |",
        "|" + "|".join("---:" if i in t.numeric else "---" for i in range(len(t.headers))) + "|",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the report's tables in GitHub-flavoured Markdown."""
    tables = _tables(report)
    out = [
        f"# edgesft report: {report['run']}",
        "",
        f"Generated {report['generated']} by edgesft {report['edgesft']} from `{report['run_dir']}`"
        + (f"; primary artifact `{report['primary']}`." if report["primary"] else "."),
    ]
    for name in ("environment", "stages", "quality_by_stage", "artifacts", "latency", "artifact_quality"):
        t = tables[name]
        out += ["", f"## {t.title}", ""]
        if name == "quality_by_stage" and not t.rows:
            out.append("No model stage in this run.")
            continue
        if name in ("artifacts", "artifact_quality") and not t.rows:
            out.append("No artifacts in this run.")
            continue
        if name == "latency" and not t.rows:
            out.append("No latency figures (no bench stage, or no artifact ran).")
            continue
        out += _md_table(t)
        if t.note:
            out += ["", t.note]
    failures = _failures(report)
    if failures:
        out += ["", "Failed artifacts:", ""] + [f"- {f}" for f in failures]
    out += ["", "## Pareto front", ""]
    lines = _pareto_lines(report)
    if lines:
        out.append(f"Quality ({report['quality_metric']}) vs decode tokens/s at depth 0, both maximized:")
        out += [""] + [f"- {line}" for line in lines]
    else:
        out.append("No benchmarked artifact with both a decode speed and a quality figure.")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------------
# Plots


@dataclass
class Plot:
    name: str
    title: str
    png: bytes | None  # None: no data; ``caption`` says why
    caption: str
    alt: str


def _figure(width: float = 9.0, height: float = 4.2, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _style(ax: Axes) -> None:
    ax.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _left_out(report: dict[str, Any], have: Iterable[str]) -> str:
    missing = sorted(set(report["artifacts"]) - set(have))
    return f" Not shown (not run or no figure): {', '.join(missing)}." if missing else ""


def _plot_quality_speed(report: dict[str, Any]) -> Plot:
    name, title = "quality_vs_speed", "Quality vs decode speed"
    arts = report["artifacts"]
    axis, points = quality_points(arts)
    if axis is None or not points:
        return Plot(
            name,
            title,
            None,
            "No artifact has both a decode speed and a quality figure (no bench stage?).",
            "",
        )
    fig, (ax,) = _figure(height=4.8)
    for key, (x, y) in points.items():
        a = arts[key]
        lo, hi = (
            _dig(a, "latency", "decode", "0", "tok_s", "min"),
            _dig(a, "latency", "decode", "0", "tok_s", "max"),
        )
        xerr = [[x - lo], [hi - x]] if lo is not None and hi is not None else None
        ax.errorbar(
            [x],
            [axis.sign * y],
            xerr=xerr,
            fmt="o",
            color=KIND_COLORS.get(a["kind"], "gray"),
            ms=7,
            capsize=3,
        )
        ax.annotate(
            _label(report, key), (x, axis.sign * y), xytext=(6, 6), textcoords="offset points", fontsize=8
        )
    front = sorted(report["pareto"], key=lambda k: points[k][0])
    fx, fy = [points[k][0] for k in front], [axis.sign * points[k][1] for k in front]
    ax.step(fx, fy, where="pre", color="#d62728", lw=1.5, label="Pareto front")
    ax.scatter(fx, fy, s=170, facecolors="none", edgecolors="#d62728", lw=1.5)
    for kind, color in KIND_COLORS.items():
        if any(arts[k]["kind"] == kind for k in points):
            ax.scatter([], [], color=color, label=kind)
    ax.margins(x=0.18, y=0.15)  # room for the labels
    if axis.sign < 0:
        ax.invert_yaxis()
    ax.set_xlabel("decode tokens/s at depth 0 (median; bars: min–max)")
    ax.set_ylabel(axis.label + (" (better: up)" if axis.sign < 0 else ""))
    ax.legend(fontsize=8, loc="best")
    _style(ax)
    caption = (
        f"Quality ({axis.label}) against decode speed at context depth 0, one point per artifact; the red "
        f"step line joins the Pareto front ({', '.join(report['pareto'])})." + _left_out(report, points)
    )
    return Plot(
        name, title, _png(fig), caption, f"Scatter plot of {axis.label} against decode tokens per second"
    )


def _plot_sizes(report: dict[str, Any]) -> Plot:
    name, title = "size", "File size per artifact"
    sizes = {k: a["file_bytes"] / 2**20 for k, a in report["artifacts"].items() if a.get("file_bytes")}
    if not sizes:
        return Plot(name, title, None, "No artifact sizes in this run (no gguf, onnx or bench stage).", "")
    keys = sorted(sizes, key=lambda k: sizes[k])
    fig, (ax,) = _figure(height=max(2.2, 0.45 * len(keys) + 1.0))
    colors = [KIND_COLORS.get(report["artifacts"][k]["kind"], "gray") for k in keys]
    bars = ax.barh([_label(report, k) for k in keys], [sizes[k] for k in keys], color=colors)
    ax.bar_label(bars, labels=[_num(sizes[k]) for k in keys], padding=3, fontsize=8)
    ax.set_xlabel("file size (MiB; folders: all files)")
    ax.margins(x=0.12)
    _style(ax)
    return Plot(
        name,
        title,
        _png(fig),
        "On-disk size of each artifact, coloured by format.",
        "Bar chart of artifact file sizes in MiB",
    )


def _plot_stage_quality(report: dict[str, Any]) -> Plot:
    name, title = "stage_quality", "Quality after each stage"
    rows = report["quality_by_stage"]
    metrics = [m for m in POINT_METRICS if any((r["test"] or {}).get(m) is not None for r in rows)]
    ppl = [(r["stage"], r["val_perplexity"]) for r in rows if r["val_perplexity"] is not None]
    if not rows or (not metrics and not ppl):
        return Plot(name, title, None, "No model stage recorded quality figures in this run.", "")
    fig, axes = _figure(ncols=int(bool(metrics)) + int(bool(ppl)))
    stages = [r["stage"] for r in rows]
    if metrics:
        ax = axes[0]
        width = 0.8 / len(metrics)
        for i, m in enumerate(metrics):
            vals = [100 * ((r["test"] or {}).get(m) or 0.0) for r in rows]
            xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(rows))]
            bars = ax.bar(xs, vals, width, label=METRIC_LABELS[m])
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)  # a zero is a result, make it visible
        ax.set_xticks(range(len(stages)), stages)
        ax.set_ylabel("test split (%)")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=8, ncols=2)
        _style(ax)
    if ppl:
        ax = axes[-1]
        ax.bar([s for s, _ in ppl], [v for _, v in ppl], color="#7f7f7f")
        values = [v for _, v in ppl]
        if max(values) / max(min(values), 1e-9) > 20:
            ax.set_yscale("log")
        ax.set_ylabel("validation perplexity (lower is better)")
        _style(ax)
    return Plot(
        name,
        title,
        _png(fig),
        "Task metrics on the test split and validation perplexity after each model stage "
        "(base: the untuned model).",
        "Grouped bar chart of test metrics and bar chart of validation perplexity per stage",
    )


def _plot_loss(report: dict[str, Any]) -> Plot:
    name, title = "loss", "Loss curves"
    curves = {k: c for k, c in report["training"].items() if c["train"] or c["val"]}
    if not curves:
        return Plot(name, title, None, "No loss curves in this run (train/loss_curve.json missing).", "")
    fig, axes = _figure(ncols=len(curves))
    titles = {"train": "fine-tuning", "heal": "healing after pruning"}
    for ax, (key, c) in zip(axes, curves.items(), strict=True):
        for part, style, label, color in (
            ("train", "-", "train", "#1f77b4"),
            ("val", "o-", "validation", "#ff7f0e"),
        ):
            if c[part]:
                ax.plot(
                    [p[0] for p in c[part]], [p[1] for p in c[part]], style, label=label, color=color, ms=4
                )
        ax.set_title(titles.get(key, key), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        _style(ax)
    shown = " and ".join(titles.get(k, k) for k in curves)
    return Plot(
        name,
        title,
        _png(fig),
        f"Training and validation loss: {shown}.",
        "Line plot of training and validation loss per step",
    )


def _plot_latency(report: dict[str, Any]) -> Plot:
    name, title = "latency", "Latency per artifact"
    arts = {k: a for k, a in report["artifacts"].items() if a["status"] == "ok" and a.get("latency")}
    decode = [("decode", d, "tok_s", f"decode @{d}", 1.0) for d in _keys(arts, "latency", "decode")]
    ttft = [("prefill", n, "ttft_s", f"TTFT @{n}", 1000.0) for n in _keys(arts, "latency", "prefill")]
    groups = [(g, y) for g, y in ((decode, "decode tokens/s"), (ttft, "time to first token (ms)")) if g]
    if not groups:
        return Plot(
            name, title, None, "No latency figures in this run (no bench stage, or no artifact ran).", ""
        )
    fig, axes = _figure(width=10, height=4.6, ncols=len(groups))
    keys = list(arts)
    for ax, (group, ylabel) in zip(axes, groups, strict=True):
        width = 0.8 / len(group)
        for i, (part, n, stat, label, scale) in enumerate(group):
            med, lo, hi, xs = [], [], [], []
            for j, k in enumerate(keys):
                s = _dig(arts[k], "latency", part, n, stat) or {}
                if "median" not in s:
                    continue
                xs.append(j + (i - (len(group) - 1) / 2) * width)
                med.append(s["median"] * scale)
                lo.append((s["median"] - s["min"]) * scale)
                hi.append((s["max"] - s["median"]) * scale)
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=label)
        ax.set_xticks(range(len(keys)), keys, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        _style(ax)
    threads = _dig(report, "bench", "threads")
    caption = (
        "Decode tokens/s at each context depth and time to first token at each prompt length (medians; "
        f"bars: min–max){f', {threads} threads' if threads else ''}." + _left_out(report, arts)
    )
    return Plot(
        name,
        title,
        _png(fig),
        caption,
        "Bar charts of decode tokens per second and time to first token per artifact",
    )


PLOTS: dict[str, Callable[[dict[str, Any]], Plot]] = {
    "quality_vs_speed": _plot_quality_speed,
    "latency": _plot_latency,
    "size": _plot_sizes,
    "stage_quality": _plot_stage_quality,
    "loss": _plot_loss,
}


# --------------------------------------------------------------------------------------------------------
# HTML

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;
margin:0;background:#fff}
main{max-width:1200px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}
h3{font-size:15px;margin:18px 0 4px}
.meta{color:#555;margin:0 0 8px}.note{color:#555;font-size:13px;margin:6px 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e5e5e5;text-align:left;white-space:nowrap}
th{background:#f5f5f7;font-weight:600;white-space:normal;vertical-align:bottom}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{color:#b00020}
figure{margin:16px 0}img{max-width:100%;height:auto;display:block}
figcaption{color:#444;font-size:13px;margin-top:4px}
ul{margin:4px 0 4px 20px;padding:0}code{background:#f5f5f7;padding:1px 4px;border-radius:3px}
"""


def _html_table(t: Table, bad_rows: Sequence[bool] = (), title: bool = False) -> str:
    e = escape
    head = "".join(
        f'<th class="n">{e(h)}</th>' if i in t.numeric else f"<th>{e(h)}</th>"
        for i, h in enumerate(t.headers)
    )
    thead = f"<thead><tr>{head}</tr></thead>" if any(t.headers) else ""
    body = []
    for r, row in enumerate(t.rows):
        cls = ' class="bad"' if r < len(bad_rows) and bad_rows[r] else ""
        cells = "".join(
            f'<td class="n">{e(c)}</td>' if i in t.numeric else f"<td>{e(c)}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    heading = f"<h3>{e(t.title)}</h3>" if title else ""
    table = f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"
    return f'{heading}<div class="scroll">{table}</div>{note}'


def _html_plot(p: Plot) -> str:
    e = escape
    if p.png is None:
        return f'<p class="note" data-plot-missing="{e(p.name)}">{e(p.title)}: {e(p.caption)}</p>'
    w, h = _png_size(p.png)
    data = base64.b64encode(p.png).decode("ascii")
    return (
        f'<figure><img data-plot="{e(p.name)}" alt="{e(p.alt)}" width="{w}" height="{h}" '
        f'src="data:image/png;base64,{data}">'
        f"<figcaption><b>{e(p.title)}.</b> {e(p.caption)}</figcaption></figure>"
    )


def render_html(report: dict[str, Any]) -> str:
    """``report.html``: one self-contained page, the tables of :func:`render_markdown` and the plots."""
    e = escape
    tables = _tables(report)
    plots = {name: make(report) for name, make in PLOTS.items()}
    bad = [a["status"] != "ok" for a in report["artifacts"].values()]
    parts = [
        f"<h1>edgesft report: {e(report['run'])}</h1>",
        f'<p class="meta">Generated {e(report["generated"])} by edgesft {e(report["edgesft"])} from '
        f"<code>{e(report['run_dir'])}</code>"
        + (f"; primary artifact <code>{e(report['primary'])}</code>." if report["primary"] else ".")
        + "</p>",
        "<h2>Artifacts</h2>",
    ]
    if report["artifacts"]:
        parts.append(_html_table(tables["artifacts"], bad))
        if tables["latency"].rows:
            parts.append(_html_table(tables["latency"], title=True))
        parts.append(_html_table(tables["artifact_quality"], bad, title=True))
        failures = _failures(report)
        if failures:
            parts.append(
                '<p class="note">Failed artifacts:</p><ul>'
                + "".join(f"<li>{e(f)}</li>" for f in failures)
                + "</ul>"
            )
    else:
        parts.append('<p class="note">No artifacts in this run.</p>')
    parts += ["<h2>Quality vs speed</h2>", _html_plot(plots["quality_vs_speed"])]
    lines = _pareto_lines(report)
    if lines:
        parts.append("<p>Pareto front:</p><ul>" + "".join(f"<li>{e(x)}</li>" for x in lines) + "</ul>")
    parts += [_html_plot(plots["latency"]), _html_plot(plots["size"])]
    parts += ["<h2>Quality after each stage</h2>"]
    if report["quality_by_stage"]:
        parts.append(_html_table(tables["quality_by_stage"]))
    parts += [_html_plot(plots["stage_quality"]), "<h2>Training</h2>", _html_plot(plots["loss"])]
    parts += [
        "<h2>Stages</h2>",
        _html_table(tables["stages"]),
        "<h2>Environment</h2>",
        _html_table(tables["environment"]),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>edgesft report: {e(report['run'])}</title><style>{CSS}</style></head>\n"
        "<body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n"
    )


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    w, h = struct.unpack(">II", png[16:24])
    return int(w), int(h)


# --------------------------------------------------------------------------------------------------------
# Screenshot


class _PageSize(HTMLParser):
    """A generous estimate of a report page's height in CSS pixels at a given width (no layout engine)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.content = min(width, 1200) - 64
        self.height = 200.0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("width") and a.get("height"):
            w, h = int(a["width"] or 1), int(a["height"] or 0)
            self.height += h * min(1.0, self.content / w) + 30
        elif tag == "tr":
            self.height += 30
        elif tag in ("h1", "h2", "h3"):
            self.height += 45
        elif tag in ("p", "li", "figcaption"):
            self.height += 28


def screenshot(html: Path, png: Path, width: int = 1280) -> bool:
    """Render ``html`` in headless Chromium and write a full-page PNG to ``png``.

    The window is as tall as the page is estimated to be, then the blank bottom is trimmed. Returns False
    when no Chromium (``chromium``, ``chromium-browser`` or ``google-chrome``) is on PATH.

    Raises:
        EdgesftError: the browser ran but wrote no image.
    """
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        return False
    if not Path(html).is_file():
        raise EdgesftError(f"{html}: no such file")
    sizer = _PageSize(width)
    sizer.feed(Path(html).read_text(encoding="utf-8"))
    height = int(sizer.height * 1.3) + 200
    with tempfile.TemporaryDirectory(prefix="edgesft-shot-") as tmp:
        shot = Path(tmp) / "page.png"
        for _ in range(3):  # the estimate was short when the content reaches the window's bottom edge
            _chromium(browser, html, shot, width, height, Path(tmp) / "profile")
            if _trim_bottom(shot):
                break
            height *= 2
        png = Path(png)
        png.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(png) as dest:
            shutil.copyfile(shot, dest)
    return True


def _chromium(browser: str, html: Path, shot: Path, width: int, height: int, profile: Path) -> None:
    cmd = [
        browser,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        f"--screenshot={shot}",
        Path(html).resolve().as_uri(),
    ]
    shot.unlink(missing_ok=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise EdgesftError(f"{browser}: no screenshot of {html} within 120 s") from exc
    if not shot.is_file() or shot.stat().st_size == 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EdgesftError(f"{browser}: no screenshot of {html} (exit {proc.returncode}: {tail[0]})")


def _trim_bottom(png: Path, margin: int = 24) -> bool:
    """Cut the blank (white) rows below the page's content; False when there were none, i.e. the page
    may go on below the window."""
    import numpy as np
    from matplotlib import image

    pixels = image.imread(png)
    rows = np.nonzero((pixels[..., :3] < 0.999).any(axis=(1, 2)))[0]
    last = int(rows[-1]) + 1 + margin if rows.size else margin
    if last >= pixels.shape[0]:
        return False
    image.imsave(png, pixels[:last])
    return True


# --------------------------------------------------------------------------------------------------------


def _dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...``, or None where a level is missing or not a dict."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj
