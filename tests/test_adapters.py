"""Folding a QLoRA adapter into the nf4 round-tripped base reproduces the 4-bit model's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgesft.adapters import folded_model, nf4_round_trip, quantized_linear_names
from edgesft.config import ModelConfig
from edgesft.models import resolve_model


def test_round_trip_matches_what_the_4bit_loader_stores() -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base = resolve_model(ModelConfig(base="tiny-llama")).path
    float_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    q = AutoModelForCausalLM.from_pretrained(
        base,
        dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        ),
    )
    import bitsandbytes as bnb

    qmods = dict(q.named_modules())
    names = quantized_linear_names(float_model)
    assert names and all(isinstance(qmods[n], bnb.nn.Linear4bit) for n in names)
    for n in names[:4]:
        w = dict(float_model.named_modules())[n].weight
        stored = bnb.functional.dequantize_4bit(qmods[n].weight.data, qmods[n].weight.quant_state)
        assert torch.equal(nf4_round_trip(w), stored.to(torch.float32))


def test_loftq_starts_the_adapter_at_the_rounding_errors_top_directions() -> None:
    """After loftq_init the 4-bit weight plus the scaled adapter is the original weight up to exactly the
    rounding error's singular values past rank r. (Not the logits: on random weights the rounding error is
    noise with a flat spectrum, rank 4 takes 8% of it, and bitsandbytes' CPU matmul rounds like bf16.)"""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from edgesft.adapters import keep_4bit_unpacked, loftq_init

    base = resolve_model(ModelConfig(base="tiny-llama")).path
    float_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    q = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, quantization_config=quant)
    keep_4bit_unpacked(q)  # as the train stage does: an eval forward would repack the weights otherwise
    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(q, config).eval()
    errors = loftq_init(model, base)
    assert errors["layers"] == len(quantized_linear_names(float_model))
    assert errors["error_after"] < 0.95 * errors["error_before"]
    module = model.base_model.model.model.layers[0].mlp.down_proj
    packed = module.get_base_layer().weight
    quantized = bnb.functional.dequantize_4bit(packed.data, packed.quant_state)
    original = float_model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        delta = module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight
        tail = torch.linalg.svdvals(original - quantized)[4:].norm()
        assert torch.allclose((original - quantized - delta).norm(), tail, rtol=1e-3)


@pytest.mark.parametrize("init", ["default", "loftq"])
def test_folded_qlora_equals_peft_4bit_logits(tmp_path: Path, init: str) -> None:
    """Folding is exact; the only gap to the 4-bit model is bitsandbytes' own CPU rounding.

    bitsandbytes' CPU 4-bit matmul rounds like bf16 even with a float32 compute dtype, so the 4-bit model
    is compared with a budget measured on the bare base (no adapter) in the same run.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from edgesft.adapters import round_trip_base
    from edgesft.config import load_recipe
    from edgesft.evaluate import load_model
    from edgesft.pipeline import run_pipeline
    from edgesft.stages import STAGES
    from tests.conftest import write_recipe

    recipe = load_recipe(
        write_recipe(
            tmp_path, train={"method": "qlora", "dtype": "float32", "max_steps": 4, "lora": {"init": init}}
        )
    )
    manifests = run_pipeline(recipe, STAGES, log=lambda _m: None)
    info = manifests["train"]["info"]
    # A LoftQ adapter starts at W - Q: it is merged into the nf4 base only, never scored on the original one.
    merged = manifests["merge"]["metrics"]
    assert info["qlora"]["init"] == init
    if init == "loftq":
        assert merged["qlora_base"] == "nf4" and "qlora_val_loss" not in merged
    else:
        assert set(merged["qlora_val_loss"]) == {"original", "nf4"}
    base, adapter = Path(info["base_model"]), tmp_path / "runs" / "t" / "train" / "adapter"
    ids = torch.tensor([[1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]])

    folded = folded_model(base, adapter, info["qlora"])
    assert not hasattr(folded, "peft_config")
    unmerged_base = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    round_trip_base(unmerged_base)
    unmerged = PeftModel.from_pretrained(unmerged_base, adapter)
    bare_4bit = load_model(base, dtype="float32", quantization=info["qlora"])
    bare_float = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    round_trip_base(bare_float)
    peft_4bit = load_model(base, adapter, dtype="float32", quantization=info["qlora"])
    with torch.no_grad():
        f = folded(input_ids=ids).logits
        assert torch.allclose(f, unmerged(input_ids=ids).logits, atol=1e-5)  # folding itself is exact
        budget = (bare_4bit(input_ids=ids).logits - bare_float(input_ids=ids).logits).abs().max()
        gap = (peft_4bit(input_ids=ids).logits - f).abs().max()
    assert gap <= 1.5 * budget + 1e-5, (gap, budget)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_folded_lora_equals_peft_logits(tmp_path: Path, method: str) -> None:
    from edgesft.config import load_recipe
    from edgesft.evaluate import load_model
    from edgesft.pipeline import run_pipeline
    from edgesft.stages import STAGES
    from tests.conftest import write_recipe

    recipe = load_recipe(write_recipe(tmp_path, train={"method": method, "max_steps": 3}))
    info = run_pipeline(recipe, STAGES, log=lambda _m: None)["train"]["info"]
    out = tmp_path / "runs" / "t" / "train"
    peft_model = load_model(Path(info["base_model"]), out / "adapter")
    folded = folded_model(Path(info["base_model"]), out / "adapter", None)
    ids = torch.tensor([[1, 4093, 198, 6004, 2, 198]])
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, folded(input_ids=ids).logits, atol=1e-5)
