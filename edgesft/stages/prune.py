"""Stage ``prune``: structured pruning of the merged model, then a short healing fine-tune.

Only whole blocks, MLP neurons, KV groups and hidden channels are removed, the same amount in every layer, so the result is a
smaller dense model with one layer shape: llama.cpp and onnxruntime run it faster, and the GGUF/ONNX
exporters (which assume a uniform layer config) accept it. Importance is measured on calibration rows from the
training split (:mod:`edgesft.prune`). Healing runs the shared training loop (:func:`edgesft.training.fit`):
distillation from the unpruned model (KL on answer-position logits) mixed with the SFT loss, or SFT alone,
with validation, early stopping and exact checkpoint resume; with ``prune.heal.qat`` the healing forward pass
sees the weights as one export format rounds them (:mod:`edgesft.qat`).

Outputs: ``model/`` (safetensors + tokenizer), ``tokenizer/``, ``heal_loss_curve.json``,
``eval_samples.jsonl``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from edgesft.config import Recipe
from edgesft.data import Row, load_rows
from edgesft.evaluate import loss_and_perplexity
from edgesft.io import atomic_write_json
from edgesft.machine import peak_memory_mb, set_threads
from edgesft.models import save_tokenizer
from edgesft.pipeline import StageInputs, StageResult, last_model_stage
from edgesft.prune import param_counts
from edgesft.qat import FakeQuant, plan
from edgesft.quality import measure
from edgesft.training import (
    Distillation,
    LoopSettings,
    calibration_batches,
    encode_rows,
    fit,
    freeze_below,
    lora_config,
    loss_curve,
)


def skip(recipe: Recipe, manifests: dict[str, dict[str, Any]]) -> str | None:
    return None if recipe.prune.enabled else "prune.enabled is false"


def apply_plan(
    model: Any, recipe: Recipe, batches: list[dict[str, Any]], plan: dict[str, Any]
) -> dict[str, Any]:
    """Prune ``model`` in place as ``plan`` says; importance is measured on the model as pruned so far."""
    from edgesft import prune as surgery

    p = recipe.prune
    record: dict[str, Any] = {}
    if plan["layers_removed"]:
        removed, scores = surgery.choose_layers(p.depth.method, model, batches, plan["layers_removed"])
        surgery.remove_layers(model, removed)
        record.update(removed_layers=removed, layer_scores=[round(float(x), 5) for x in scores])
    if plan["kv_groups_removed"]:
        importance = surgery.head_group_importance(model, batches)
        keep = model.config.num_key_value_heads - plan["kv_groups_removed"]
        surgery.prune_kv_groups(model, keep, importance)
        record["kv_group_importance"] = [[round(float(x), 5) for x in layer] for layer in importance]
    if plan["intermediate_size"] < model.config.intermediate_size:
        importance = surgery.mlp_importance(model, batches)
        surgery.prune_mlp(model, plan["intermediate_size"], importance)
    if plan["hidden_size"] < model.config.hidden_size:
        hidden = surgery.hidden_importance(model, batches)
        surgery.prune_hidden(model, plan["hidden_size"], hidden)
        record["hidden_importance"] = [round(float(x), 5) for x in hidden.scores]
    return record


def heal(
    recipe: Recipe,
    model: Any,
    tok: Any,
    teacher_dir: Path,
    train_rows: list[Row],
    val_rows: list[Row],
    work_dir: Path,
    out_dir: Path,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune the pruned ``model`` as ``prune.heal`` says; return it (LoRA merged) and the loop figures."""
    import torch
    from transformers import AutoModelForCausalLM

    h, t, d = recipe.prune.heal, recipe.train, recipe.data
    settings = LoopSettings(
        learning_rate=h.learning_rate,
        lr_scheduler=h.lr_scheduler,
        warmup_ratio=h.warmup_ratio,
        batch_size=h.batch_size,
        grad_accum=1,
        epochs=1.0,  # max_steps decides
        max_steps=h.max_steps,
        eval_steps=h.eval_steps,
        save_steps=None,  # a checkpoint at every evaluation
        early_stopping_patience=h.early_stopping_patience,
        early_stopping_threshold=0.0,
        logging_steps=min(10, h.eval_steps),
        # the optimizer and numerics of the train stage
        optimizer=t.optimizer,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        dtype=t.dtype,
        gradient_checkpointing=False,
        tensorboard=False,
    )
    if h.params == "freeze":
        freeze_below(model, h.trainable_layers, "prune.heal.trainable_layers")
    elif h.params == "lora":
        from peft import get_peft_model

        c = h.lora
        model = get_peft_model(model, lora_config(c, False, []))
    else:
        for p in model.parameters():
            p.requires_grad = True
    distill = None
    if h.method == "distill":
        teacher: Any = AutoModelForCausalLM.from_pretrained(
            teacher_dir, dtype=torch.float32, use_safetensors=True
        )
        teacher.eval().requires_grad_(False)
        distill = Distillation(teacher, h.temperature, h.alpha)
    train_ds = encode_rows(train_rows, tok, d.max_length, d.train_on_prompt, d.packing)
    val_ds = encode_rows(val_rows, tok, d.max_length, d.train_on_prompt, False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    qat = fake_quant(recipe, model, tok, train_rows) if h.qat.format != "none" else None
    fitted = fit(
        settings,
        model,
        tok,
        train_ds,
        val_ds,
        work_dir,
        out_dir,
        recipe.seed,
        not d.packing,
        distill,
        before_step=qat.on_step if qat else None,
    )
    atomic_write_json(out_dir / "heal_loss_curve.json", loss_curve(fitted.state))
    model = fitted.model
    extra: dict[str, Any] = {}
    if qat is not None:
        # the weights go onto the format's grid: what is saved, measured and exported is the model healing
        # optimised (the float weights behind the fake quantization measured 6 points of exact-match lower on
        # the phone recipe: 48.5% against 54.8% tuned)
        snapped = qat.snap()
        qat.detach()
        extra["qat"] = {"format": h.qat.format, "snapped_tensors": snapped, **qat.summary()}
    if h.params == "lora":
        model = model.merge_and_unload()
    model.eval()
    return model, {
        "method": h.method,
        "params": h.params,
        "params_trainable": trainable,
        **fitted.metrics,
        **extra,
    }


def fake_quant(recipe: Recipe, model: Any, tok: Any, train_rows: list[Row]) -> FakeQuant:
    """Quantization-aware healing as ``prune.heal.qat`` says, attached to ``model``: the importance matrix
    is measured on the training rows the gguf stage takes for its own (the same seed and count) in batches of
    8 as there, and the rounding is refreshed at every evaluation (the healing loop's checkpoints)."""
    h = recipe.prune.heal
    q = h.qat
    n = q.importance_rows if q.format != "int4" else None
    uses = plan(
        model, q.format, n is not None, q.block_size, q.symmetric, q.quantize_embedding, q.output_type
    )
    batches: list[dict[str, Any]] = []
    if n is not None:
        rows = random.Random(recipe.seed).sample(train_rows, min(n, len(train_rows)))
        batches = calibration_batches(tok, rows, recipe.data.max_length, batch_size=8)
    qat = FakeQuant(model, uses, batches, h.eval_steps, q.block_size, q.symmetric)
    t0 = time.perf_counter()
    qat.attach()
    print(
        f"  qat {q.format}: {len(uses)} weight reads fake-quantized, first search {time.perf_counter() - t0:.1f}s"
    )
    return qat


def run(recipe: Recipe, inputs: StageInputs, out_dir: Path) -> StageResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    p, d = recipe.prune, recipe.data
    source = last_model_stage(inputs.upstream)
    src = inputs.stage_dir(source) / inputs.info(source)["model"]
    data_dir = inputs.stage_dir("data")
    threads = set_threads(recipe.train.threads)
    set_seed(recipe.seed)
    tok = AutoTokenizer.from_pretrained(src)
    model: Any = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, use_safetensors=True)
    before = param_counts(model)
    train_rows, val_rows = load_rows(data_dir / "train.jsonl"), load_rows(data_dir / "val.jsonl")
    calib = random.Random(recipe.seed).sample(train_rows, min(p.calibration_rows, len(train_rows)))
    batches = calibration_batches(tok, calib, d.max_length)

    plan = pruning_plan(model.config, p)
    t0 = time.perf_counter()
    record = apply_plan(model, recipe, batches, plan)
    prune_s = time.perf_counter() - t0
    after = param_counts(model)
    print(
        f"  pruned {before['params_non_embedding']:,} -> {after['params_non_embedding']:,} non-embedding "
        f"parameters ({plan['removed_fraction']:.1%} removed) in {prune_s:.1f}s"
    )
    metrics: dict[str, Any] = {
        "plan": plan,
        **record,
        "params_before": before,
        **after,
        "removed_fraction": round(1 - after["params_non_embedding"] / before["params_non_embedding"], 4),
        "prune_seconds": round(prune_s, 2),
        "threads": threads,
    }
    if val_rows:
        unhealed = loss_and_perplexity(model, tok, val_rows, d.max_length)
        metrics.update(unhealed_val_loss=unhealed["loss"], unhealed_val_perplexity=unhealed["perplexity"])
        print(f"  unhealed validation loss {unhealed['loss']:.4f}")
    if p.heal.method != "none":
        model, metrics["heal"] = heal(recipe, model, tok, src, train_rows, val_rows, inputs.work_dir, out_dir)
    model.save_pretrained(out_dir / "model", safe_serialization=True)
    save_tokenizer(tok, out_dir / "model", src)
    save_tokenizer(tok, out_dir / "tokenizer", src)
    metrics.update(measure(recipe, model, tok, data_dir, out_dir, val_rows, "pruned model"))
    metrics["peak_memory_mb"] = peak_memory_mb()
    return StageResult(
        metrics=metrics,
        info={"model": "model", "tokenizer": "tokenizer", "dtype": "float32", "source_stage": source},
    )


def pruning_plan(config: Any, p: Any) -> Any:
    """What the ``prune`` section ``p`` removes from a model with this config."""
    from edgesft import prune as surgery

    return surgery.plan_pruning(
        config,
        target_fraction=p.target_fraction,
        target_params=p.target_params,
        depth_layers=p.depth.layers,
        depth=p.depth.method != "none",
        mlp=p.width.mlp,
        kv_groups=p.width.kv_groups,
        multiple=p.width.multiple,
        hidden_size=p.width.hidden_size,
    )
