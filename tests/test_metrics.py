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
