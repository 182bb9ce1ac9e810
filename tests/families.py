"""The architectures users bring, each as a tiny random model with its family's real tokenizer.

The tokenizers are rebuilt (:func:`edgesft.models.tokenizer_from_gguf`) from llama.cpp's tokenizer test
vocabularies, which ``python -m edgesft.llama_convert install`` takes from the llama-cpp-python source release:
nothing is downloaded. Gemma's own SentencePiece vocabulary is not among them (the release carries Gemma 4's,
a new tokenizer type), so the Gemma models get Llama 2's SentencePiece vocabulary, the same tokenizer kind,
without the "▁" prefix before a text as Gemma's has none ("llama-spm-gemma").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

# Llama 3.1/3.2's rope scaling (Llama-3.2-1B/3B's values)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# name -> (model_type, family vocabulary, config overrides). Shapes are tiny (hidden 64) but keep what
# each architecture does differently: explicit head_dim, biases, partial rotary, sliding windows, soft-capping.
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama3": (
        "llama",
        "llama-bpe",
        {
            "max_position_embeddings": 16384,
            "rope_parameters": LLAMA3_ROPE,
        },
    ),
    "llama3-untied": ("llama", "llama-bpe", {"tie_word_embeddings": False}),
    "llama-bias": ("llama", "llama-bpe", {"attention_bias": True}),
    "mistral": ("mistral", "llama-spm", {"tie_word_embeddings": False}),
    "qwen2": ("qwen2", "qwen2", {"tie_word_embeddings": True}),
    "qwen3": ("qwen3", "qwen2", {"head_dim": 32, "tie_word_embeddings": True}),
    "gemma2": (
        "gemma2",
        "llama-spm-gemma",
        {
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0,
            "sliding_window": 8,
        },
    ),  # fmt: skip
    "gemma3_text": (
        "gemma3_text",
        "llama-spm-gemma",
        {"head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8},
    ),
    "phi3": ("phi3", "phi-3", {"tie_word_embeddings": False}),
    "phi4-mini": ("phi3", "gpt-2", {"partial_rotary_factor": 0.75, "tie_word_embeddings": True}),
    "smollm3": ("smollm3", "llama-bpe", {"tie_word_embeddings": True}),
    "granite": (
        "granite",
        "gpt-2",
        {
            "tie_word_embeddings": True,
            "embedding_multiplier": 4.0,
            "residual_multiplier": 0.5,
            "logits_scaling": 2.0,
        },
    ),  # fmt: skip
}


def family_tokenizer(vocab: str, cache: Path) -> Path:
    """A folder with the family's tokenizer files, built once into ``cache``."""
    from edgesft.llama_convert import vocab_file
    from edgesft.models import tokenizer_from_gguf

    folder = cache / f"tokenizer-{vocab}"
    if not (folder / "tokenizer_config.json").is_file():
        try:
            source = vocab_file(vocab.removesuffix("-gemma"))
        except Exception as e:  # noqa: BLE001 - the converter is installed by scripts/install.sh
            pytest.skip(f"llama.cpp's tokenizer vocabularies are not installed: {e}")
        tmp = cache / f".tokenizer-{vocab}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        prefix = False if vocab.endswith("-gemma") else None
        tokenizer_from_gguf(source, tmp, space_prefix=prefix).save_pretrained(tmp)
        tmp.rename(folder)
    return folder


def _sharpen(model: Any, factor: float) -> None:
    """Scale the final norm so the logits are peaked like a trained model's: a random model's near-uniform
    logits over a 128k vocabulary make top-1 flip on ties a runtime's rounding decides, which hides nothing
    and fails parity checks that a real model passes. Gemma's norms hold ``weight - 1``."""
    import torch

    norm = model.model.norm.weight
    with torch.no_grad():
        if "Gemma" in type(model).__name__:
            norm.copy_((1 + norm) * factor - 1)
        else:
            norm.mul_(factor)


def make_architecture(name: str, folder: Path, cache: Path, **extra: Any) -> Path:
    """The tiny model of :data:`ARCHITECTURES` ``name`` saved in ``folder`` with its family tokenizer."""
    from conftest import tiny_model
    from transformers import AutoTokenizer

    from edgesft.models import copy_tokenizer_files

    model_type, vocab, overrides = ARCHITECTURES[name]
    tok_dir = family_tokenizer(vocab, cache)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids = {
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    }
    model = tiny_model(model_type, **{**ids, **overrides, **extra})
    _sharpen(model, 8.0)
    model.save_pretrained(folder, safe_serialization=True)
    copy_tokenizer_files(tok_dir, folder)
    if name == "phi4-mini":
        # Phi-4-mini ships a GPT-2 style BPE tokenizer under that class name (its own 200k vocabulary is not
        # among llama.cpp's test files: GPT-2's stands in); llama.cpp's converter takes the
        # BPE path for Phi-3 models only when it sees it (otherwise it wants a SentencePiece model)
        tc = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**tc, "tokenizer_class": "GPT2Tokenizer"}))
    gen = folder / "generation_config.json"
    if gen.is_file():
        config = json.loads(gen.read_text())
        config.pop("bos_token_id", None)
        gen.write_text(json.dumps(config, indent=2))
    return folder
