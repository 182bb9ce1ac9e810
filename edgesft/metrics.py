"""Task metrics on generated answers: exact-match of parsed JSON, intent accuracy, slot F1, valid JSON."""

from __future__ import annotations

import json
from typing import Any


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The answer parsed as a JSON object, or None (trailing whitespace allowed, nothing else)."""
    try:
        value = json.loads(text.strip())
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _slot_items(obj: dict[str, Any] | None) -> set[tuple[str, str]]:
    slots = obj.get("slots") if obj else None
    if not isinstance(slots, dict):
        return set()
    return {(str(k), json.dumps(v, sort_keys=True)) for k, v in slots.items()}


def json_task_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Compare parsed JSON answers (never strings). Slot F1 is micro-averaged over (slot, value) pairs."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    n = len(references)
    if n == 0:
        return {"n": 0}
    valid = exact = intent = 0
    tp = fp = fn = 0
    for pred_text, ref_text in zip(predictions, references, strict=True):
        ref = parse_json_object(ref_text)
        pred = parse_json_object(pred_text)
        if pred is not None:
            valid += 1
        if pred is not None and pred == ref:
            exact += 1
        if pred is not None and ref is not None and pred.get("intent") == ref.get("intent"):
            intent += 1
        p, r = _slot_items(pred), _slot_items(ref)
        tp += len(p & r)
        fp += len(p - r)
        fn += len(r - p)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "exact_match": exact / n,
        "intent_accuracy": intent / n,
        "slot_f1": f1,
        "valid_json": valid / n,
    }


def text_task_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    n = len(references)
    if n == 0:
        return {"n": 0}
    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return {"n": n, "exact_match": exact / n}


TASKS = {"json": json_task_metrics, "text": text_task_metrics}
