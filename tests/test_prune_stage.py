"""Prune stage in a run: plan applied, model reloads with stock transformers, healing, quality gates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import SMOKE_DATA, tiny_model, write_recipe

from edgesft.config import load_recipe
from edgesft.errors import QualityGateError, RecipeError
from edgesft.pipeline import run_pipeline
from edgesft.stages import STAGES

PRUNE = {
    "enabled": True,
    "target_fraction": 0.4,
    "depth": {"method": "block_influence", "layers": 1},
    "width": {"mlp": True, "multiple": 16},
    "calibration_rows": 32,
    "heal": {"method": "distill", "learning_rate": 3e-3, "max_steps": 8, "eval_steps": 4, "batch_size": 8},
}


def _recipe(folder: Path, **prune: Any) -> Path:
    return write_recipe(
        folder,
        model={"base": "tiny-llama", "tiny": {"layers": 4, "intermediate": 128}},
        prune={**PRUNE, **prune},
    )


def _run(path: Path, *overrides: str) -> dict[str, dict[str, Any]]:
    return run_pipeline(load_recipe(path, list(overrides)), STAGES, log=lambda _m: None)


def test_prune_and_distillation_heal(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    manifests = _run(_recipe(tmp_path))
    m = manifests["prune"]["metrics"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "t" / "prune" / "model")
    assert model.config.num_hidden_layers == 3
    assert model.config.intermediate_size == m["plan"]["intermediate_size"] < 128
    assert model.config.intermediate_size % 16 == 0
    assert len(m["removed_layers"]) == 1 and len(m["layer_scores"]) == 4
    assert m["removed_fraction"] >= 0.4
    assert m["params_non_embedding"] == m["plan"]["non_embedding_after"]
    assert m["params_non_embedding"] < manifests["merge"]["metrics"]["params_non_embedding"]
    for key in ("val_loss", "val_perplexity", "test", "params_total"):
        assert key in m
    # Healing lowers the validation loss of the freshly pruned model.
    assert m["heal"]["method"] == "distill" and m["heal"]["steps"] > 0
    assert m["val_loss"] < m["unhealed_val_loss"]
    # `edgesft eval` reads the stage folder like any other.
    from edgesft.evaluate import evaluate_target

    result = evaluate_target(str(tmp_path / "runs" / "t" / "prune"), SMOKE_DATA / "test.jsonl", max_rows=3)
    assert result["kind"] == "stage:prune" and result["metrics"]["n"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("qat", ["none", "q4_0"])
def test_heal_killed_at_a_checkpoint_resumes_to_the_same_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, qat: str
) -> None:
    import os
    import subprocess
    import sys

    from conftest import ROOT

    from edgesft.io import sha256_file
    from edgesft.training import FAULT_ENV

    monkeypatch.delenv(FAULT_ENV, raising=False)
    # train's only checkpoint (step 3) comes before the heal's first (step 4): the kill is the heal's
    # with quantization-aware healing the resumed run also re-measures its importance matrix and scale
    # choices at the checkpoint's step, as the straight run did there
    prune = {**PRUNE, "heal": {**PRUNE["heal"], "qat": qat}}
    sections = {"model": {"base": "tiny-llama", "tiny": {"layers": 4, "intermediate": 128}}, "prune": prune}
    straight = write_recipe(tmp_path / "straight", train={"max_steps": 3, "eval_steps": 3}, **sections)
    resumed = write_recipe(tmp_path / "resumed", train={"max_steps": 3, "eval_steps": 3}, **sections)
    _run(straight)
    killed = subprocess.run(
        [sys.executable, "-m", "edgesft.cli", "run", str(resumed)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, FAULT_ENV: "4"},
        timeout=600,
    )
    assert killed.returncode == 137, killed.stderr[-2000:]
    run_dir = tmp_path / "resumed" / "runs" / "t"
    assert (run_dir / ".work" / "prune" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (run_dir / "prune" / "manifest.json").exists()
    heal = _run(resumed)["prune"]["metrics"]["heal"]
    assert heal["resumed_from_step"] == 4
    assert ("qat" in heal) == (qat != "none")
    for name in ("model/model.safetensors", "heal_loss_curve.json"):
        a, b = tmp_path / "straight" / "runs" / "t" / "prune" / name, run_dir / "prune" / name
        assert sha256_file(a) == sha256_file(b), name


def test_kv_groups_and_lora_sft_heal(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    path = _recipe(
        tmp_path,
        target_fraction=None,
        depth={"method": "none"},
        width={"mlp": False, "kv_groups": 1},
        heal={"method": "sft", "params": "lora", "max_steps": 4, "eval_steps": 2, "learning_rate": 3e-3},
    )
    manifests = _run(path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "t" / "prune" / "model")
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 2
    assert not any("lora" in n for n, _ in model.named_parameters())  # the heal adapter was merged
    assert manifests["prune"]["metrics"]["heal"]["params"] == "lora"


def _model_folder(folder: Path, arch: str, **overrides: Any) -> Path:
    """A tiny random ``arch`` model with the SmolLM2 tokenizer (from the cached ``tiny-llama`` folder)."""
    from transformers import AutoTokenizer

    from edgesft.config import ModelConfig
    from edgesft.models import copy_tokenizer_files, resolve_model

    tok_dir = resolve_model(ModelConfig(base="tiny-llama")).path
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    model = tiny_model(arch, vocab_size=len(tok), **ids, **overrides)
    model.save_pretrained(folder, safe_serialization=True)
    copy_tokenizer_files(tok_dir, folder)
    return folder


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("phi3", {"partial_rotary_factor": 0.75}),  # fused qkv_proj and gate_up_proj
        ("smollm3", {}),  # no-RoPE grid: the removed block must keep it
    ],
)
def test_prune_stage_on_other_architectures(arch: str, overrides: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    base = _model_folder(tmp_path / "base", arch, **overrides)
    path = write_recipe(
        tmp_path,
        model={"base": str(base)},
        train={"max_steps": 2, "eval_steps": 2},
        eval={"max_rows": 2},
        prune={
            **PRUNE,
            "width": {"mlp": True, "multiple": 16, "kv_groups": 1, "hidden_size": 48},
            "heal": {
                "method": "distill",
                "learning_rate": 3e-3,
                "max_steps": 2,
                "eval_steps": 2,
                "batch_size": 8,
            },
        },
    )
    m = _run(path)["prune"]["metrics"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "t" / "prune" / "model")
    assert model.config.model_type == arch and model.config.num_hidden_layers == 3
    assert (model.config.num_key_value_heads, model.config.num_attention_heads) == (1, 2)
    assert model.config.hidden_size == m["plan"]["hidden_size"] == 48
    assert model.get_input_embeddings().weight.shape[1] == 48 and len(m["hidden_importance"]) == 64
    assert model.config.intermediate_size == m["plan"]["intermediate_size"]
    assert m["params_non_embedding"] == m["plan"]["non_embedding_after"] and m["removed_fraction"] >= 0.4
    if arch == "smollm3":
        assert m["removed_layers"] == [3] and model.config.no_rope_layers == [1, 1, 1]  # the only one


def test_quality_gate_stops_the_run_and_rechecks_without_rerunning(tmp_path: Path) -> None:
    path = _recipe(tmp_path, heal={"method": "none"})
    first = _run(path)
    train, prune = first["train"]["metrics"], first["prune"]["metrics"]
    rise = prune["val_perplexity"] / train["val_perplexity"] - 1
    assert rise > 0.01  # pruning 40% without healing costs perplexity
    with pytest.raises(QualityGateError, match=r"stage prune: .*val_perplexity .* allowed \+"):
        _run(path, f"prune.max_quality_drop.val_perplexity={rise / 2}")
    again = _run(path, f"prune.max_quality_drop.val_perplexity={rise * 2}")
    assert (
        again["prune"]["finished"] == first["prune"]["finished"]
    )  # a cache hit: the limit is not in the key


def test_prune_recipe_checks() -> None:
    from edgesft.config import Recipe, _combination_problems

    def problems(prune: dict[str, Any]) -> list[str]:
        recipe = Recipe.model_validate({"data": {"train": ["x.jsonl"]}, "prune": {"enabled": True, **prune}})
        return [p for p, _ in _combination_problems(recipe)]

    assert "prune.target_fraction" in problems({})
    assert "prune.target_params" in problems({"target_fraction": 0.2, "target_params": 1000})
    assert "prune.depth.layers" in problems({"target_fraction": 0.2, "depth": {"method": "angular"}})
    assert problems({"target_fraction": 0.2, "depth": {"method": "angular"}, "width": {"mlp": False}}) == []
    assert problems({"target_fraction": 0.2}) == []


def test_gate_fields_are_validated(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="prune.max_quality_drop.exact_match"):
        load_recipe(_recipe(tmp_path), ["prune.max_quality_drop.exact_match=-1"])


def test_a_limit_on_an_unmeasured_figure_fails() -> None:
    from edgesft.config import QualityDrop
    from edgesft.quality import quality_drops

    ref = {"test": {"exact_match": 0.5}, "val_perplexity": 1.2}
    assert quality_drops(QualityDrop(exact_match=1.0), ref, {"test": {"exact_match": 0.495}}) == []
    (line,) = quality_drops(QualityDrop(exact_match=1.0), ref, {"test": {"exact_match": 0.48}})
    assert "exact_match 48.0 vs tuned 50.0: drop 2.0 points > allowed 1" in line
    (line,) = quality_drops(QualityDrop(slot_f1=1.0), ref, {"test": {"exact_match": 0.5}})
    assert "not measured" in line
