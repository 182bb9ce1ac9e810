"""Quality after every stage: the same figures, measured the same way, and the recipe's limits on them.

Every model-producing stage (train, merge, prune) records validation loss/perplexity on the validation split,
task metrics on the test split (greedy decoding) and parameter counts under the same keys, so the manifests
line up stage by stage and a limit (``<stage>.max_quality_drop``) can compare any stage with the tuned model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgesft.answer_schema import stage_schema
from edgesft.config import QualityDrop, Recipe
from edgesft.data import Row, load_rows
from edgesft.errors import QualityGateError
from edgesft.evaluate import loss_and_perplexity, task_metrics
from edgesft.io import atomic_write_text

POINT_METRICS = ("exact_match", "intent_accuracy", "slot_f1", "valid_json")


def common_rows(test: Any) -> dict[str, Any]:
    """An artifact's test metrics on the rows every artifact of its run answered: ``first_rows`` where the
    primary answered more (``bench.quality.primary_test_rows``), else all of its own."""
    if not isinstance(test, dict):
        return {}
    first = test.get("first_rows")
    return first if isinstance(first, dict) else test


def test_rows(recipe: Recipe, data_dir: Path) -> list[Row]:
    rows = load_rows(data_dir / "test.jsonl")
    return rows[: recipe.eval.max_rows] if recipe.eval.max_rows else rows


def decoding_schema(recipe: Recipe, data_dir: Path) -> str | None:
    """The answer schema greedy decoding is constrained to: the data stage's, unless ``eval.constrained`` is
    off (None: decode freely)."""
    return stage_schema(data_dir) if recipe.eval.constrained else None


def measure(
    recipe: Recipe,
    model: Any,
    tok: Any,
    data_dir: Path,
    out_dir: Path,
    val_rows: list[Row] | None = None,
    label: str = "model",
) -> dict[str, Any]:
    """Validation loss/perplexity, test-split task metrics (greedy, constrained as :func:`decoding_schema`
    says; predictions to ``eval_samples.jsonl``)."""
    e = recipe.eval
    if val_rows is None:
        val_rows = load_rows(data_dir / "val.jsonl")
    rows = test_rows(recipe, data_dir)
    out: dict[str, Any] = {}
    model.eval()
    if val_rows:
        v = loss_and_perplexity(model, tok, val_rows, recipe.data.max_length)
        out.update(val_loss=v["loss"], val_perplexity=v["perplexity"])
    if rows:
        print(f"  evaluating the {label} on {len(rows)} test rows")
        schema = decoding_schema(recipe, data_dir)
        m, samples = task_metrics(model, tok, rows, e.task, e.max_new_tokens, e.batch_size, schema=schema)
        out["test"] = m
        atomic_write_text(
            out_dir / "eval_samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        )
    return out


def quality_drops(limits: QualityDrop, reference: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per limit that ``current`` breaks against ``reference`` (both stage metrics dicts)."""
    broken = []
    ref_test, cur_test = reference.get("test") or {}, current.get("test") or {}
    for key in POINT_METRICS:
        limit = getattr(limits, key)
        if limit is None:
            continue
        if key not in ref_test or key not in cur_test:  # a limit on a figure nobody measured must not pass
            broken.append(f"{key}: a limit is set but the figure was not measured (test split? eval.task?)")
            continue
        drop = 100.0 * (ref_test[key] - cur_test[key])
        if drop > limit + 1e-9:
            broken.append(
                f"{key} {100 * cur_test[key]:.1f} vs tuned {100 * ref_test[key]:.1f}: "
                f"drop {drop:.1f} points > allowed {limit:g}"
            )
    rise_limit = limits.val_perplexity
    if rise_limit is not None and not (reference.get("val_perplexity") and current.get("val_perplexity")):
        broken.append("val_perplexity: a limit is set but the figure was not measured (no validation rows?)")
    elif rise_limit is not None:
        rise = current["val_perplexity"] / reference["val_perplexity"] - 1.0
        if rise > rise_limit + 1e-12:
            broken.append(
                f"val_perplexity {current['val_perplexity']:.3f} vs tuned {reference['val_perplexity']:.3f}: "
                f"+{100 * rise:.1f}% > allowed +{100 * rise_limit:g}%"
            )
    return broken


def gate_for(section: str) -> Any:
    """A pipeline gate: ``<section>.max_quality_drop`` of the recipe vs the train stage's figures."""

    def gate(recipe: Recipe, manifests: dict[str, dict[str, Any]]) -> None:
        limits: QualityDrop = getattr(recipe, section).max_quality_drop
        reference = manifests.get("train", {}).get("metrics", {})
        current = manifests.get(section, {}).get("metrics", {})
        broken = quality_drops(limits, reference, current)
        if broken:
            raise QualityGateError(
                f"stage {section}: quality below {section}.max_quality_drop: " + "; ".join(broken)
            )

    return gate
