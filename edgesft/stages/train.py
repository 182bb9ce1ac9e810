"""Stage ``train``: supervised fine-tuning.

The stage builds the model for ``train.method`` (:data:`METHODS`: which weights train, a 4-bit base or an
adapter) and hands it to the shared training loop, :func:`edgesft.training.fit` (the transformers Trainer;
a killed run resumes from its last checkpoint to the same weights). TRL's SFTTrainer was not needed: masking
and EOS handling live in :func:`edgesft.chat.encode_conversation`, shared with evaluation. The method
builders stay here because they read ``train.*`` and only this stage builds models from a base.

Outputs: ``adapter/`` (PEFT) or ``model/`` (full weights), ``tokenizer/``, ``loss_curve.json``,
``eval_samples.jsonl`` (test predictions) and the figures in the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgesft.config import Recipe, TrainConfig
from edgesft.data import Row, load_rows
from edgesft.errors import EdgesftError
from edgesft.evaluate import load_model, loss_and_perplexity, task_metrics
from edgesft.io import atomic_write_json, read_json, sha256_json
from edgesft.machine import peak_memory_mb, set_threads
from edgesft.models import cache_root, save_tokenizer
from edgesft.pipeline import StageInputs, StageResult, code_identity, is_main, library_identity, world
from edgesft.prune import param_counts
from edgesft.quality import decoding_schema, measure, test_rows
from edgesft.training import (
    LoopSettings,
    encode_rows,
    final_norm,
    fit,
    freeze_below,
    lora_config,
    loss_curve,
    pick_dtype,
)

# --------------------------------------------------------------------------------------------------------
# Training methods: name -> builder(base_path, tokenizer, cfg, dtype) -> (model, artifact kind)


def _lora(cfg: TrainConfig, use_dora: bool, new_token_ids: list[int]) -> Any:
    return lora_config(cfg.lora, use_dora, new_token_ids)


def _load_base(base: Path, tok: Any, quant: Any = None) -> tuple[Any, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32, "use_safetensors": True}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": _device()}
    model: Any = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    old = model.get_input_embeddings().weight.shape[0]
    new_ids: list[int] = []
    if len(tok) > old:
        model.resize_token_embeddings(len(tok))
        new_ids = list(range(old, len(tok)))
    model.config.pad_token_id = tok.pad_token_id
    return model, new_ids


def _device() -> Any:
    import torch

    if torch.cuda.is_available():
        return int(os.environ.get("LOCAL_RANK", "0"))
    return "cpu"


def build_qlora(base: Path, tok: Any, cfg: TrainConfig, dtype: str) -> tuple[Any, str]:
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.qlora.quant_type,
        bnb_4bit_use_double_quant=cfg.qlora.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, dtype),
    )
    from edgesft.adapters import keep_4bit_unpacked

    model, new_ids = _load_base(base, tok, quant)
    keep_4bit_unpacked(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    model = get_peft_model(model, _lora(cfg, False, new_ids))
    if cfg.lora.init == "loftq":
        from edgesft.adapters import loftq_init

        e = loftq_init(model, base)
        print(
            f"  loftq: {e['layers']} layers start at the rank-{cfg.lora.r} part of the 4-bit rounding error "
            f"(Frobenius norm {e['error_before']:.3f} -> {e['error_after']:.3f})"
        )
    return model, "adapter"


def _build_lora(use_dora: bool) -> Callable[[Path, Any, TrainConfig, str], tuple[Any, str]]:
    def build(base: Path, tok: Any, cfg: TrainConfig, dtype: str) -> tuple[Any, str]:
        from peft import get_peft_model

        model, new_ids = _load_base(base, tok)
        return get_peft_model(model, _lora(cfg, use_dora, new_ids)), "adapter"

    return build


def build_full(base: Path, tok: Any, cfg: TrainConfig, dtype: str) -> tuple[Any, str]:
    model, _ = _load_base(base, tok)
    return model, "model"


def build_freeze(base: Path, tok: Any, cfg: TrainConfig, dtype: str) -> tuple[Any, str]:
    model, _ = _load_base(base, tok)
    freeze_below(model, cfg.trainable_layers, "train.trainable_layers")
    return model, "model"


def build_output_layer(base: Path, tok: Any, cfg: TrainConfig, dtype: str) -> tuple[Any, str]:
    """LM head and final norm only. With tied embeddings the head *is* the embedding matrix, so the input
    embeddings change too; the model stays tied so exporters see the usual single matrix."""
    model, _ = _load_base(base, tok)
    for p in model.parameters():
        p.requires_grad = False
    for p in model.get_output_embeddings().parameters():
        p.requires_grad = True
    for p in final_norm(model).parameters():
        p.requires_grad = True
    return model, "model"


def build_prompt_tuning(base: Path, tok: Any, cfg: TrainConfig, dtype: str) -> tuple[Any, str]:
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    model, _ = _load_base(base, tok)
    pt = cfg.prompt_tuning
    kwargs: dict[str, Any] = {"task_type": TaskType.CAUSAL_LM, "num_virtual_tokens": pt.num_virtual_tokens}
    if pt.init_text:
        kwargs.update(
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=pt.init_text,
            tokenizer_name_or_path=str(base),
        )
    return get_peft_model(model, PromptTuningConfig(**kwargs)), "adapter"


METHODS: dict[str, Callable[[Path, Any, TrainConfig, str], tuple[Any, str]]] = {
    "qlora": build_qlora,
    "lora": _build_lora(False),
    "dora": _build_lora(True),
    "full": build_full,
    "freeze": build_freeze,
    "prompt_tuning": build_prompt_tuning,
    "output_layer": build_output_layer,
}


# --------------------------------------------------------------------------------------------------------
# The stage


def loop_settings(cfg: TrainConfig) -> LoopSettings:
    """``train.*`` as the training loop's settings."""
    return LoopSettings(
        learning_rate=cfg.learning_rate,
        lr_scheduler=cfg.lr_scheduler,
        warmup_ratio=cfg.warmup_ratio,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        eval_steps=cfg.eval_steps,
        save_steps=cfg.save_steps,
        early_stopping_patience=cfg.early_stopping_patience,
        early_stopping_threshold=cfg.early_stopping_threshold,
        logging_steps=cfg.logging_steps,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        dtype=cfg.dtype,
        # QLoRA's prepare_model_for_kbit_training sets up its own checkpointing (see build_qlora)
        gradient_checkpointing=cfg.gradient_checkpointing and cfg.method != "qlora",
        tensorboard=cfg.tensorboard,
    )


def run(recipe: Recipe, inputs: StageInputs, out_dir: Path) -> StageResult:
    import torch
    from transformers import AutoTokenizer, set_seed

    cfg, dcfg = recipe.train, recipe.data
    data_dir = inputs.stage_dir("data")
    base = Path(inputs.info("data")["base_model"])
    # every rank of a launch on this machine trains at once: each takes its share of the cores
    threads = set_threads(cfg.threads, processes=int(os.environ.get("LOCAL_WORLD_SIZE") or world()[1]))
    dtype = pick_dtype(cfg.dtype)
    set_seed(recipe.seed)
    tok = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    train_rows, val_rows = load_rows(data_dir / "train.jsonl"), load_rows(data_dir / "val.jsonl")
    train_ds = encode_rows(train_rows, tok, dcfg.max_length, dcfg.train_on_prompt, dcfg.packing)
    val_ds = encode_rows(val_rows, tok, dcfg.max_length, dcfg.train_on_prompt, False)

    model, kind = METHODS[cfg.method](base, tok, cfg, dtype)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    fitted = fit(
        loop_settings(cfg),
        model,
        tok,
        train_ds,
        val_ds,
        inputs.work_dir,
        out_dir,
        recipe.seed,
        not dcfg.packing,
    )
    if not is_main():
        return StageResult()
    checksums = fitted.checksums
    if checksums and len(set(checksums)) > 1:
        raise EdgesftError(f"train: DDP ranks ended with different weights (checksums {checksums})")

    model = fitted.model
    if kind == "adapter":
        model.save_pretrained(out_dir / "adapter", safe_serialization=True)
    else:
        model.save_pretrained(out_dir / "model", safe_serialization=True)
    save_tokenizer(tok, out_dir / "tokenizer", data_dir / "tokenizer")
    if kind == "model":
        save_tokenizer(tok, out_dir / "model", data_dir / "tokenizer")
    atomic_write_json(out_dir / "loss_curve.json", loss_curve(fitted.state))
    metrics: dict[str, Any] = {
        "method": cfg.method,
        "threads": threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "world_size": world()[1],
        "params_trainable": trainable,
        **fitted.metrics,
        "peak_memory_mb": peak_memory_mb(),
    }
    metrics["params_total"] = total
    if kind == "model":
        metrics.update(param_counts(model))
    if checksums:
        metrics["rank_param_checksums"] = checksums
    metrics.update(measure(recipe, model, tok, data_dir, out_dir, val_rows, "tuned model"))
    if recipe.eval.evaluate_base:
        metrics["base"] = _base_quality(recipe, inputs, tok, base, val_rows, test_rows(recipe, data_dir))
    return StageResult(
        metrics=metrics,
        info={
            "kind": kind,
            "method": cfg.method,
            "base_model": str(base),
            "base_identity": inputs.info("data")["base_identity"],
            "adapter": "adapter" if kind == "adapter" else None,
            "model": "model" if kind == "model" else None,
            "tokenizer": "tokenizer",
            "qlora": qlora_settings(cfg),
            "dtype": dtype,
        },
    )


def qlora_settings(cfg: TrainConfig) -> dict[str, Any] | None:
    """The 4-bit settings a QLoRA adapter was trained against (None for other methods)."""
    return {**cfg.qlora.model_dump(), "init": cfg.lora.init} if cfg.method == "qlora" else None


def _base_quality(
    recipe: Recipe, inputs: StageInputs, tok: Any, base: Path, val_rows: list[Row], test_rows: list[Row]
) -> dict[str, Any]:
    """The untuned base model's figures, cached across runs (they only change with model, data or template)."""
    e = recipe.eval
    schema = decoding_schema(recipe, inputs.stage_dir("data"))
    key = sha256_json(
        {
            "base": inputs.info("data")["base_identity"],
            "template": tok.chat_template,
            "val": [r.messages for r in val_rows],
            "test": [r.messages for r in test_rows],
            "eval": e.model_dump(),
            "schema": schema,
            "max_length": recipe.data.max_length,
            # the figures are the evaluation code's and the libraries' as much as the model's
            "code": code_identity("edgesft.evaluate"),
            "libraries": library_identity(),
        }
    )
    cache = cache_root() / "evals" / f"{key}.json"
    cached = read_json(cache)
    if isinstance(cached, dict):
        return cached
    print(f"  evaluating the untuned base model (cached afterwards in {cache.parent})")
    model = load_model(base, vocab_size=len(tok))
    out: dict[str, Any] = {}
    if val_rows:
        v = loss_and_perplexity(model, tok, val_rows, recipe.data.max_length)
        out.update(val_loss=v["loss"], val_perplexity=v["perplexity"])
    if test_rows:
        out["test"], _ = task_metrics(
            model, tok, test_rows, e.task, e.max_new_tokens, e.batch_size, schema=schema
        )
    atomic_write_json(cache, out)
    return out
