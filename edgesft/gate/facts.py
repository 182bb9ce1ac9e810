"""What a check reads of a run folder: its ``bench/bench.json``, its primary artifact, where each artifact
lies, and each artifact's deterministic figures; and whether a path is a run folder or an artifact.

Every read of a run's artifacts the gate makes is here, in one module, so that a typed run-folder reader can
replace them together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgesft.errors import EdgesftError
from edgesft.io import read_json
from edgesft.quality import POINT_METRICS, common_rows
from edgesft.runfolder import RunFolder, bundle_primary
from edgesft.runfolder import primary_key as primary_of


def load_bench(run: Path, role: str) -> dict[str, Any]:
    """A run folder's ``bench/bench.json``; ``role`` (CURRENT, BASELINE, RUN) names the argument in errors."""
    bench = read_json(run / "bench" / "bench.json")
    if not isinstance(bench, dict) or not isinstance(bench.get("artifacts"), dict):
        raise EdgesftError(f"{role}: no bench stage in {run}; run the recipe with bench enabled")
    return bench


def primary_key(run: Path, bench: dict[str, Any]) -> str:
    """The run's primary artifact as a bench key, by the one rule (:func:`edgesft.runfolder.choose_primary`)."""
    key = primary_of(bench["artifacts"], bundle_primary(RunFolder(run).manifest("export")))
    if key is None:
        raise EdgesftError(f"{run}: no artifact in bench/bench.json benchmarked ok")
    return key


def artifact_path(run: Path, bench: dict[str, Any], key: str) -> Path:
    """The artifact's path, its files checked against the manifest of the stage that wrote them: figures
    about a file that changed since are no figures about it (a one-line error)."""
    if key not in bench["artifacts"]:
        raise EdgesftError(f"{run}: no artifact {key} in bench/bench.json")
    return RunFolder(run).verified_path(key)


def artifact_facts(run: Path, bench: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The deterministic figures of every artifact in bench.json, as bench recorded them; a figure bench did
    not record (parameters of an exported file, say) comes from the run's stage manifests."""
    records = RunFolder(run).artifacts()
    facts: dict[str, dict[str, Any]] = {}
    for key, a in bench["artifacts"].items():
        r = records.get(key)
        quality = a.get("quality") or {}

        def recorded(name: str, a: dict[str, Any] = a, r: Any = r) -> Any:
            # what bench recorded when it measured, else what the stage manifests hold now
            value = a.get(name)
            return value if value is not None or r is None else getattr(r, name)

        facts[key] = {
            "kind": recorded("kind"),
            "status": a.get("status"),
            "size_bytes": recorded("size_bytes"),
            "precision": recorded("precision"),
            "fallback_tensors": recorded("fallback_tensors"),
            "params": recorded("params"),
            "verified": recorded("verified"),
            "quality": {
                "val_perplexity": quality.get("val_perplexity"),
                "kl_mean": quality.get("kl_mean"),
                # on the rows every artifact answered: the primary's first ones (bench.quality.primary_test_rows)
                "test": {
                    k: v for k, v in common_rows(quality.get("test")).items() if k in ("n", *POINT_METRICS)
                },
            },
        }
    return facts


def kind_of(path: Path, role: str) -> str:
    """ "run" for a run folder with a bench stage, "artifact" for an artifact; else a one-line error."""
    from edgesft.runtimes import artifact_kind

    if not path.exists():
        raise EdgesftError(f"{role}: {path}: no such file or folder")
    if (path / "bench" / "bench.json").is_file():
        return "run"
    try:
        artifact_kind(path)
        return "artifact"
    except EdgesftError:
        load_bench(path, role)  # raises the "no bench stage" line
        raise
