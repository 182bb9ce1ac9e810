"""Stage ``merge``: the trained adapter(s) folded into plain float weights, ready for pruning and export.

- LoRA/DoRA: peft's ``merge_and_unload`` into the base.
- QLoRA: the adapter learned to correct the nf4-dequantized base, not the original weights, so it is merged
  both ways (into the original-precision base and into the nf4 round-tripped base); both are scored on the
  validation split and the lower loss wins, unless ``merge.qlora_base`` forces one. Both figures go into the
  manifest.
- Fusion: extra adapters (``merge.adapters``) are combined with the trained one by peft's
  ``add_weighted_adapter`` (linear, cat, svd, TIES, DARE, magnitude pruning) before the merge.
- full/freeze/output_layer: the weights already are a plain model; they are passed through (hard links when
  the filesystem allows) and the train stage's figures are carried over, since the bytes are identical.

Outputs: ``model/`` (safetensors + tokenizer), ``tokenizer/``, ``eval_samples.jsonl``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgesft.adapters import round_trip_base
from edgesft.config import Recipe
from edgesft.data import load_rows
from edgesft.errors import EdgesftError
from edgesft.evaluate import loss_and_perplexity
from edgesft.io import link_tree, read_json, sha256_file
from edgesft.models import save_tokenizer
from edgesft.pipeline import StageInputs, StageResult
from edgesft.prune import param_counts
from edgesft.quality import measure

QUALITY_KEYS = ("val_loss", "val_perplexity", "test")


def skip(recipe: Recipe, manifests: dict[str, dict[str, Any]]) -> str | None:
    if recipe.train.method == "prompt_tuning":
        return "a soft prompt cannot be folded into weights; the train stage's adapter is the result"
    return None


def external_inputs(recipe: Recipe) -> dict[str, str]:
    """Extra adapters to fuse are inputs from outside the run: their files' hashes enter the cache key."""
    out = {}
    for i, a in enumerate(recipe.merge.adapters):
        folder = recipe.resolve_path(a.path)
        for f in sorted(folder.glob("*")):
            if f.is_file():
                out[f"fuse:{i}:{f.name}"] = sha256_file(f)
    return out


def merged_model(
    base: Path,
    adapters: list[tuple[Path, float]],
    vocab_size: int,
    qlora: dict[str, Any] | None,
    combination: str = "linear",
    density: float = 0.5,
) -> Any:
    """``base`` (nf4 round-tripped when ``qlora`` is given) with ``adapters`` fused and merged, in float32.

    One adapter is merged as is (its weight must be 1); several are combined first with peft's
    ``add_weighted_adapter``.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    if vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size)
    if qlora is not None:
        round_trip_base(model, qlora["quant_type"], qlora["double_quant"])
    (first, first_weight), rest = adapters[0], adapters[1:]
    peft_model: Any = PeftModel.from_pretrained(model, first, adapter_name="a0")
    if not rest and first_weight == 1.0:
        return peft_model.merge_and_unload().eval()
    names = ["a0"]
    for i, (path, _) in enumerate(rest, start=1):
        peft_model.load_adapter(path, adapter_name=f"a{i}")
        names.append(f"a{i}")
    kwargs: dict[str, Any] = {}
    if combination in ("ties", "dare_linear", "dare_ties", "magnitude_prune"):
        kwargs["density"] = density
    try:
        peft_model.add_weighted_adapter(
            names, [w for _, w in adapters], "fused", combination_type=combination, **kwargs
        )
    except ValueError as e:  # e.g. linear combination of adapters with different ranks
        raise EdgesftError(f"merge.combination: {combination}: {e}") from None
    peft_model.set_adapter("fused")
    return peft_model.merge_and_unload(adapter_names=["fused"]).eval()


def run(recipe: Recipe, inputs: StageInputs, out_dir: Path) -> StageResult:
    import torch
    from transformers import AutoTokenizer

    m = recipe.merge
    info = inputs.info("train")
    train_dir = inputs.stage_dir("train")
    data_dir = inputs.stage_dir("data")
    train_metrics = inputs.upstream["train"].get("metrics", {})
    tok = AutoTokenizer.from_pretrained(train_dir / "tokenizer")
    out_info = {"model": "model", "tokenizer": "tokenizer", "dtype": m.dtype, "source_stage": "train"}

    if info["kind"] == "model":
        src = train_dir / "model"
        if m.dtype == "float32" and _is_float32(src):
            link_tree(src, out_dir / "model")
            link_tree(train_dir / "tokenizer", out_dir / "tokenizer")
            metrics: dict[str, Any] = {"merge": "pass-through", "measured_in": "train (identical weights)"}
            metrics.update({k: train_metrics[k] for k in QUALITY_KEYS if k in train_metrics})
            metrics.update({k: v for k, v in train_metrics.items() if k.startswith("params_")})
            metrics.pop("params_trainable", None)
            if (train_dir / "eval_samples.jsonl").is_file():
                shutil.copy2(train_dir / "eval_samples.jsonl", out_dir / "eval_samples.jsonl")
            return StageResult(metrics=metrics, info=out_info)
        from transformers import AutoModelForCausalLM

        model: Any = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, use_safetensors=True)
        metrics = {"merge": "pass-through (cast)"}
    else:
        adapters = [(train_dir / info["adapter"], m.train_weight)]
        adapters += [(recipe.resolve_path(a.path), a.weight) for a in m.adapters]
        base = Path(info["base_model"])
        qlora = info.get("qlora")
        choices = ["original", "nf4"] if m.qlora_base == "auto" else [m.qlora_base]
        if qlora is None:
            choices = ["original"]
        elif qlora.get("init") == "loftq":
            choices = ["nf4"]  # the adapter starts at W - Q: on the original weights it would count twice
        val_rows = load_rows(data_dir / "val.jsonl")
        if len(choices) > 1 and not val_rows:
            raise EdgesftError("merge.qlora_base: auto needs a validation split; set original or nf4")
        metrics = {"merge": "fused" if m.adapters else "adapter", "adapters": len(adapters)}
        if m.adapters:
            metrics["combination"] = m.combination
        scored: dict[str, float] = {}
        model = None
        for choice in choices:
            print(f"  merging into the {choice} base")
            candidate = merged_model(
                base, adapters, len(tok), qlora if choice == "nf4" else None, m.combination, m.density
            )
            if len(choices) > 1:
                scored[choice] = loss_and_perplexity(candidate, tok, val_rows, recipe.data.max_length)["loss"]
                print(f"  {choice} base: validation loss {scored[choice]:.4f}")
                if model is not None and scored[choice] >= scored[metrics["qlora_base"]]:
                    continue  # the earlier base scored at least as well
            model = candidate
            metrics["qlora_base"] = choice if qlora is not None else None
        if scored:
            metrics["qlora_val_loss"] = scored
            metrics["as_trained_val_loss"] = train_metrics.get("val_loss")
    if m.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(out_dir / "model", safe_serialization=True)
    save_tokenizer(tok, out_dir / "model", train_dir / "tokenizer")
    save_tokenizer(tok, out_dir / "tokenizer", train_dir / "tokenizer")
    metrics.update(param_counts(model))
    metrics.update(measure(recipe, model, tok, data_dir, out_dir, label="merged model"))
    return StageResult(metrics=metrics, info=out_info)


def _is_float32(folder: Path) -> bool:
    cfg = read_json(folder / "config.json")
    dtype = (cfg or {}).get("torch_dtype") or (cfg or {}).get("dtype")
    return dtype in (None, "float32")
