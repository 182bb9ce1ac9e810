"""Merge stage: adapters folded into plain weights, QLoRA two-way merge, fusion, pass-through, quality gates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import write_recipe

from edgesft.config import load_recipe
from edgesft.io import read_json
from edgesft.pipeline import run_pipeline
from edgesft.stages import STAGES
from edgesft.stages.merge import merged_model


def _tiny_base(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


def _random_adapter(base: Path, folder: Path, seed: int, r: int = 4, dora: bool = False) -> Path:
    """A LoRA adapter with non-zero B (peft initialises B to zero, which would make any merge trivially right)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False, use_dora=dora
    )
    get_peft_model(model, cfg).save_pretrained(folder, safe_serialization=True)
    return folder


def _logits(model: Any) -> Any:
    import torch

    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_merge_equals_the_peft_model(tmp_path: Path, dora: bool) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = _tiny_base(tmp_path / "base")
    adapter = _random_adapter(base, tmp_path / "a", seed=1, dora=dora)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    merged = merged_model(base, [(adapter, 1.0)], 128, None)
    assert not hasattr(merged, "peft_config")
    expected, got = _logits(peft_model), _logits(merged)
    assert (expected - _logits(AutoModelForCausalLM.from_pretrained(base))).abs().max() > 1e-2  # not a no-op
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cat_fusion_is_the_weighted_sum_of_updates(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    base = _tiny_base(tmp_path / "base")
    a1 = _random_adapter(base, tmp_path / "a1", seed=1, r=4)
    a2 = _random_adapter(base, tmp_path / "a2", seed=2, r=2)  # different rank: cat handles it
    w = AutoModelForCausalLM.from_pretrained(base).state_dict()
    m1 = merged_model(base, [(a1, 1.0)], 128, None).state_dict()
    m2 = merged_model(base, [(a2, 1.0)], 128, None).state_dict()
    fused = merged_model(base, [(a1, 0.7), (a2, 0.3)], 128, None, combination="cat").state_dict()
    changed = 0
    for name, weight in w.items():
        expected = weight + 0.7 * (m1[name] - weight) + 0.3 * (m2[name] - weight)
        torch.testing.assert_close(fused[name], expected, atol=1e-5, rtol=1e-4)
        changed += int(not torch.equal(fused[name], weight))
    assert changed >= 14  # every linear layer of both blocks


def test_linear_fusion_of_unequal_ranks_is_a_clear_error(tmp_path: Path) -> None:
    from edgesft.errors import EdgesftError

    base = _tiny_base(tmp_path / "base")
    a1 = _random_adapter(base, tmp_path / "a1", seed=1, r=4)
    a2 = _random_adapter(base, tmp_path / "a2", seed=2, r=2)
    with pytest.raises(EdgesftError, match="merge.combination"):
        merged_model(base, [(a1, 0.5), (a2, 0.5)], 128, None, combination="linear")


def _run(path: Path, *overrides: str) -> dict[str, dict[str, Any]]:
    return run_pipeline(load_recipe(path, list(overrides)), STAGES, log=lambda _m: None)


def test_lora_run_merges_and_records_quality(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    manifests = _run(write_recipe(tmp_path))
    m = manifests["merge"]
    folder = tmp_path / "runs" / "t" / "merge"
    model = AutoModelForCausalLM.from_pretrained(folder / "model")  # stock transformers reads it
    assert model.config.num_hidden_layers == 2
    for key in ("val_loss", "val_perplexity", "test", "params_total", "params_non_embedding"):
        assert key in m["metrics"], key
    assert m["metrics"]["merge"] == "adapter"
    # The merged float model computes what the adapter model did: same validation loss.
    assert m["metrics"]["val_loss"] == pytest.approx(manifests["train"]["metrics"]["val_loss"], rel=1e-4)


def test_qlora_two_way_merge_records_both_losses(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    manifests = _run(write_recipe(tmp_path, train={"method": "qlora"}))
    metrics = manifests["merge"]["metrics"]
    losses = metrics["qlora_val_loss"]
    assert set(losses) == {"original", "nf4"}
    assert losses["original"] != losses["nf4"]
    assert metrics["qlora_base"] == min(losses, key=losses.get)
    assert metrics["val_loss"] == pytest.approx(losses[metrics["qlora_base"]], rel=1e-6)
    forced = _run(write_recipe(tmp_path, train={"method": "qlora"}), "merge.qlora_base=original")
    assert forced["merge"]["metrics"]["qlora_base"] == "original"
    assert "qlora_val_loss" not in forced["merge"]["metrics"]


def test_full_weight_methods_pass_through(tmp_path: Path) -> None:
    manifests = _run(write_recipe(tmp_path, train={"method": "freeze", "trainable_layers": 1}))
    merge, train = manifests["merge"], manifests["train"]
    assert merge["metrics"]["merge"] == "pass-through"
    assert merge["metrics"]["test"] == train["metrics"]["test"]
    run = tmp_path / "runs" / "t"
    assert merge["outputs"]["model/model.safetensors"] == train["outputs"]["model/model.safetensors"]
    assert (run / "merge" / "model" / "config.json").is_file()


def test_prompt_tuning_skips_merge_and_rejects_prune(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgesft.cli import main

    path = write_recipe(tmp_path, train={"method": "prompt_tuning"})
    assert STAGES["merge"].skip(load_recipe(path), {})
    assert main(["validate", str(path), "prune.enabled=true", "prune.target_fraction=0.2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "prune.enabled" in err and "soft prompt" in err


def test_fusion_needs_adapter_folders(tmp_path: Path) -> None:
    from edgesft.errors import RecipeError

    path = write_recipe(tmp_path, merge={"adapters": [{"path": str(tmp_path / "nope"), "weight": 0.5}]})
    with pytest.raises(RecipeError, match=r"merge\.adapters\.0\.path: no PEFT adapter"):
        load_recipe(path)


def test_fusion_in_a_run(tmp_path: Path) -> None:
    first = _run(write_recipe(tmp_path / "one"))
    adapter = tmp_path / "one" / "runs" / "t" / "train" / "adapter"
    assert first["merge"]["metrics"]["adapters"] == 1
    fused = _run(
        write_recipe(
            tmp_path / "two",
            seed=8,
            merge={
                "adapters": [{"path": str(adapter), "weight": 0.5}],
                "train_weight": 0.5,
                "combination": "cat",
            },
        )
    )
    metrics = fused["merge"]["metrics"]
    assert metrics["merge"] == "fused" and metrics["adapters"] == 2 and metrics["combination"] == "cat"
    assert read_json(tmp_path / "two" / "runs" / "t" / "merge" / "manifest.json")["inputs"]
