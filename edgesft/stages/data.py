"""Stage ``data``: read, clean, dedup, split and augment the recipe's data; write the run's tokenizer.

Outputs: ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (normalised chat rows), ``tokenizer/`` (with the
run's chat template: every later stage and artifact inherits it), ``summary.json`` and, when the recipe
declares ``data.answer_schema``, the schema's copy ``answer_schema.json`` (every kept row's answer matches it;
later stages constrain decoding to it).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgesft import data as D
from edgesft.answer_schema import SCHEMA_FILE, AnswerChecker, check_compiles, load_schema
from edgesft.chat import RenderError, encode, encode_conversation, render
from edgesft.config import Recipe
from edgesft.errors import DataError
from edgesft.io import atomic_write_json, atomic_write_text, sha256_file
from edgesft.models import resolve_model, save_tokenizer
from edgesft.pipeline import StageInputs, StageResult


def external_inputs(recipe: Recipe) -> dict[str, str]:
    """Identity of what this stage reads from outside the run: the base model and the data files."""
    model = resolve_model(recipe.model, recipe._base_dir)
    out = {"base_model": model.identity}
    for split, paths in D.data_files(recipe.data, recipe.resolve_path).items():
        for i, p in enumerate(paths):
            out[f"data:{split}:{i}"] = sha256_file(p)
    if recipe.data.hf_dataset:
        out["data:hf"] = f"{recipe.data.hf_dataset}/{recipe.data.hf_config}/{recipe.data.hf_split}"
    if recipe.data.answer_schema:
        out["answer_schema"] = sha256_file(_schema_path(recipe))
    return out


def _schema_path(recipe: Recipe) -> Path:
    """The recipe's answer schema file, which must exist (one line naming the field when it does not)."""
    path = recipe.resolve_path(str(recipe.data.answer_schema))
    try:
        found = path.is_file()
    except OSError:
        found = False
    if not found:
        raise DataError(f"data.answer_schema: file not found: {path}")
    return path


def load_run_tokenizer(recipe: Recipe, model_path: Path) -> tuple[Any, dict[str, Any]]:
    """The base tokenizer with the recipe's chat template and special tokens applied."""
    from transformers import AutoTokenizer

    from edgesft.chat import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=recipe.model.trust_remote_code)
    changes = prepare_tokenizer(tok, recipe.model.system_prompt, recipe.model.extra_special_tokens)
    return tok, changes


def run(recipe: Recipe, inputs: StageInputs, out_dir: Path) -> StageResult:
    cfg = recipe.data
    model = resolve_model(recipe.model, recipe._base_dir)
    tok, tok_changes = load_run_tokenizer(recipe, model.path)
    files = D.data_files(cfg, recipe.resolve_path)
    schema_path = _schema_path(recipe) if cfg.answer_schema else None
    check = None
    if schema_path is not None:
        schema = load_schema(schema_path)
        check_compiles(schema, tok, str(schema_path))
        check = AnswerChecker(schema, schema_path.name)

    read: dict[str, D.ReadReport] = {s: D.ReadReport() for s in ("train", "val", "test")}
    if cfg.hf_dataset:
        train = D.read_hf_dataset(
            cfg.hf_dataset, cfg.hf_config, cfg.hf_split, cfg.format, cfg.on_error, read["train"], check
        )
    else:
        train = D.read_rows(files["train"], cfg.format, cfg.on_error, read["train"], check)
    val = D.read_rows(files["val"], cfg.format, cfg.on_error, read["val"], check) if "val" in files else []
    test = (
        D.read_rows(files["test"], cfg.format, cfg.on_error, read["test"], check) if "test" in files else []
    )

    dropped: dict[str, Counter[str]] = {s: Counter() for s in ("train", "val", "test")}
    train = D.dedup(
        D.drop_empty(train, cfg.min_response_chars, dropped["train"]), cfg.dedup, dropped["train"]
    )
    val = D.dedup(D.drop_empty(val, cfg.min_response_chars, dropped["val"]), cfg.dedup, dropped["val"])
    test = D.drop_empty(test, cfg.min_response_chars, dropped["test"])
    if "val" not in files:
        train, val = D.split_rows(train, cfg.val_fraction, recipe.seed)

    lengths: dict[str, list[int]] = {}
    truncated: Counter[str] = Counter()
    for split in ("train", "val"):
        rows = train if split == "train" else val
        kept, lens = [], []
        for row in rows:
            try:
                ids, labels = encode_conversation(tok, row.messages, cfg.train_on_prompt)
            except RenderError as e:
                if cfg.on_error == "fail":
                    raise DataError(f"{row.source}: {e}") from None
                dropped[split]["unrenderable"] += 1
                continue
            n = len(ids)
            if n > cfg.max_length:
                if cfg.overlong == "drop":
                    dropped[split]["overlong"] += 1
                    continue
                if all(lab == -100 for lab in labels[: cfg.max_length]):
                    dropped[split]["no_target_after_truncation"] += 1
                    continue
                truncated[split] += 1
            kept.append(row)
            lens.append(min(n, cfg.max_length))
        lengths[split] = lens
        if split == "train":
            train = kept
        else:
            val = kept
    if not train:
        raise DataError("data: no training rows left after cleaning (see the counts above the error)")

    augmented = D.augment(train, cfg.augment, recipe.seed) if cfg.augment.enabled else []
    if augmented:
        train_keys = {D.exact_key(r.messages) for r in train}
        augmented = [r for r in augmented if D.exact_key(r.messages) not in train_keys]
        train = train + augmented

    overlap_val = len(
        {D.normalized_key(r.messages) for r in val} & {D.normalized_key(r.messages) for r in train}
    )
    overlap_test = len(
        {D.normalized_key(r.messages) for r in test} & {D.normalized_key(r.messages) for r in train}
    )

    D.write_rows(out_dir / "train.jsonl", train)
    D.write_rows(out_dir / "val.jsonl", val)
    D.write_rows(out_dir / "test.jsonl", test)
    save_tokenizer(tok, out_dir / "tokenizer", model.path)
    if schema_path is not None:
        atomic_write_text(out_dir / SCHEMA_FILE, schema_path.read_text(encoding="utf-8"))

    probe = render(tok, [{"role": "user", "content": "x"}], add_generation_prompt=True)
    summary = {
        "read": {
            s: {"rows": r.read, "malformed_skipped": r.malformed, "formats": dict(r.formats)}
            for s, r in read.items()
        },
        "malformed_examples": [e for r in read.values() for e in r.errors][:20],
        "dropped": {s: dict(c) for s, c in dropped.items()},
        "truncated": dict(truncated),
        "augmented_added": len(augmented),
        "answer_schema": str(schema_path) if schema_path is not None else None,
        "kept": {"train": len(train), "val": len(val), "test": len(test)},
        "overlap_with_train": {"val": overlap_val, "test": overlap_test},
        "token_lengths": {s: D.length_histogram(v) for s, v in lengths.items()},
        "labels": {
            "train": D.label_counts(train, cfg.label_key),
            "val": D.label_counts(val, cfg.label_key),
            "test": D.label_counts(test, cfg.label_key),
        },
        "template": {
            "system_prompt": recipe.model.system_prompt,
            "prompt_overhead_tokens": len(encode(tok, probe)) - len(encode(tok, "x")),
            **tok_changes,
        },
    }
    atomic_write_json(out_dir / "summary.json", summary)
    _print_summary(summary)
    return StageResult(
        metrics={
            "rows": summary["kept"],
            "dropped": {s: sum(c.values()) for s, c in dropped.items()},
            "malformed_skipped": sum(r.malformed for r in read.values()),
            "augmented_added": len(augmented),
        },
        info={"base_model": str(model.path), "base_identity": model.identity, "base_source": model.source},
    )


def _print_summary(s: dict[str, Any]) -> None:
    kept = s["kept"]
    dropped = {k: v for k, v in s["dropped"].items() if v}
    print(
        f"  rows kept: train {kept['train']}, val {kept['val']}, test {kept['test']}"
        f" (augmented +{s['augmented_added']})"
    )
    if dropped:
        print(f"  dropped: {dropped}")
    if s["answer_schema"]:
        print(f"  every kept answer matches {s['answer_schema']}")
    skipped = sum(r["malformed_skipped"] for r in s["read"].values())
    if skipped:
        print(f"  malformed rows skipped: {skipped} (first: {s['malformed_examples'][0]})")
    tl = s["token_lengths"].get("train", {})
    if tl.get("count"):
        print(
            f"  train tokens/example: min {tl['min']}, median {tl['median']}, p95 {tl['p95']}, max {tl['max']}"
        )
    print(
        f"  prompt template overhead: {s['template']['prompt_overhead_tokens']} tokens"
        + (" (default system prompt removed)" if s["template"]["removed_default_system_prompt"] else "")
    )
