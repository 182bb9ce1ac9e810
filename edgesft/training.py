"""The training loop shared by the ``train`` stage and the prune stage's healing: the transformers Trainer
with edgesft's data collation, answer-positions-only loss, optional distillation, checkpoints and exact
resume.

The Trainer is used rather than a hand-written loop because it already does most of what is needed and is
well kept: checkpoints with optimizer, scheduler and RNG state, gradient accumulation, mixed precision on CPU
and GPU, DDP through accelerate, early stopping. Where it does not resume exactly, :func:`fit` and
:func:`make_trainer_class` close the gap: a run killed at any checkpoint and resumed ends with the same
weights, bit for bit, as one that was never interrupted (``tests/test_train.py`` kills and compares).

Stages flatten their recipe sections into a :class:`LoopSettings`; nothing here reads a recipe.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesft.chat import encode_conversation
from edgesft.data import Row
from edgesft.errors import EdgesftError
from edgesft.io import read_json
from edgesft.pipeline import is_main, world

FAULT_ENV = "EDGESFT_FAULT_AFTER_STEP"  # tests: crash right after the checkpoint of this step is saved


# --------------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """How :func:`fit` trains: every knob of the loop, set explicitly by the calling stage."""

    learning_rate: float
    """Peak learning rate."""
    lr_scheduler: str
    """``cosine``, ``linear`` or ``constant`` after the warmup."""
    warmup_ratio: float
    """Fraction of the steps with linear warmup."""
    batch_size: int
    """Examples per device per micro-batch."""
    grad_accum: int
    """Micro-batches per optimizer step."""
    epochs: float
    """Passes over the data (ignored when ``max_steps`` is set)."""
    max_steps: int | None
    """Optimizer steps (None: ``epochs`` decide)."""
    eval_steps: int
    """Validation loss every N steps."""
    save_steps: int | None
    """Checkpoint every N steps (None: ``eval_steps``)."""
    early_stopping_patience: int | None
    """Evaluations without improvement before stopping (None: never stop early)."""
    early_stopping_threshold: float
    """Smallest validation-loss improvement that counts."""
    logging_steps: int
    """Training loss every N steps."""
    optimizer: str
    """transformers' optimizer name."""
    weight_decay: float
    """Decoupled weight decay."""
    max_grad_norm: float
    """Gradient clipping (0: none)."""
    dtype: str
    """Compute dtype, or ``auto`` (:func:`pick_dtype`)."""
    gradient_checkpointing: bool
    """Recompute activations in the backward pass (the Trainer's own; QLoRA sets up its own instead)."""
    tensorboard: bool
    """TensorBoard logs in ``log_dir/tensorboard``."""


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


# --------------------------------------------------------------------------------------------------------
# What trains


def lora_config(section: Any, use_dora: bool, new_token_ids: list[int]) -> Any:
    """A causal-LM LoRA (or DoRA) config from a recipe's ``lora`` section (``r``, ``alpha``, ``dropout``,
    ``target_modules``, ``rslora``); rows of ``new_token_ids`` in the input embeddings train too."""
    from peft import LoraConfig, TaskType

    extra: dict[str, Any] = {}
    if new_token_ids:
        extra["trainable_token_indices"] = {"embed_tokens": new_token_ids}
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        use_dora=use_dora,
        use_rslora=section.rslora,
        **extra,
    )


def freeze_below(model: Any, trainable_layers: int, field: str) -> None:
    """Only the top ``trainable_layers`` decoder blocks and the final norm keep gradients (``field`` names
    the recipe key in the error)."""
    layers = decoder_layers(model)
    if trainable_layers > len(layers):
        raise EdgesftError(f"{field}: {trainable_layers} exceeds the model's {len(layers)} decoder blocks")
    for p in model.parameters():
        p.requires_grad = False
    for layer in layers[-trainable_layers:]:
        for p in layer.parameters():
            p.requires_grad = True
    for p in final_norm(model).parameters():
        p.requires_grad = True


def decoder_layers(model: Any) -> Any:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise EdgesftError("train.method: this architecture has no model.layers; use lora/full instead")
    return layers


def final_norm(model: Any) -> Any:
    norm = getattr(getattr(model, "model", None), "norm", None)
    if norm is None:
        raise EdgesftError("train.method: this architecture has no model.norm; use lora/full instead")
    return norm


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


def calibration_batches(
    tok: Any, rows: list[Row], max_length: int, batch_size: int = 16
) -> list[dict[str, Any]]:
    """Whole conversations (prompt and answer), right-padded, as the model sees them in use: the inputs of
    activation statistics (pruning importance, the GGUF importance matrix)."""
    encoded = [encode_conversation(tok, r.messages)[0][:max_length] for r in rows]
    encoded.sort(key=len)  # similar lengths together: less padding
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    collate = Collator(pad)
    batches = []
    for i in range(0, len(encoded), batch_size):
        batch = collate([{"input_ids": x, "labels": x} for x in encoded[i : i + batch_size]])
        batches.append({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    return batches


def _length_grouped_sampler(lengths: list[int], batch_size: int, seed: int) -> Any:
    """transformers' LengthGroupedSampler, its shuffle drawn from ``seed`` + the epoch.

    The stock one (as the Trainer builds it) draws from the global torch RNG when an epoch's iterator
    starts. A resumed run restores that RNG only after fast-forwarding to the checkpoint's batch, so from the
    second epoch on it saw another order than the run it resumes, and other weights.
    """
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self) -> None:
            super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:  # the Trainer calls it before each epoch
            self.epoch = epoch

        def __iter__(self) -> Any:
            self.generator.manual_seed(seed + self.epoch)
            return super().__iter__()

    return EpochSeededLengthGroupedSampler()


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


# --------------------------------------------------------------------------------------------------------
# The trainer


@dataclass
class Distillation:
    """Knowledge distillation from a frozen teacher: ``alpha`` x KL(teacher || student) at ``temperature``
    (scaled by T^2 so gradients keep their size) + (1 - alpha) x the SFT loss, on answer positions."""

    teacher: Any
    temperature: float = 2.0
    alpha: float = 0.5


def make_trainer_class(
    distill: Distillation | None = None, before_step: Callable[[int], None] | None = None
) -> type:
    """Trainer whose loss computes LM-head logits only where a label is set, and that resumes exactly.

    On SFT data most positions are prompt tokens that carry no loss, yet the stock causal-LM forward
    projects every position onto the full vocabulary (49k for SmolLM2) and upcasts those logits to fp32.
    Projecting only the answer positions measured ~1.25x faster steps on a 2-core CPU (bench/train_speed.py).
    Used for a single process with a Llama-style model (``model.model`` + ``lm_head``); under DDP the wrapped
    forward must run so that gradient-sync hooks fire, and other models keep the stock forward.

    With ``distill``, training steps add the KL term against the teacher's logits at the same positions;
    validation stays the plain SFT loss so that it compares with the train stage's. ``before_step`` is
    called with the number of optimizer steps done before every training forward pass (quantization-aware
    healing refreshes its rounding there: :class:`edgesft.qat.FakeQuant`).

    Resume: length-grouped batches are shuffled from the data seed and the epoch (see
    :func:`_length_grouped_sampler`), and a run resumed from a checkpoint written after the loop had ended
    trains no further step (``resumed_finished``; transformers checks for the end only after a step).
    """
    import torch
    from transformers import Trainer

    if not hasattr(Trainer, "_run_epoch"):  # the hook below; a silent no-op would reintroduce the extra step
        raise EdgesftError(
            "this transformers version has no Trainer._run_epoch; edgesft needs transformers 5"
        )

    class SelectiveLogitsTrainer(Trainer):
        resumed_finished = False

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset: Any = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
                return super()._get_train_sampler(train_dataset)
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            lengths = [len(x["input_ids"]) for x in dataset]
            return _length_grouped_sampler(
                lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps, seed
            )

        def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
            if self.resumed_finished:
                self.control.should_training_stop = True
                return None
            return super()._run_epoch(*args, **kwargs)

        def compute_loss(  # type: ignore[override]
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if before_step is not None and model.training:
                before_step(self.state.global_step)
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


# --------------------------------------------------------------------------------------------------------
# Checkpoints


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


def finished(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` was written after the loop had ended: its last step, or early stopping (the
    Trainer saves its control flags with every checkpoint)."""
    state = read_json(checkpoint / "trainer_state.json") or {}
    control = (state.get("stateful_callbacks") or {}).get("TrainerControl") or {}
    max_steps = state.get("max_steps") or 0
    return bool((control.get("args") or {}).get("should_training_stop")) or (
        max_steps > 0 and state.get("global_step", 0) >= max_steps
    )


# --------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class Fitted:
    """A finished training loop: the trained model and the figures of the loop."""

    model: Any
    state: Any
    training_loss: float | None
    metrics: dict[str, Any]
    checksums: list[str]


def fit(
    settings: LoopSettings,
    model: Any,
    tok: Any,
    train_ds: list[dict[str, Any]],
    val_ds: list[dict[str, Any]],
    work_dir: Path,
    log_dir: Path,
    seed: int,
    group_by_length: bool = True,
    distill: Distillation | None = None,
    before_step: Callable[[int], None] | None = None,
) -> Fitted:
    """Run the Trainer over ``train_ds`` with checkpoints in ``work_dir/checkpoints``, validation, early
    stopping and the progress bar. A checkpoint left there by a killed run is resumed: data order, RNG,
    optimizer, scheduler and early-stopping state all continue where they were, so the weights at the end
    are those of an uninterrupted run. ``before_step``: see :func:`make_trainer_class`."""
    import torch
    from transformers import EarlyStoppingCallback, TrainingArguments

    s = settings
    dtype = pick_dtype(s.dtype)
    has_val = bool(val_ds)
    early = has_val and s.early_stopping_patience is not None
    ckpt_dir = work_dir / "checkpoints"
    resume = last_checkpoint(ckpt_dir)
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.batch_size * 2,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler if s.lr_scheduler != "constant" else "constant_with_warmup",
        warmup_steps=s.warmup_ratio,  # transformers 5: a float under 1 is a fraction of the steps
        weight_decay=s.weight_decay,
        max_grad_norm=s.max_grad_norm if s.max_grad_norm > 0 else 0.0,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps or -1,
        eval_strategy="steps" if has_val else "no",
        eval_steps=s.eval_steps,
        # The loss curve starts at the starting model's validation loss. Not again on resume: that would
        # log a second entry at the checkpoint's step and count as one more evaluation for early stopping.
        eval_on_start=has_val and resume is None,
        save_strategy="steps",
        save_steps=s.save_steps or s.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        # The early-stopping patience counter lives in a callback, saved with each checkpoint; without this
        # a resumed run starts counting afresh and stops later than the run it resumes.
        restore_callback_states_from_checkpoint=True,
        logging_steps=s.logging_steps,
        logging_first_step=True,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=s.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        optim=s.optimizer,
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
    if s.tensorboard and is_main():
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(log_dir / "tensorboard"))))
    if early:
        callbacks.append(
            EarlyStoppingCallback(s.early_stopping_patience, s.early_stopping_threshold)  # type: ignore[arg-type]
        )
    trainer: Any = make_trainer_class(distill, before_step)(
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
    trainer.resumed_finished = resume is not None and finished(resume)
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
    # The Trainer's figure is the mean over the steps this call ran: none after a finished checkpoint.
    training_loss = result.training_loss if state.global_step > resumed_step else None
    curve = loss_curve(state)
    metrics: dict[str, Any] = {
        "dtype": dtype,
        "steps": state.global_step,
        "epochs": round(float(state.epoch or 0), 3),
        "early_stopped": early and state.global_step < state.max_steps,
        "best_step": _best_step(state),
        "train_loss": training_loss,
        "final_train_loss": curve["train"][-1]["loss"] if curve["train"] else None,
        "best_val_loss": state.best_metric,
        "train_tokens": tokens,
        "train_seconds": round(train_s, 2),
        "eval_seconds": round(eval_s, 2),
        # Throughput over the optimizer steps only: the validation passes are timed separately.
        "train_tokens_per_s": round((tokens - resumed_tokens) / max(train_s - eval_s, 1e-9), 1),
        "resumed_from_step": resumed_step or None,
    }
    return Fitted(trainer.model, state, training_loss, metrics, checksums)


def loss_curve(state: Any) -> dict[str, list[dict[str, float]]]:
    """Training and validation loss by step, from the Trainer's log history."""
    return {
        "train": [{"step": e["step"], "loss": e["loss"]} for e in state.log_history if "loss" in e],
        "val": [{"step": e["step"], "loss": e["eval_loss"]} for e in state.log_history if "eval_loss" in e],
    }


def weights_sha256(model: Any, trainable_only: bool = False) -> str:
    """sha256 over the names and float32 bytes of the model's parameters (sorted by name)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad or not trainable_only:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _rank_checksums(model: Any) -> list[str]:
    """sha256 of each rank's trainable weights after a distributed run (empty for one process)."""
    _, size = world()
    if size <= 1:
        return []
    import torch.distributed as dist

    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, weights_sha256(model, trainable_only=True))
    return [str(g) for g in gathered]


def _best_step(state: Any) -> int | None:
    ckpt = state.best_model_checkpoint
    if not ckpt:
        return None
    try:
        return int(Path(ckpt).name.split("-")[1])
    except (IndexError, ValueError):
        return None
