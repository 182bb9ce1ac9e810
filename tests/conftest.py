"""Shared fixtures: recipes on the tiny random model, written into a temp folder."""

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


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    return write_recipe(tmp_path)
