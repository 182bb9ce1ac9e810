"""Task metrics on hand-made answers with known scores."""

from __future__ import annotations

import pytest

from edgesft.metrics import json_task_metrics, text_task_metrics


def test_json_metrics_known_answer() -> None:
    refs = [
        '{"intent":"call","slots":{"contact":"Ann"}}',
        '{"intent":"set_timer","slots":{"seconds":300}}',
        '{"intent":"unsupported","slots":{}}',
        '{"intent":"navigate","slots":{"destination":"Rome"}}',
    ]
    preds = [
        '{"slots":{"contact":"Ann"},"intent":"call"}',  # same object, other key order: exact
        '{"intent":"set_timer","slots":{"seconds":"300"}}',  # wrong type: not exact, slot FP+FN
        "not json",
        '{"intent":"navigate","slots":{"destination":"Rome","mode":"car"}}',  # extra slot: FP
    ]
    m = json_task_metrics(preds, refs)
    assert m["exact_match"] == 0.25 and m["valid_json"] == 0.75 and m["intent_accuracy"] == 0.75
    tp, fp, fn = 2, 2, 1
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert m["slot_f1"] == pytest.approx(2 * p * r / (p + r))


def test_text_metrics() -> None:
    assert text_task_metrics([" a ", "b"], ["a", "c"])["exact_match"] == 0.5


def test_prefix_guard_never_stops_on_leading_whitespace() -> None:
    """JSON may follow whitespace: a random model that emits only newlines is decoded to the limit."""
    from transformers import AutoTokenizer

    from edgesft.chat import prepare_tokenizer
    from edgesft.config import ModelConfig
    from edgesft.data import load_rows
    from edgesft.evaluate import generate_answers, load_model
    from edgesft.models import resolve_model
    from tests.conftest import SMOKE_DATA

    path = resolve_model(ModelConfig(base="tiny-llama")).path
    model, tok = load_model(path), AutoTokenizer.from_pretrained(path)
    prepare_tokenizer(tok, None, [])
    rows = load_rows(SMOKE_DATA / "test.jsonl")[:4]
    full, _ = generate_answers(model, tok, rows, 12, 4, progress=False)
    guarded, t = generate_answers(model, tok, rows, 12, 4, progress=False, required_prefix="{")
    assert all(not a.strip() for a in full)
    assert guarded == full and t["stopped_early"] == 0
