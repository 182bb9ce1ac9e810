"""Which stages take which model architectures: one table, read by ``edgesft validate`` before any training
and printed into the README (``edgesft.docs.architectures_table``).

Each stage keeps its own list beside its implementation (the GGUF writer's tensor maps, the pruner's
surgery); the ONNX list is what onnxruntime-genai's model builder exported correctly here, measured on tiny
models of each architecture (``tests/test_onnx_export.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgesft.config import Recipe

# onnxruntime-genai 0.18 on transformers 5.24: gemma3_text, phi3 and smollm3 fail inside the builder
# (KeyErrors on transformers 5 configs); gemma2's sliding-window graph needs a preallocated KV cache.
ONNX_ARCHITECTURES = ("granite", "llama", "mistral", "qwen2", "qwen3")


def stage_architectures() -> dict[str, tuple[str, ...]]:
    """Stage name -> the Hugging Face ``model_type`` values it supports."""
    from edgesft.gguf_export import ARCHITECTURES
    from edgesft.prune import SUPPORTED_MODEL_TYPES

    return {
        "prune": tuple(sorted(SUPPORTED_MODEL_TYPES)),
        "gguf": tuple(sorted(ARCHITECTURES)),
        "onnx": ONNX_ARCHITECTURES,
    }


def model_type(recipe: Recipe) -> str | None:
    """The base model's ``model_type`` when it can be known offline (the embedded and tiny models, a local
    folder or GGUF file); None for a hub id, which is only looked at when the run fetches it."""
    from edgesft.config import EMBEDDED_MODEL, TINY_MODEL

    base = recipe.model.base
    if base in (EMBEDDED_MODEL, TINY_MODEL):
        return "llama"
    local = Path(base).expanduser()
    if not local.is_absolute() and (recipe._base_dir / local).exists():
        local = recipe._base_dir / local
    if local.is_dir():
        try:
            value = json.loads((local / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            return None  # reported as a bad model folder when the run resolves it
        return value if isinstance(value, str) else None
    if local.suffix == ".gguf" and local.is_file():
        try:
            from gguf import GGUFReader

            arch = GGUFReader(str(local)).fields["general.architecture"].contents()
        except Exception:  # a damaged file is reported, with its reason, when the run reads it
            return None
        return arch if isinstance(arch, str) else None
    return None


def architecture_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """(recipe key, problem) for every enabled stage that cannot take the base model's architecture."""
    mtype = model_type(recipe)
    if mtype is None:
        return []
    enabled = {
        "prune": ("prune.enabled", recipe.prune.enabled),
        "gguf": ("export.gguf.enabled", recipe.export.gguf.enabled),
        "onnx": ("export.onnx.enabled", recipe.export.onnx.enabled and bool(recipe.export.onnx.variants)),
    }
    out = []
    for stage, supported in stage_architectures().items():
        key, on = enabled[stage]
        if on and recipe.train.method != "prompt_tuning" and mtype not in supported:
            out.append(
                (
                    key,
                    f"{stage}: architecture {mtype!r} is not supported (supported: {', '.join(supported)}); "
                    f"set {key}: false",
                )
            )
    return out
