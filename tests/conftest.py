"""Shared fixtures: recipes on the tiny random model, written into a temp folder; tiny random models of any
architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DATA = ROOT / "recipes" / "data" / "ci_smoke"


def write_recipe(folder: Path, **sections: Any) -> Path:
    """A ci-smoke-like recipe (tiny-llama, lora, few steps) with sections merged in; returns its path."""
    recipe: dict[str, Any] = {
        "name": "t",
        "run_root": str(folder / "runs"),
        "seed": 7,
        "model": {"base": "tiny-llama"},
        "data": {
            "train": str(SMOKE_DATA / "train.jsonl"),
            "test": str(SMOKE_DATA / "test.jsonl"),
            "val_fraction": 0.1,
            "max_length": 128,
        },
        "train": {
            "method": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "learning_rate": 3e-3,
            "batch_size": 8,
            "max_steps": 6,
            "eval_steps": 3,
            "logging_steps": 1,
            "early_stopping_patience": None,
        },
        "eval": {"max_new_tokens": 16, "max_rows": 4, "evaluate_base": False},
        # export and bench stages are tested on their own (test_gguf, test_onnx_export, test_export) and in
        # the ci-smoke end-to-end test
        "export": {"gguf": {"enabled": False}, "onnx": {"enabled": False}},
        "bench": {"enabled": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


QUICK_VERIFY = {
    "prompts": 4,
    "generate_prompts": 1,
    "generate_tokens": 4,
    # The tiny random model's next-token distributions stay near-uniform after a few steps: Q8_0 matches
    # them (KL 0.0000) yet flips ~5% of top-1 picks among near-equal logits, by the training run's luck.
    "limits_8bit": {"min_top1": 0.9, "max_kl": 0.02},
}
"""export.verify for pipeline tests on the tiny model."""

QUICK_LATENCY = {"prompt_lengths": [16], "decode_depths": [0], "decode_tokens": 4, "warmup": 0, "repeats": 1}
"""bench.latency for tests that need every artifact measured once in its runtime, not its figures."""


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    return write_recipe(tmp_path)


TINY_VOCAB = 256


def tiny_model(model_type: str, seed: int = 0, **overrides: Any) -> Any:
    """A tiny random causal LM of any transformers architecture (``AutoConfig.for_model``), float32, in eval
    mode: 4 blocks, hidden 64, 4 query heads over 2 KV heads, MLP 128, a 256-token vocabulary; ``overrides``
    go into the config.

    Biases are drawn at random (transformers starts them at 0), and so is the spread of every norm's weights
    (they start at 1, or at 0 in Gemma's ``1 + weight`` form): a bias or norm that is sliced, dropped or
    attached to the wrong block then shows in the logits.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    settings: dict[str, Any] = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    settings.update(overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(model_type, **settings), dtype=torch.float32
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.5)
            elif "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return model.eval()
