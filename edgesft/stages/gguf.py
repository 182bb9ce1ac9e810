"""Stage ``gguf``: the last model stage as llama.cpp GGUF files.

The float GGUF is written by llama.cpp's own converter (:func:`edgesft.gguf_export.write_gguf`); an importance matrix is measured on
calibration rows from the training split (PyTorch activations) and saved in llama.cpp's imatrix format; then
llama.cpp's own quantizer makes each ``export.gguf.quants`` type, in a child process. Every tensor that fell
back to another type is reported with the reason.

Outputs: ``<name>-<TYPE>.gguf`` per quant (and the float file with ``keep_float``), ``imatrix.gguf``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from edgesft.config import Recipe
from edgesft.data import load_rows
from edgesft.gguf_export import imatrix_from_model, write_gguf, write_imatrix
from edgesft.isolate import IsolatedFailure, call
from edgesft.machine import set_threads
from edgesft.pipeline import StageInputs, StageResult
from edgesft.support import SOFT_PROMPT
from edgesft.training import calibration_batches


def skip(recipe: Recipe, manifests: dict[str, dict[str, Any]]) -> str | None:
    if recipe.train.method == "prompt_tuning":
        return SOFT_PROMPT
    return None if recipe.export.gguf.enabled else "export.gguf.enabled is false"


def _imatrix(recipe: Recipe, src: Path, arch: str, data_dir: Path, dest: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = recipe.export.gguf
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, use_safetensors=True)
    rows = load_rows(data_dir / "train.jsonl")
    rows = random.Random(recipe.seed).sample(rows, min(g.imatrix_rows, len(rows)))
    batches = calibration_batches(tok, rows, recipe.data.max_length, batch_size=8)
    stats = imatrix_from_model(model, batches, arch)  # the architecture the converter wrote
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    write_imatrix(stats, dest, f"train.jsonl ({len(rows)} rows)", recipe.data.max_length)
    return {
        "rows": len(rows),
        "tokens": tokens,
        "tensors": len(stats),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def run(recipe: Recipe, inputs: StageInputs, out_dir: Path) -> StageResult:
    g = recipe.export.gguf
    source, src = inputs.source_model()
    name = recipe.name or "model"
    threads = set_threads(g.threads)
    float_name = f"{name}-{g.float_type.upper()}.gguf"
    float_path = (out_dir if g.keep_float else inputs.work_dir) / float_name
    t0 = time.perf_counter()
    written = write_gguf(src, float_path, g.float_type, name)
    print(f"  wrote {float_name}: {written['bytes'] / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f}s")
    metrics: dict[str, Any] = {
        "source_stage": source,
        "float": {
            **written,
            "file": float_name,
            "kept": g.keep_float,
            "seconds": round(time.perf_counter() - t0, 2),
        },
    }
    imatrix = None
    if g.imatrix and g.quants:
        imatrix = out_dir / "imatrix.gguf"
        metrics["imatrix"] = _imatrix(recipe, src, written["architecture"], inputs.stage_dir("data"), imatrix)
        print(
            f"  importance matrix: {metrics['imatrix']['tensors']} tensors from {metrics['imatrix']['tokens']} "
            f"tokens in {metrics['imatrix']['seconds']:.1f}s"
        )
    artifacts: list[dict[str, Any]] = []
    if g.keep_float:
        artifacts.append(
            {
                "file": float_name,
                "format": "gguf",
                "precision": g.float_type.upper(),
                "status": "ok",
                "bytes": written["bytes"],
            }
        )
    for q in g.quants:
        dest = out_dir / f"{name}-{q}.gguf"
        t1 = time.perf_counter()
        try:
            r = call(
                "edgesft.gguf_export:quantize",
                {
                    "src": str(float_path),
                    "dest": str(dest),
                    "qtype": q,
                    "imatrix": str(imatrix) if imatrix else None,
                    "threads": threads,
                    "output_type": g.output_type_of(q),
                },
            )
        except IsolatedFailure as e:
            print(f"  {q}: FAILED: {e}")
            artifacts.append(
                {
                    "file": dest.name,
                    "format": "gguf",
                    "precision": q,
                    "status": "failed",
                    "error": str(e),
                    "transient": e.transient,
                }
            )
            continue
        r["seconds"] = round(time.perf_counter() - t1, 2)
        r["fraction_of_float"] = round(r["bytes"] / written["bytes"], 4)
        fb = r["fallbacks"]
        note = f"; {len(fb)} tensor(s) fell back ({_fallback_summary(fb)})" if fb else ""
        print(
            f"  {q}: {r['bytes'] / 2**20:.1f} MiB ({r['fraction_of_float']:.1%} of {g.float_type.upper()}){note}"
        )
        artifacts.append({"file": dest.name, "format": "gguf", "precision": q, "status": "ok", **r})
    metrics["artifacts"] = artifacts
    return StageResult(
        metrics=metrics,
        info={"artifacts": [a["file"] for a in artifacts if a["status"] == "ok"], "source_stage": source},
        failures=[a["file"] for a in artifacts if a.get("transient")],
    )


def _fallback_summary(fallbacks: list[dict[str, Any]]) -> str:
    groups: dict[str, int] = {}
    for f in fallbacks:
        key = f"{f['wanted']}->{f['used']}, row {f['ncols']} % {f['block']}"
        groups[key] = groups.get(key, 0) + 1
    return "; ".join(f"{n}x {k}" for k, n in groups.items())
