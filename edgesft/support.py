"""Which stages take which model architectures: one table, read by ``edgesft validate`` before any training
and printed into the README (``edgesft.docs.architectures_table``).

Each stage keeps its own list beside its implementation: the pruner's registry of module maps, llama.cpp's
converter's own registry of model classes (read from the installed converter); the ONNX list is what
onnxruntime-genai's model builder exported correctly here, measured on tiny models of each architecture
(``tests/test_onnx_export.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

SOFT_PROMPT = (
    "train.method prompt_tuning: a soft prompt is a sequence of learned input vectors, not a weight change, "
    "so no model file can carry it (use lora, dora or freeze to export)"
)
"""Why the export and bench stages skip a prompt-tuned run."""

if TYPE_CHECKING:
    from edgesft.config import Recipe

# The architectures tested through every stage (tests/test_architectures.py), the rows of the README's table.
MATRIX = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "smollm3", "granite")

# onnxruntime-genai 0.18's model builder on transformers 5.24, measured on tiny models of each architecture
# (tests/test_onnx_export.py): these export and match transformers in onnxruntime...
ONNX_ARCHITECTURES = ("granite", "llama", "mistral", "qwen2", "qwen3")
# ...and these do not, for reasons inside the builder.
ONNX_REFUSALS = {
    "gemma2": "onnxruntime-genai 0.18's sliding-window attention graph needs a preallocated KV cache",
    "gemma3_text": "onnxruntime-genai 0.18's builder fails on transformers 5 configs (KeyError 'rope_type')",
    "phi3": "onnxruntime-genai 0.18's builder fails on transformers 5 configs (KeyError 'multi_cache')",
    "smollm3": "onnxruntime-genai 0.18's builder fails on transformers 5 configs (KeyError 'position_ids')",
}


# Measured on a tiny Mistral with Llama 2's SentencePiece tokenizer: onnxruntime-genai 0.18's tokenizer does
# not put the BOS that the Hugging Face tokenizer (and llama.cpp) put before every text ("Hello world":
# [15043, 3186] instead of [1, 15043, 3186]); verify's tokenizer check fails every such ONNX folder.
ONNX_SENTENCEPIECE_BOS = (
    "onnxruntime-genai 0.18's tokenizer drops the BOS this SentencePiece tokenizer puts before every text"
)


def sentencepiece_bos(folder: Path) -> bool:
    """Whether a model folder's tokenizer is a SentencePiece one (``tokenizer.model``) that adds a BOS."""
    if not (folder / "tokenizer.model").is_file():
        return False
    try:
        tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        single = ((tj.get("post_processor") or {}).get("single")) or []
    except (OSError, ValueError, AttributeError):
        return False
    return bool(single) and isinstance(single[0], dict) and "SpecialToken" in single[0]


def causal_lm_class(model_type: str) -> str | None:
    """transformers' causal-LM class name for a ``model_type`` (what a saved config lists as its
    ``architectures``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)


def stage_problem(stage: str, model_type: str, architectures: list[str] | None = None) -> str | None:
    """Why ``stage`` cannot take a model, or None when it can."""
    if stage == "prune":
        from edgesft.prune import SUPPORTED_MODEL_TYPES

        if model_type not in SUPPORTED_MODEL_TYPES:
            return f"architecture {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    elif stage == "gguf":
        from edgesft.errors import EdgesftError
        from edgesft.llama_convert import converts, source_info

        if architectures is None:
            cls = causal_lm_class(model_type)
            architectures = [cls] if cls else []
        try:
            if not converts(architectures):
                version = (source_info() or {}).get("llama_cpp_python")
                return (
                    f"architecture {model_type!r} ({', '.join(architectures) or 'no class'}) is not converted by "
                    f"llama.cpp's convert_hf_to_gguf.py (llama-cpp-python {version})"
                )
        except EdgesftError as e:
            return str(e).removeprefix("export.gguf: ")
    elif stage == "onnx" and model_type not in ONNX_ARCHITECTURES:
        reason = ONNX_REFUSALS.get(model_type, "not tested with onnxruntime-genai's model builder")
        return f"architecture {model_type!r} is not supported: {reason} (supported: {', '.join(ONNX_ARCHITECTURES)})"
    return None


def base_config(recipe: Recipe) -> dict[str, Any] | None:
    """``model_type`` and ``architectures`` of the base model when they can be known offline (the embedded
    and tiny models, a local folder or GGUF file); None for a hub id, which is only looked at when the run
    fetches it. A GGUF file gives its llama.cpp architecture name and no class list."""
    from edgesft.config import EMBEDDED_MODEL, TINY_MODEL

    base = recipe.model.base
    if base in (EMBEDDED_MODEL, TINY_MODEL):
        return {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    local = Path(base).expanduser()
    if not local.is_absolute() and (recipe._base_dir / local).exists():
        local = recipe._base_dir / local
    if local.is_dir():
        try:
            config = json.loads((local / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # reported as a bad model folder when the run resolves it
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            return None
        archs = config.get("architectures")
        return {
            "model_type": config["model_type"],
            "architectures": archs if isinstance(archs, list) else None,
            "sentencepiece_bos": sentencepiece_bos(local),
        }
    if local.suffix == ".gguf" and local.is_file():
        try:
            from gguf import GGUFReader

            arch = GGUFReader(str(local)).fields["general.architecture"].contents()
        except Exception:  # a damaged file is reported, with its reason, when the run reads it
            return None
        return {"model_type": arch, "architectures": None} if isinstance(arch, str) else None
    return None


def architecture_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """(recipe key, problem) for every enabled stage that cannot take the base model's architecture."""
    config = base_config(recipe)
    if config is None or recipe.train.method == "prompt_tuning":
        return []
    enabled = {
        "prune": ("prune.enabled", recipe.prune.enabled),
        "gguf": ("export.gguf.enabled", recipe.export.gguf.enabled),
        "onnx": ("export.onnx.enabled", recipe.export.onnx.enabled and bool(recipe.export.onnx.variants)),
    }
    out = []
    for stage, (key, on) in enabled.items():
        if not on:
            continue
        problem = stage_problem(stage, config["model_type"], config["architectures"])
        if stage == "onnx" and not problem and config.get("sentencepiece_bos"):
            problem = ONNX_SENTENCEPIECE_BOS
        if problem:
            out.append((key, f"{stage}: {problem}; set {key}: false"))
    return out
