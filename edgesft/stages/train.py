"""Stage ``train``: supervised fine-tuning with the transformers Trainer.

The Trainer is used rather than a hand-written loop because it already does what this stage needs and is
well kept: checkpoint/resume with RNG state and data-order replay, gradient accumulation, mixed precision on
CPU and GPU, DDP through accelerate, early stopping. TRL's SFTTrainer was not needed: masking and EOS
handling live in :func:`edgesft.chat.encode_conversation`, shared with evaluation.

Outputs: ``adapter/`` (PEFT) or ``model/`` (full weights), ``tokenizer/``, ``loss_curve.json``,
``eval_samples.jsonl`` (test predictions) and the figures in the manifest.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesft.chat import encode_conversation
from edgesft.config import Recipe, TrainConfig
from edgesft.data import Row, load_rows
from edgesft.errors import EdgesftError
from edgesft.evaluate import load_model, loss_and_perplexity, task_metrics
from edgesft.io import atomic_write_json, read_json, sha256_json
from edgesft.models import cache_root, save_tokenizer
from edgesft.pipeline import StageInputs, StageResult, is_main, world
from edgesft.quality import measure, param_counts, test_rows

FAULT_ENV = "EDGESFT_FAULT_AFTER_STEP"  # tests: crash right after the checkpoint of this step is saved


# --------------------------------------------------------------------------------------------------------
# Devices and dtypes


def pick_dtype(requested: str) -> str:
    """The compute dtype to use: ``auto`` becomes bfloat16 where the hardware supports it."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    try:
        return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
    except (AttributeError, RuntimeError):
        return "float32"


def set_threads(threads: int | None) -> int:
    import torch

    _, size = world()
    n = threads or max(1, (os.cpu_count() or 1) // size)
    torch.set_num_threads(n)
    return n


# --------------------------------------------------------------------------------------------------------
# Training methods: name -> builder(base_path, tokenizer, cfg, dtype) -> (model, artifact kind)


def lora_config(cfg: TrainConfig, use_dora: bool, new_token_ids: list[int]) -> Any:
    from peft import LoraConfig, TaskType

    extra: dict[str, Any] = {}
    if new_token_ids:
        extra["trainable_token_indices"] = {"embed_tokens": new_token_ids}
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        use_dora=use_dora,
        **extra,
    )


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
    model, new_ids = _load_base(base, tok, quant)
    # bitsandbytes 0.50, measured on an AVX512-BF16 CPU: a Linear4bit's first eval-mode forward (the first
    # validation pass) repacks its weights for an inference kernel and never unpacks them. Training forwards
    # after it run that kernel, which has no backward (no gradient reaches the layers below), gives other
    # outputs, and adds a bias in place (a RuntimeError for any model with biases: Qwen2, attention_bias).
    # Every layer stays on the dequantize-and-matmul path instead.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return get_peft_model(model, lora_config(cfg, False, new_ids)), "adapter"


def _build_lora(use_dora: bool) -> Callable[[Path, Any, TrainConfig, str], tuple[Any, str]]:
    def build(base: Path, tok: Any, cfg: TrainConfig, dtype: str) -> tuple[Any, str]:
        from peft import get_peft_model

        model, new_ids = _load_base(base, tok)
        return get_peft_model(model, lora_config(cfg, use_dora, new_ids)), "adapter"

    return build


def build_full(base: Path, tok: Any, cfg: TrainConfig, dtype: str) -> tuple[Any, str]:
    model, _ = _load_base(base, tok)
    return model, "model"


def build_freeze(base: Path, tok: Any, cfg: TrainConfig, dtype: str) -> tuple[Any, str]:
    model, _ = _load_base(base, tok)
    freeze_below(model, cfg.trainable_layers, "train.trainable_layers")
    return model, "model"


def freeze_below(model: Any, trainable_layers: int, field: str) -> None:
    """Only the top ``trainable_layers`` decoder blocks and the final norm keep gradients."""
    layers = _decoder_layers(model)
    if trainable_layers > len(layers):
        raise EdgesftError(f"{field}: {trainable_layers} exceeds the model's {len(layers)} decoder blocks")
    for p in model.parameters():
        p.requires_grad = False
    for layer in layers[-trainable_layers:]:
        for p in layer.parameters():
            p.requires_grad = True
    for p in _final_norm(model).parameters():
        p.requires_grad = True


def build_output_layer(base: Path, tok: Any, cfg: TrainConfig, dtype: str) -> tuple[Any, str]:
    """LM head and final norm only. With tied embeddings the head *is* the embedding matrix, so the input
    embeddings change too; the model stays tied so exporters see the usual single matrix."""
    model, _ = _load_base(base, tok)
    for p in model.parameters():
        p.requires_grad = False
    for p in model.get_output_embeddings().parameters():
        p.requires_grad = True
    for p in _final_norm(model).parameters():
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


def _decoder_layers(model: Any) -> Any:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise EdgesftError("train.method: this architecture has no model.layers; use lora/full instead")
    return layers


def _final_norm(model: Any) -> Any:
    norm = getattr(getattr(model, "model", None), "norm", None)
    if norm is None:
        raise EdgesftError("train.method: this architecture has no model.norm; use lora/full instead")
    return norm


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
# Data


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_rows(
    rows: list[Row], tok: Any, max_length: int, train_on_prompt: bool, packing: bool
) -> list[dict[str, Any]]:
    """Tokenize (and optionally pack) rows; rows the data stage kept always fit after truncation."""
    examples = []
    for r in rows:
        ids, labels = encode_conversation(tok, r.messages, train_on_prompt)
        examples.append(Encoded(ids[:max_length], labels[:max_length]))
    if packing:
        packed: list[Encoded] = []
        cur = Encoded([], [])
        for ex in examples:
            if cur.input_ids and len(cur.input_ids) + len(ex.input_ids) > max_length:
                packed.append(cur)
                cur = Encoded([], [])
            cur.input_ids += ex.input_ids
            cur.labels += ex.labels
        if cur.input_ids:
            packed.append(cur)
        examples = packed
    return [{"input_ids": e.input_ids, "labels": e.labels, "length": len(e.input_ids)} for e in examples]


class Collator:
    """Right-pads a batch; padding carries no loss."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# --------------------------------------------------------------------------------------------------------
# Callbacks


def _callbacks() -> list[Any]:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """tqdm bar with loss, tokens/s and ETA (replaces the Trainer's own bar)."""

        def __init__(self) -> None:
            self.bar: Any = None
            self.t0 = 0.0
            self.tokens0 = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step")
                self.t0, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if self.bar is None or not logs:
                return
            dt = max(time.perf_counter() - self.t0, 1e-9)
            post = {"tok/s": f"{(state.num_input_tokens_seen - self.tokens0) * world()[1] / dt:.0f}"}
            if "loss" in logs:
                post["loss"] = f"{logs['loss']:.4f}"
            if "eval_loss" in logs:
                post["val"] = f"{logs['eval_loss']:.4f}"
            self.bar.set_postfix(post)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.close()

    class Fault(TrainerCallback):
        """Fault injection for the resume tests: exit hard once the checkpoint of step N is on disk."""

        def __init__(self, step: int) -> None:
            self.step = step

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step >= self.step:
                os._exit(137)

    out: list[Any] = [Progress()]
    if os.environ.get(FAULT_ENV):
        out.append(Fault(int(os.environ[FAULT_ENV])))
    return out


@dataclass
class Distillation:
    """Knowledge distillation from a frozen teacher: ``alpha`` x KL(teacher || student) at ``temperature``
    (scaled by T^2 so gradients keep their size) + (1 - alpha) x the SFT loss, on answer positions."""

    teacher: Any
    temperature: float = 2.0
    alpha: float = 0.5


def make_trainer_class(distill: Distillation | None = None) -> type:
    """Trainer whose loss computes LM-head logits only where a label is set.

    On SFT data most positions are prompt tokens that carry no loss, yet the stock causal-LM forward
    projects every position onto the full vocabulary (49k for SmolLM2) and upcasts those logits to fp32.
    Projecting only the answer positions measured ~1.25x faster steps on a 2-core CPU (bench/train_speed.py).
    Used for a single process with a Llama-style model (``model.model`` + ``lm_head``); under DDP the wrapped
    forward must run so that gradient-sync hooks fire, and other models keep the stock forward.

    With ``distill``, training steps add the KL term against the teacher's logits at the same positions;
    validation stays the plain SFT loss so that it compares with the train stage's.
    """
    import torch
    from transformers import Trainer

    class SelectiveLogitsTrainer(Trainer):
        def compute_loss(  # type: ignore[override]
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            lm = model.get_base_model() if hasattr(model, "get_base_model") else model
            body: Any = getattr(lm, "model", None)
            head: Any = getattr(lm, "lm_head", None)
            peft_cfg: Any = getattr(model, "peft_config", {}).get("default")
            stock = (
                return_outputs
                or world()[1] > 1
                or body is None
                or head is None
                or (peft_cfg is not None and peft_cfg.is_prompt_learning)
                or model is not self.model  # wrapped (DDP/DataParallel): keep its forward and hooks
            )
            if stock:
                if distill is not None:
                    raise EdgesftError("distillation needs a single process and a Llama-style model")
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"][:, 1:]
            keep = labels != -100
            dtype = torch.bfloat16 if self.args.bf16 else (torch.float16 if self.args.fp16 else None)
            device = "cuda" if inputs["input_ids"].is_cuda else "cpu"
            with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                hidden = body(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                ).last_hidden_state
                logits = head(hidden[:, :-1][keep]).float()
            loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum")
            if distill is not None and model.training:
                loss = (
                    distill.alpha * self._kl(inputs, keep, logits, dtype, device) + (1 - distill.alpha) * loss
                )
            if num_items_in_batch is not None:
                return loss / num_items_in_batch
            return loss / keep.sum().clamp(min=1)

        def _kl(self, inputs: dict[str, Any], keep: Any, logits: Any, dtype: Any, device: str) -> Any:
            assert distill is not None
            t = distill.temperature
            teacher = distill.teacher
            with (
                torch.no_grad(),
                torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None),
            ):
                t_hidden = teacher.model(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                ).last_hidden_state
                t_logits = teacher.lm_head(t_hidden[:, :-1][keep]).float()
            return (t * t) * torch.nn.functional.kl_div(
                torch.log_softmax(logits / t, dim=-1),
                torch.log_softmax(t_logits / t, dim=-1),
                log_target=True,
                reduction="sum",
            )

        def prediction_step(
            self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
        ) -> Any:
            # Validation needs only the loss: take the same answer-positions-only path as training.
            if not prediction_loss_only:
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

    return SelectiveLogitsTrainer


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (``trainer_state.json`` is written last, so it marks completeness)."""
    if not folder.is_dir():
        return None
    candidates = []
    for d in folder.glob("checkpoint-*"):
        try:
            step = int(d.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if isinstance(read_json(d / "trainer_state.json"), dict):
            candidates.append((step, d))
    return max(candidates)[1] if candidates else None


# --------------------------------------------------------------------------------------------------------
# The stage


@dataclass
class Fitted:
    """A finished training loop: the trained model and the figures of the loop."""

    model: Any
    state: Any
    training_loss: float
    metrics: dict[str, Any]
    checksums: list[str]


def fit(
    cfg: TrainConfig,
    model: Any,
    tok: Any,
    train_ds: list[dict[str, Any]],
    val_ds: list[dict[str, Any]],
    work_dir: Path,
    log_dir: Path,
    seed: int,
    group_by_length: bool = True,
    distill: Distillation | None = None,
) -> Fitted:
    """Run the Trainer over ``train_ds`` with checkpoints in ``work_dir`` (resumed after a kill), validation,
    early stopping and the progress bar; shared by ``train`` and the healing of ``prune``."""
    import torch
    from transformers import EarlyStoppingCallback, TrainingArguments

    dtype = pick_dtype(cfg.dtype)
    has_val = bool(val_ds)
    early = has_val and cfg.early_stopping_patience is not None
    save_steps = cfg.save_steps or cfg.eval_steps
    ckpt_dir = work_dir / "checkpoints"
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler if cfg.lr_scheduler != "constant" else "constant_with_warmup",
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float under 1 is a fraction of the steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm > 0 else 0.0,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        eval_strategy="steps" if has_val else "no",
        eval_steps=cfg.eval_steps,
        eval_on_start=has_val,  # the loss curve starts at the starting model's validation loss
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=cfg.gradient_checkpointing and cfg.method != "qlora",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        optim=cfg.optimizer,
        seed=seed,
        data_seed=seed,
        report_to=[],  # TensorBoard, when asked for, is a callback with its own folder (below)
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        prediction_loss_only=True,
    )
    callbacks = _callbacks()
    if cfg.tensorboard and is_main():
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(log_dir / "tensorboard"))))
    if early:
        callbacks.append(
            EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_threshold)  # type: ignore[arg-type]
        )
    trainer = make_trainer_class(distill)(
        model=model,
        args=args,
        train_dataset=train_ds,  # type: ignore[arg-type]
        eval_dataset=val_ds or None,  # type: ignore[arg-type]
        data_collator=Collator(tok.pad_token_id),
        callbacks=callbacks,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # our bar shows loss and tok/s; raw log dicts are noise
    resume = last_checkpoint(ckpt_dir)
    if resume is not None and is_main():
        print(f"  resuming from {resume.name}")
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_s = time.perf_counter() - t0
    checksums = _rank_checksums(trainer.model)
    state = trainer.state
    tokens = int(state.num_input_tokens_seen)
    resumed_step = int(resume.name.split("-")[1]) if resume else 0
    eval_s = sum(e.get("eval_runtime", 0.0) for e in state.log_history if e.get("step", 0) >= resumed_step)
    resumed_tokens = 0
    if resume is not None:
        resumed_tokens = int((read_json(resume / "trainer_state.json") or {}).get("num_input_tokens_seen", 0))
    curve = loss_curve(state)
    metrics: dict[str, Any] = {
        "dtype": dtype,
        "steps": state.global_step,
        "epochs": round(float(state.epoch or 0), 3),
        "early_stopped": early and state.global_step < state.max_steps,
        "best_step": _best_step(state),
        "train_loss": result.training_loss,
        "final_train_loss": curve["train"][-1]["loss"] if curve["train"] else None,
        "best_val_loss": state.best_metric,
        "train_tokens": tokens,
        "train_seconds": round(train_s, 2),
        "eval_seconds": round(eval_s, 2),
        # Throughput over the optimizer steps only: the validation passes are timed separately.
        "train_tokens_per_s": round((tokens - resumed_tokens) / max(train_s - eval_s, 1e-9), 1),
        "resumed_from_step": resumed_step or None,
    }
    return Fitted(trainer.model, state, result.training_loss, metrics, checksums)


def loss_curve(state: Any) -> dict[str, list[dict[str, float]]]:
    return {
        "train": [{"step": e["step"], "loss": e["loss"]} for e in state.log_history if "loss" in e],
        "val": [{"step": e["step"], "loss": e["eval_loss"]} for e in state.log_history if "eval_loss" in e],
    }


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(recipe: Recipe, inputs: StageInputs, out_dir: Path) -> StageResult:
    import torch
    from transformers import AutoTokenizer, set_seed

    cfg, dcfg = recipe.train, recipe.data
    data_dir = inputs.stage_dir("data")
    base = Path(inputs.info("data")["base_model"])
    threads = set_threads(cfg.threads)
    dtype = pick_dtype(cfg.dtype)
    set_seed(recipe.seed)
    tok = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    train_rows, val_rows = load_rows(data_dir / "train.jsonl"), load_rows(data_dir / "val.jsonl")
    train_ds = encode_rows(train_rows, tok, dcfg.max_length, dcfg.train_on_prompt, dcfg.packing)
    val_ds = encode_rows(val_rows, tok, dcfg.max_length, dcfg.train_on_prompt, False)

    model, kind = METHODS[cfg.method](base, tok, cfg, dtype)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    fitted = fit(cfg, model, tok, train_ds, val_ds, inputs.work_dir, out_dir, recipe.seed, not dcfg.packing)
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
    return cfg.qlora.model_dump() if cfg.method == "qlora" else None


def _rank_checksums(model: Any) -> list[str]:
    """sha256 of each rank's trainable weights after a distributed run (empty for one process)."""
    _, size = world()
    if size <= 1:
        return []
    import hashlib

    import torch.distributed as dist

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, h.hexdigest())
    return [str(g) for g in gathered]


def _best_step(state: Any) -> int | None:
    ckpt = state.best_model_checkpoint
    if not ckpt:
        return None
    try:
        return int(Path(ckpt).name.split("-")[1])
    except (IndexError, ValueError):
        return None


def _base_quality(
    recipe: Recipe, inputs: StageInputs, tok: Any, base: Path, val_rows: list[Row], test_rows: list[Row]
) -> dict[str, Any]:
    """The untuned base model's figures, cached across runs (they only change with model, data or template)."""
    e = recipe.eval
    key = sha256_json(
        {
            "base": inputs.info("data")["base_identity"],
            "template": tok.chat_template,
            "val": [r.messages for r in val_rows],
            "test": [r.messages for r in test_rows],
            "eval": e.model_dump(),
            "max_length": recipe.data.max_length,
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
        out["test"], _ = task_metrics(model, tok, test_rows, e.task, e.max_new_tokens, e.batch_size)
    atomic_write_json(cache, out)
    return out
