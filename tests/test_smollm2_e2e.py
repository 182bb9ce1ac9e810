"""End-to-end on the embedded SmolLM2-135M-Instruct (slow: conversion once, then a few real steps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgesft.config import ModelConfig, load_recipe
from edgesft.models import embedded_gguf, resolve_model
from edgesft.pipeline import run_pipeline
from edgesft.stages import STAGES
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _llama_cpp_ids(gguf: Path, texts: list[str]) -> list[list[int]]:
    """Token ids from llama.cpp itself (the GGUF's own runtime), in a child process: native code."""
    script = (
        "import json, sys, llama_cpp\n"
        "m = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)\n"
        "texts = json.loads(sys.stdin.read())\n"
        "print(json.dumps([m.tokenize(t.encode(), add_bos=False, special=True) for t in texts]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(gguf)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cached_tokenizer_matches_llama_cpp_and_transformers_gguf_tokenizer() -> None:
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(resolve_model(ModelConfig()).path)
    gguf = embedded_gguf()
    theirs = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    samples = [
        "Wake me at 7:45 pm!",
        "  two  spaces 12345 café",
        "<|im_start|>user\nhi<|im_end|>\n",
        "emoji 😀",
        "Grüße, naïve — 東京\n\n\tindent",
        '{"intent":"set_alarm","slots":{"time":"07:15"}}',
    ]
    reference = _llama_cpp_ids(gguf, samples)
    for s, ref in zip(samples, reference, strict=True):
        a = ours.encode(s)
        assert a == ref, s  # llama.cpp, which runs the exported files, splits the text the same way
        assert a == theirs.encode(s), s  # transformers 5's GGUF tokenizer adds no BOS either (4.x did)
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
