"""Stage ``verify``: parity of every GGUF and ONNX artifact with the PyTorch model it came from.

Each artifact runs in its own runtime in a child process (:mod:`edgesft.verify`), so a runtime that
crashes or hangs marks that artifact ``crashed`` instead of ending the run. A failed or crashed artifact
stops the run (exit 2) unless ``export.verify.allow_failures`` is set; the gate is re-checked on cache hits.

Outputs: ``verify.json`` (every check and figure per artifact).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgesft.config import Recipe
from edgesft.data import load_rows
from edgesft.errors import QualityGateError
from edgesft.io import atomic_write_json
from edgesft.machine import default_threads
from edgesft.pipeline import StageInputs, StageResult
from edgesft.runfolder import EXPORT_STAGES as ARTIFACT_STAGES
from edgesft.runfolder import ArtifactRecord, RunFolder
from edgesft.verify import Reference, build_request, verify_artifact


def skip(recipe: Recipe, manifests: dict[str, dict[str, Any]]) -> str | None:
    if not recipe.export.verify.enabled:
        return "export.verify.enabled is false"
    if not any(s in manifests for s in ARTIFACT_STAGES):
        return "no gguf or onnx stage ran"
    return None


def artifacts(upstream: dict[str, dict[str, Any]], run_dir: Path) -> list[ArtifactRecord]:
    """Every GGUF file and ONNX folder the export stages recorded, failed ones included."""
    return [r for r in RunFolder(run_dir, upstream).artifacts().values() if r.kind in ARTIFACT_STAGES]


def run(recipe: Recipe, inputs: StageInputs, out_dir: Path) -> StageResult:
    from edgesft.runtimes.torch_rt import TorchArtifact

    cfg = recipe.export.verify
    threads = recipe.train.threads or default_threads()
    records: dict[str, Any] = {}
    found = artifacts(inputs.upstream, inputs.run_dir)
    sources = {r.source_stage for r in found}
    if len(sources) != 1 or None in sources:
        raise QualityGateError(
            f"stage verify: artifacts come from different model stages ({sorted(map(str, sources))})"
        )
    source = str(sources.pop())
    model = TorchArtifact(inputs.stage_dir(source) / inputs.info(source)["model"], threads=threads)
    reference = Reference(model, inputs.work_dir / "reference")
    data_dir = inputs.stage_dir("data")
    rows = load_rows(data_dir / "val.jsonl") or load_rows(data_dir / "train.jsonl")
    request = build_request(reference.tok, rows, cfg)
    for art in found:
        if art.status != "ok":
            records[art.key] = {"precision": art.precision, "status": "failed", "error": art.error}
            continue
        t0 = time.perf_counter()
        rec = verify_artifact(
            art.path, str(art.precision), reference, request, cfg, inputs.work_dir / "probe", threads
        )
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        records[art.key] = rec
        print("  " + summary_line(art.key, rec))
    report = {
        "source_stage": source,
        "prompts": len(request["sequences"]),
        "texts": len(request["texts"]),
        "artifacts": records,
    }
    atomic_write_json(out_dir / "verify.json", report)
    passed = sum(r["status"] == "passed" for r in records.values())
    return StageResult(
        metrics={**report, "passed": passed, "failed": len(records) - passed},
        info={"source_stage": source},
        # A crash or a hang is no verdict: retried on the next run (a parity failure is one, and stays).
        failures=[k for k, r in records.items() if r["status"] in ("crashed", "timeout")],
    )


def summary_line(key: str, rec: dict[str, Any]) -> str:
    if "checks" not in rec:
        return f"{key}: {rec['status'].upper()}: {rec.get('error')}"
    lg = rec["checks"]["logits"]
    figures = (
        f"top-1 {lg['top1_agreement']:.3f}, KL {lg['kl_mean']:.4f}"
        if "kl_mean" in lg
        else lg.get("error", "")
    )
    bad = f" ({', '.join(rec['failed_checks'])})" if rec["failed_checks"] else ""
    return f"{key}: {rec['status'].upper()}{bad}: {figures}"


def gate(recipe: Recipe, manifests: dict[str, dict[str, Any]]) -> None:
    m = manifests.get("verify")
    if m is None or recipe.export.verify.allow_failures:
        return
    bad = {k: r for k, r in m["metrics"]["artifacts"].items() if r["status"] != "passed"}
    if bad:
        detail = "; ".join(
            f"{k} {r['status']}"
            + (
                f" ({', '.join(r.get('failed_checks', []))})"
                if r.get("failed_checks")
                else f": {r.get('error')}"
            )
            for k, r in bad.items()
        )
        raise QualityGateError(
            f"stage verify: {len(bad)} artifact(s) failed parity: {detail} "
            "(details in verify/verify.json; export.verify.allow_failures ships them anyway)"
        )
