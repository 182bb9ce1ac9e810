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


def keep_4bit_unpacked(model: Any) -> None:
    """Keep every bitsandbytes 4-bit layer of ``model`` on the dequantize-and-matmul path.

    bitsandbytes 0.50, measured on an AVX512-BF16 CPU: a Linear4bit's first eval-mode forward (the first
    validation pass) repacks its weights for an inference kernel and never unpacks them. Training forwards
    after it run that kernel, which has no backward (no gradient reaches the layers below), gives other
    outputs, and adds a bias in place (a RuntimeError for any model with biases: Qwen2, attention_bias); the
    repacked weight is also no longer what ``dequantize_4bit`` reads.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def loftq_init(peft_model: Any, base: Path, adapter: str = "default") -> dict[str, float]:
    """Start every 4-bit LoRA layer of ``peft_model`` at the best rank-r approximation of what the 4-bit
    rounding lost: one alternating step of LoftQ (Li et al. 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization
    for Large Language Models"), with the base left as the loader quantized it.

    For each layer, ``W - dequant(Q)`` (the original weight from ``base``'s safetensors minus the 4-bit
    weight) is factored by SVD and its top ``r`` directions split evenly between B and A, divided by the
    adapter's scaling so that ``scaling * B @ A`` is that approximation. Returns the Frobenius norm of the
    rounding error over all layers before and after (``error_before``, ``error_after``) and the layer count.

    Written here rather than calling peft's ``replace_lora_weights_loftq``: peft 0.21 computes on a
    hard-coded CUDA (or XPU) device, and this tool's QLoRA path must run on a CPU too.
    """
    import math
    from contextlib import ExitStack

    import bitsandbytes.functional as bnbf
    import torch
    from peft.tuners.lora.bnb import Linear4bit
    from safetensors import safe_open

    from edgesft.errors import EdgesftError

    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise EdgesftError(f"train.lora.init: loftq needs the base model's safetensors in {base}")
    prefix = "base_model.model."
    before = after = 0.0
    layers = 0
    with ExitStack() as stack, torch.no_grad():
        # each file opened once, its tensors read lazily by name
        where = {}
        for f in files:
            sf = stack.enter_context(safe_open(f, framework="pt"))
            where.update({k: sf for k in sf.keys()})  # noqa: SIM118 - safe_open is not a mapping
        for name, module in peft_model.named_modules():
            if not isinstance(module, Linear4bit) or adapter not in module.lora_A:
                continue
            key = name.removeprefix(prefix) + ".weight"
            if key not in where:
                raise EdgesftError(f"train.lora.init: loftq found no {key} in {base}'s safetensors")
            original = where[key].get_tensor(key).to(torch.float32)
            packed = module.get_base_layer().weight
            if getattr(packed.quant_state, "packing_format_for_cpu", False):
                raise EdgesftError(
                    f"train.lora.init: {name} was repacked for bitsandbytes' CPU inference kernel by an "
                    "eval-mode forward; call keep_4bit_unpacked before the first forward"
                )
            quantized = bnbf.dequantize_4bit(packed.data, packed.quant_state).to(torch.float32)
            residual = original.to(quantized.device) - quantized
            u, s, vh = torch.linalg.svd(residual, full_matrices=False)
            r, scaling = module.r[adapter], module.scaling[adapter]
            root = s[:r].sqrt()
            b = u[:, :r] * root / math.sqrt(scaling)
            a = root[:, None] * vh[:r] / math.sqrt(scaling)
            lora_a, lora_b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            lora_a.copy_(a.to(lora_a.dtype))
            lora_b.copy_(b.to(lora_b.dtype))
            before += float(residual.pow(2).sum())
            after += float((residual - scaling * b @ a).pow(2).sum())
            layers += 1
    if not layers:
        raise EdgesftError("train.lora.init: loftq found no 4-bit LoRA layer in the model")
    return {"layers": layers, "error_before": math.sqrt(before), "error_after": math.sqrt(after)}
