"""Evaluate a model: validation loss/perplexity and task metrics with greedy decoding.

``edgesft eval`` and the stages share these functions so every figure is measured the same way.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from edgesft.chat import encode_chat, encode_conversation, prompt_and_answer
from edgesft.data import Row
from edgesft.metrics import TASKS


def _torch():
    import torch

    return torch


def _prefix_guard(tok: Any, width: int, prefix: str) -> Any:
    """Stopping criterion: a row is done once its answer can no longer start with ``prefix``.

    For the JSON task an answer whose first non-space character is not ``{`` fails to parse whatever
    follows, so decoding it further changes no metric; an untuned model otherwise rambles to the token
    limit on every row (measured: 117 s of a 400-row evaluation of SmolLM2 on a 2-core CPU).
    """
    import torch
    from transformers import StoppingCriteria

    class PrefixGuard(StoppingCriteria):
        def __init__(self) -> None:
            self.settled: set[int] = set()  # rows whose answer already starts with the prefix
            self.stopped: set[int] = set()

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for j in range(input_ids.shape[0]):
                if j in self.settled:
                    continue
                text = tok.decode(input_ids[j, width:].tolist(), skip_special_tokens=True).lstrip()
                if text.startswith(prefix):
                    self.settled.add(j)
                elif text and not prefix.startswith(text):
                    self.stopped.add(j)
                    done[j] = True
            return done

    return PrefixGuard()


def generate_answers(
    model: Any,
    tok: Any,
    rows: list[Row],
    max_new_tokens: int,
    batch_size: int,
    progress: bool = True,
    required_prefix: str | None = None,
    schema: str | None = None,
) -> tuple[list[str], dict[str, float]]:
    """Greedy answers to each row's prompt (all turns but the last), batched with left padding.

    Prompts are sorted by length so a batch pads little; answers come back in the input order. With
    ``required_prefix``, a row stops as soon as its answer cannot start with it (see :func:`_prefix_guard`).
    With ``schema`` (JSON Schema text), decoding is constrained to it (:func:`edgesft.answer_schema.
    logits_processor`): each step's argmax is taken over the tokens that keep the row's answer valid.
    """
    from transformers import LogitsProcessorList, StoppingCriteriaList

    torch = _torch()
    prompts = [encode_chat(tok, prompt_and_answer(r.messages)[0], add_generation_prompt=True) for r in rows]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = tok.eos_token_id
    device = next(model.parameters()).device
    new_tokens = stopped = 0
    t0 = time.perf_counter()
    model.eval()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bar = _bar(len(rows), "eval", progress)
    for batch in batches:
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, i in enumerate(batch):
            p = prompts[i]
            ids[j, width - len(p) :] = torch.tensor(p)
            mask[j, width - len(p) :] = 1
        guard = _prefix_guard(tok, width, required_prefix) if required_prefix else None
        processors = LogitsProcessorList()
        if schema is not None:
            from edgesft.answer_schema import logits_processor

            processors.append(logits_processor(tok, schema, len(batch), width, [eos]))
        with torch.inference_mode():
            out = model.generate(
                stopping_criteria=StoppingCriteriaList([guard] if guard else []),
                logits_processor=processors,
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        stopped += len(guard.stopped) if guard else 0
        for j, i in enumerate(batch):
            gen = out[j, width:].tolist()
            if eos in gen:
                gen = gen[: gen.index(eos)]
            while gen and gen[-1] == pad:  # rows stopped early are padded to the batch's length
                gen.pop()
            new_tokens += len(gen) + 1
            answers[i] = tok.decode(gen, skip_special_tokens=True)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    return answers, {
        "generate_s": round(elapsed, 2),
        "generated_tokens": new_tokens,
        "stopped_early": stopped,
    }


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row", leave=False)


def loss_and_perplexity(
    model: Any, tok: Any, rows: list[Row], max_length: int, batch_size: int = 16
) -> dict[str, float]:
    """Mean token NLL of the answers (same masking as training) and its perplexity."""
    torch = _torch()
    device = next(model.parameters()).device
    encoded = []
    for r in rows:
        ids, labels = encode_conversation(tok, r.messages)
        encoded.append((ids[:max_length], labels[:max_length]))
    total, count = 0.0, 0
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        width = max(len(x[0]) for x in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        lab = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, (a, b) in enumerate(chunk):
            ids[j, : len(a)] = torch.tensor(a)
            lab[j, : len(b)] = torch.tensor(b)
            mask[j, : len(a)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logits = logits[:, -width:]  # a soft prompt (prompt tuning) prepends virtual positions
        shift_logits, shift_labels = logits[:, :-1], lab[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += float(nll)
        count += int((shift_labels != -100).sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def task_metrics(
    model: Any,
    tok: Any,
    rows: list[Row],
    task: str,
    max_new_tokens: int,
    batch_size: int,
    progress: bool = True,
    schema: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Task metrics and the per-row predictions on ``rows`` (decoding constrained to ``schema``, when given)."""
    answers, timing = generate_answers(
        model,
        tok,
        rows,
        max_new_tokens,
        batch_size,
        progress,
        required_prefix="{" if task == "json" else None,
        schema=schema,
    )
    refs = [prompt_and_answer(r.messages)[1] for r in rows]
    metrics: dict[str, Any] = dict(TASKS[task](answers, refs))
    metrics.update(timing)
    samples = [
        {
            "source": r.source,
            "prompt": r.messages[-2]["content"] if len(r.messages) > 1 else "",
            "reference": ref,
            "prediction": a,
        }
        for r, ref, a in zip(rows, refs, answers, strict=True)
    ]
    return metrics, samples


def load_model(
    path: Path,
    adapter: Path | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    quantization: dict[str, Any] | None = None,
    vocab_size: int | None = None,
) -> Any:
    """A model folder ready for inference, optionally 4-bit (``quantization``: the QLoRA settings it was
    trained with), with its embeddings grown to ``vocab_size`` and a PEFT ``adapter`` on top."""
    torch = _torch()
    from transformers import AutoModelForCausalLM

    from edgesft.io import check_model_folder

    check_model_folder(path, "model")
    if adapter is not None:
        check_model_folder(adapter, "adapter")
    kwargs: dict[str, Any] = {}
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization["quant_type"],
            bnb_4bit_use_double_quant=quantization["double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, dtype),
        )
        dtype = "float32"  # non-quantized parts stay float32, as in training
    model: Any = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs
    )
    if vocab_size is not None and vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model


def load_stage_model(stage_dir: Path, manifest: dict[str, Any]) -> tuple[Any, Any]:
    """The model a stage folder holds, loaded as the stage produced it (a QLoRA adapter on its 4-bit base)."""
    from transformers import AutoTokenizer

    from edgesft.errors import EdgesftError

    info = manifest.get("info")
    paths = ("tokenizer", "model", "adapter", "base_model")
    if not isinstance(info, dict) or any(not isinstance(info.get(k) or "", str) for k in paths):
        raise EdgesftError(
            f"{stage_dir / 'manifest.json'}: not a stage manifest (its info names no model); re-run the stage"
        )
    tok = AutoTokenizer.from_pretrained(stage_dir / info.get("tokenizer", "tokenizer"))
    if info.get("model"):
        return load_model(stage_dir / info["model"]), tok
    if not info.get("adapter"):
        raise EdgesftError(f"{stage_dir}: the stage holds no model (stage {manifest.get('stage')!r})")
    base = Path(info["base_model"])
    if not base.is_dir():
        raise EdgesftError(f"{stage_dir}: its base model folder {base} is gone; re-run the pipeline")
    # As trained: a QLoRA adapter on its 4-bit base. (Folding it into float weights was measured slower to
    # decode on a 2-core CPU: 16-21 s vs 13 s for 96 answers, fp32/bf16 vs bitsandbytes' 4-bit kernels.)
    model = load_model(
        base,
        stage_dir / info["adapter"],
        dtype=info.get("dtype", "float32"),
        quantization=info.get("qlora"),
        vocab_size=len(tok),
    )
    return model, tok


def _exported_kind(path: Path) -> str | None:
    """``gguf`` or ``onnx`` for an artifact evaluated in its own runtime, in a child process; else None."""
    from edgesft.errors import EdgesftError
    from edgesft.runtimes import artifact_kind

    try:
        kind = artifact_kind(path)
    except EdgesftError:
        return None
    return kind if kind in ("gguf", "onnx") else None


def evaluate_target(
    target: str,
    data_file: Path,
    task: str = "json",
    max_rows: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    progress: bool = True,
    schema: str | None = None,
) -> dict[str, Any]:
    """``edgesft eval``: task metrics and answer perplexity of a stage folder or a model on a data file
    (greedy answers constrained to ``schema``, the answer schema's text, when given)."""
    from transformers import AutoTokenizer

    from edgesft.chat import prepare_tokenizer
    from edgesft.config import ModelConfig
    from edgesft.data import ReadReport, read_rows
    from edgesft.errors import EdgesftError
    from edgesft.io import read_json
    from edgesft.models import resolve_model

    if not data_file.is_file():
        raise EdgesftError(f"--data: file not found: {data_file}")
    rows = read_rows([data_file], "auto", "fail", ReadReport())
    if max_rows:
        rows = rows[:max_rows]
    if not rows:
        raise EdgesftError(f"--data: {data_file} holds no rows")
    path = Path(target)
    kind = _exported_kind(path)
    if kind is not None:
        from edgesft.isolate import call
        from edgesft.machine import default_threads

        got = call(
            "edgesft.benchmark:eval_artifact",
            {
                "artifact": str(path),
                "data_file": str(data_file),
                "task": task,
                "max_rows": max_rows,
                "max_new_tokens": max_new_tokens,
                "threads": default_threads(),
                "schema": schema,
            },
            timeout=24 * 3600,
        )
        return {"target": target, "kind": kind, "data": str(data_file), **got}
    manifest = read_json(path / "manifest.json") if path.is_dir() else None
    if path.is_dir() and (path / "manifest.json").is_file() and not isinstance(manifest, dict):
        raise EdgesftError(
            f"{path / 'manifest.json'}: not a stage manifest (unreadable JSON, or not an object)"
        )
    if isinstance(manifest, dict):
        model, tok = load_stage_model(path, manifest)
        kind = f"stage:{manifest.get('stage')}"
    else:
        resolved = resolve_model(ModelConfig(base=target))
        model = load_model(resolved.path)
        tok = AutoTokenizer.from_pretrained(resolved.path)
        prepare_tokenizer(tok, None, [])
        kind = resolved.source
    metrics, samples = task_metrics(model, tok, rows, task, max_new_tokens, batch_size, progress, schema)
    metrics.update(loss_and_perplexity(model, tok, rows, max_length=4096))
    return {"target": target, "kind": kind, "data": str(data_file), "metrics": metrics, "samples": samples}
