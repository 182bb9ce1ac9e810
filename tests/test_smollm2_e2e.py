"""End-to-end on the embedded SmolLM2-135M-Instruct (slow: conversion once, then a few real steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesft.config import ModelConfig, load_recipe
from edgesft.models import embedded_gguf, resolve_model
from edgesft.pipeline import run_pipeline
from edgesft.stages import STAGES
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_cached_tokenizer_matches_gguf_tokenizer_without_the_spurious_bos() -> None:
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(resolve_model(ModelConfig()).path)
    gguf = embedded_gguf()
    theirs = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    samples = [
        "Wake me at 7:45 pm!",
        "  two  spaces 12345 café",
        "<|im_start|>user\nhi<|im_end|>\n",
        "emoji 😀",
    ]
    for s in samples:
        a = ours.encode(s)
        b = theirs.encode(s)
        assert b[0] == 1  # transformers' GGUF tokenizer prepends <|im_start|> although add_bos is false
        assert a == b[1:], s
        assert ours.decode(a) == s  # byte-level decoder round-trips
    assert ours.encode("hi")[0] != ours.bos_token_id  # the GGUF says add_bos_token = false
    assert ours.eos_token == "<|im_end|>" and ours.pad_token_id == ours.eos_token_id


def test_phone_recipe_train_stage_few_steps(tmp_path: Path) -> None:
    recipe = load_recipe(
        ROOT / "recipes" / "phone.yaml",
        [
            f"run_root={tmp_path}",
            "train.max_steps=4",
            "train.eval_steps=4",
            "train.batch_size=4",
            "eval.max_rows=4",
            "eval.evaluate_base=false",
        ],
    )
    m = run_pipeline(recipe, STAGES, until_stage="train", log=lambda _m: None)
    summary = json.loads((tmp_path / "phone" / "data" / "summary.json").read_text())
    assert summary["template"]["removed_default_system_prompt"]
    assert summary["template"]["prompt_overhead_tokens"] <= 12
    assert summary["labels"]["test"]["unsupported"] > 0
    train = m["train"]["metrics"]
    assert train["method"] == "freeze" and train["steps"] == 4
    assert train["val_loss"] < 5 and train["test"]["n"] == 4


def test_prefix_guard_stops_rambling_rows_without_changing_metrics() -> None:
    from transformers import AutoTokenizer

    from edgesft.chat import prepare_tokenizer
    from edgesft.data import load_rows
    from edgesft.evaluate import generate_answers, load_model
    from edgesft.metrics import json_task_metrics

    path = resolve_model(ModelConfig()).path
    model, tok = load_model(path), AutoTokenizer.from_pretrained(path)
    prepare_tokenizer(tok, None, [])
    rows = load_rows(ROOT / "recipes" / "data" / "phone_commands" / "test.jsonl")[:8]
    refs = [r.messages[-1]["content"] for r in rows]
    full, t_full = generate_answers(model, tok, rows, 32, 8, progress=False)
    guarded, t_guard = generate_answers(model, tok, rows, 32, 8, progress=False, required_prefix="{")
    assert json_task_metrics(full, refs) == json_task_metrics(guarded, refs)
    assert all(f.startswith(g) for f, g in zip(full, guarded, strict=True))
    stoppable = sum(1 for f in full if f.strip() and not f.lstrip().startswith("{"))
    assert stoppable > 0 and t_guard["stopped_early"] == stoppable
    assert t_guard["generated_tokens"] < t_full["generated_tokens"]
