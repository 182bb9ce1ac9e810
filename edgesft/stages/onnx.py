"""Stage ``onnx``: the last model stage as ONNX folders for onnxruntime and onnxruntime-genai.

onnxruntime-genai's model builder makes each ``export.onnx.variants`` entry (fp32, fp16, int8, int4 with
RTN, k-quant, HQQ or GPTQ); every folder carries genai_config.json and the tokenizer, so ``og.Model(folder)``
and a plain onnxruntime session both run it (:mod:`edgesft.onnx_export`). Variants are independent: one
that fails is that artifact's failure, listed in the manifest, and the others are still made.

Outputs: one folder per variant.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from edgesft.config import Recipe
from edgesft.data import load_rows
from edgesft.errors import EdgesftError
from edgesft.isolate import transient
from edgesft.pipeline import StageInputs, StageResult
from edgesft.support import SOFT_PROMPT


def skip(recipe: Recipe, manifests: dict[str, dict[str, Any]]) -> str | None:
    if recipe.train.method == "prompt_tuning":
        return SOFT_PROMPT
    return (
        None if recipe.export.onnx.enabled and recipe.export.onnx.variants else "export.onnx.enabled is false"
    )


def context_length(recipe: Recipe, src: Path) -> int:
    import json

    from edgesft.models import default_context_length

    if recipe.export.onnx.context_length:
        return recipe.export.onnx.context_length
    return default_context_length(json.loads((src / "config.json").read_text()))


def run(recipe: Recipe, inputs: StageInputs, out_dir: Path) -> StageResult:
    from transformers import AutoTokenizer

    from edgesft.chat import encode_conversation
    from edgesft.onnx_export import build_variant

    o = recipe.export.onnx
    source, src = inputs.source_model()
    names = [v.name for v in o.variants]
    if len(set(names)) != len(names):
        raise EdgesftError(f"export.onnx.variants: names must differ ({', '.join(names)})")
    metrics: dict[str, Any] = {"source_stage": source}
    calibration = None
    if any(v.algorithm == "gptq" and v.precision == "int4" for v in o.variants):
        tok = AutoTokenizer.from_pretrained(src)
        rows = load_rows(inputs.stage_dir("data") / "train.jsonl")
        rows = random.Random(recipe.seed).sample(rows, min(o.calibration_rows, len(rows)))
        calibration = [encode_conversation(tok, r.messages)[0][: recipe.data.max_length] for r in rows]
    ctx = context_length(recipe, src)
    artifacts: list[dict[str, Any]] = []
    for v in o.variants:
        t1 = time.perf_counter()
        try:
            r = build_variant(src, out_dir / v.name, v, context_length=ctx, calibration=calibration)
        except EdgesftError as e:
            print(f"  {v.name}: FAILED: {e}")
            artifacts.append(
                {
                    "file": v.name,
                    "format": "onnx",
                    "precision": v.precision,
                    "status": "failed",
                    "error": str(e),
                    "transient": transient(e),
                }
            )
            continue
        r.setdefault("seconds", round(time.perf_counter() - t1, 2))
        size = r.get("size_bytes", 0)
        print(f"  {v.name}: {v.exporter} {v.precision}, {size / 2**20:.1f} MiB in {r['seconds']:.1f}s")
        artifacts.append(
            {
                "file": v.name,
                "format": "onnx",
                "status": "ok",
                **r,
                "precision": v.precision,
                "exporter": v.exporter,
            }
        )
    metrics["artifacts"] = artifacts
    metrics["context_length"] = ctx
    return StageResult(
        metrics=metrics,
        info={"artifacts": [a["file"] for a in artifacts if a["status"] == "ok"], "source_stage": source},
        failures=[a["file"] for a in artifacts if a.get("transient")],
    )
