"""Fold PEFT adapters into float weights.

A QLoRA adapter was trained against the nf4-dequantized base, not the original weights. Folding it into the
nf4 round-tripped base gives a plain float model that computes the same function as the 4-bit model plus
adapter (up to bitsandbytes' own rounding; tests/test_adapters.py), which exporters can read. peft's merge
into 4-bit layers is not used: it re-quantizes the merged weights and loses the update's precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def nf4_round_trip(
    weight: Any, quant_type: str = "nf4", double_quant: bool = True, blocksize: int = 64
) -> Any:
    """``weight`` quantized to 4 bits and back, as transformers' bitsandbytes loader stores it."""
    import bitsandbytes.functional as bnbf
    import torch

    w = weight.detach().to(torch.float32).contiguous()
    packed, state = bnbf.quantize_4bit(
        w, blocksize=blocksize, compress_statistics=double_quant, quant_type=quant_type
    )
    return bnbf.dequantize_4bit(packed, state).to(weight.dtype).reshape(weight.shape)


def quantized_linear_names(model: Any) -> list[str]:
    """Names of the Linear layers transformers' bitsandbytes loader quantizes (all but the output head)."""
    import torch

    head = model.get_output_embeddings()
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


def round_trip_base(model: Any, quant_type: str = "nf4", double_quant: bool = True) -> int:
    """Replace every quantizable Linear weight of a float model by its 4-bit round trip, in place."""
    import torch

    modules = dict(model.named_modules())
    names = quantized_linear_names(model)
    with torch.no_grad():
        for n in names:
            lin = modules[n]
            lin.weight.copy_(nf4_round_trip(lin.weight, quant_type, double_quant))
    return len(names)


def folded_model(
    base: Path,
    adapter: Path,
    qlora: dict[str, Any] | None,
    vocab_size: int | None = None,
    dtype: str = "float32",
) -> Any:
    """A plain float model: ``base`` (nf4 round-tripped when the adapter is a QLoRA one) + adapter merged."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), use_safetensors=True)
    if vocab_size is not None and vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size)
    if qlora is not None:
        round_trip_base(model, qlora["quant_type"], qlora["double_quant"])
    peft_model = PeftModel.from_pretrained(model, adapter)
    if peft_model.peft_config["default"].is_prompt_learning:
        return peft_model.eval()  # a soft prompt cannot be folded into weights
    return peft_model.merge_and_unload().eval()
