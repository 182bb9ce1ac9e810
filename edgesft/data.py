"""Data pipeline: read rows in any supported format, clean, dedup, split, augment and summarise them.

Rows are normalised to chat ``messages`` once, here; every later step (rendering, masking, evaluation)
works on that one shape.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesft.config import AugmentConfig, DataConfig
from edgesft.errors import DataError

ROLES = ("system", "user", "assistant")
FORMATS = ("messages", "alpaca", "prompt_completion")


@dataclass
class Row:
    """One conversation and where it came from (``file:line``)."""

    messages: list[dict[str, str]]
    source: str


class RowError(ValueError):
    """A row that does not match its format; the message says what is wrong."""


# --------------------------------------------------------------------------------------------------------
# Reading


def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed record) from a JSONL, JSON (list of objects) or CSV file.

    A line that is not valid JSON is yielded as a :class:`RowError` so the caller decides fail or skip.
    """
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            with open(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:  # one bad line is that row's error, not the file's
                        yield (
                            lineno,
                            RowError(f"not UTF-8 text ({e.reason} at byte {e.start + 1} of the line)"),
                        )
                        continue
                    if not line.strip():
                        continue
                    try:
                        yield lineno, json.loads(line)
                    except json.JSONDecodeError as e:
                        yield lineno, RowError(f"invalid JSON ({e.msg} at column {e.colno})")
                    except RecursionError:
                        yield lineno, RowError("invalid JSON (nested too deeply)")
        elif suffix == ".json":
            yield from _json_rows(path, _utf8(path))
        elif suffix in (".csv", ".tsv"):
            reader = csv.DictReader(
                io.StringIO(_utf8(path), newline=""), delimiter="\t" if suffix == ".tsv" else ","
            )
            for rec in reader:
                yield reader.line_num, dict(rec)
        else:
            raise DataError(f"{path}: unsupported data file type {suffix!r} (use .jsonl, .json or .csv)")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _json_rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line, row) of a .json file holding a list of rows (or ``{"data": [...]}``), each with the line its
    row starts on, so errors point into the file. A top-level list is walked row by row with the standard
    decoder's ``raw_decode``, because ``json.loads`` keeps no positions."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")

    def skip(at: int) -> int:
        return ws.match(text, at).end()  # type: ignore[union-attr]

    def line(at: int) -> int:
        return text.count("\n", 0, at) + 1

    try:
        at = skip(0)
        if not text.startswith("[", at):
            data = json.loads(text)
            if not (isinstance(data, dict) and isinstance(data.get("data"), list)):
                raise DataError(f"{path}:{line(at)}: a .json data file must hold a list of rows")
            yield from enumerate(data["data"], 1)  # the wrapper form: rows are numbered, not located
            return
        at = skip(at + 1)
        while not text.startswith("]", at):
            rec, end = decoder.raw_decode(text, at)
            yield line(at), rec
            at = skip(end)
            if text.startswith(",", at):
                at = skip(at + 1)
                if text.startswith("]", at):
                    raise DataError(f"{path}:{line(at)}: invalid JSON (a comma before ']')")
            elif not text.startswith("]", at):
                raise DataError(f"{path}:{line(at)}: invalid JSON (expected ',' or ']' between rows)")
        if skip(at + 1) != len(text):
            raise DataError(f"{path}:{line(at)}: invalid JSON (extra data after the list)")
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON (nested too deeply)") from None


def _utf8(path: Path) -> str:
    """A whole file as UTF-8 text; not UTF-8: a DataError naming the line of the first bad byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None


def detect_format(rec: dict[str, Any]) -> str:
    """The row format a record's keys identify."""
    if "messages" in rec:
        return "messages"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "prompt" in rec and "completion" in rec:
        return "prompt_completion"
    raise RowError(
        f"cannot detect the row format from keys {sorted(rec)[:8]} "
        "(expected messages, instruction/output, or prompt/completion)"
    )


def _text(rec: dict[str, Any], key: str, required: bool = True) -> str:
    value = rec.get(key)
    if value is None:
        if required:
            raise RowError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def to_messages(rec: Any, fmt: str) -> tuple[list[dict[str, str]], str]:
    """Normalise one record to chat messages; return (messages, detected format)."""
    if isinstance(rec, RowError):
        raise rec
    if not isinstance(rec, dict):
        raise RowError(f"a row must be an object, got {type(rec).__name__}")
    kind = detect_format(rec) if fmt == "auto" else fmt
    if kind == "messages":
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RowError("'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise RowError(f"messages[{i}] must be an object")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise RowError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            if not isinstance(content, str):
                raise RowError(f"messages[{i}].content must be a string")
            out.append({"role": role, "content": content})
        if out[-1]["role"] != "assistant":
            raise RowError("the last message must be the assistant's")
        if not any(m["role"] == "user" for m in out):
            raise RowError("no user message")
        return out, kind
    if kind == "alpaca":
        instruction, extra = _text(rec, "instruction"), _text(rec, "input", required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _text(rec, "output")},
        ], kind
    if kind == "prompt_completion":
        return [
            {"role": "user", "content": _text(rec, "prompt")},
            {"role": "assistant", "content": _text(rec, "completion")},
        ], kind
    raise RowError(f"unknown format {kind!r}")


@dataclass
class ReadReport:
    """What reading a set of files found."""

    read: int = 0
    malformed: int = 0
    errors: list[str] = field(default_factory=list)
    formats: Counter[str] = field(default_factory=Counter)


def normalise(
    records: Iterable[tuple[str, str, Any]],
    fmt: str,
    on_error: str,
    report: ReadReport,
    check: Callable[[list[dict[str, str]]], str | None] | None = None,
) -> list[Row]:
    """Rows from (location for errors, short source, record) triples; malformed records fail the run or
    are skipped and counted, as ``on_error`` says. ``check`` (the answer schema's checker) says what is
    wrong with a row's messages, or None: a row it objects to is malformed too."""
    rows: list[Row] = []
    for where, source, rec in records:
        report.read += 1
        try:
            msgs, kind = to_messages(rec, fmt)
            problem = check(msgs) if check is not None else None
            if problem:
                raise RowError(problem)
        except RowError as e:
            report.malformed += 1
            if on_error == "fail":
                raise DataError(f"{where}: {e} (set data.on_error: skip to skip such rows)") from None
            if len(report.errors) < 20:
                report.errors.append(f"{where}: {e}")
            continue
        report.formats[kind] += 1
        rows.append(Row(msgs, source))
    return rows


def read_rows(
    paths: list[Path],
    fmt: str,
    on_error: str,
    report: ReadReport,
    check: Callable[[list[dict[str, str]]], str | None] | None = None,
) -> list[Row]:
    """Read and normalise rows from files (``check``: see :func:`normalise`)."""
    records = (
        (f"{path}:{lineno}", f"{path.name}:{lineno}", rec)
        for path in paths
        for lineno, rec in read_records(path)
    )
    return normalise(records, fmt, on_error, report, check)


def read_hf_dataset(
    name: str,
    config: str | None,
    split: str,
    fmt: str,
    on_error: str,
    report: ReadReport,
    check: Callable[[list[dict[str, str]]], str | None] | None = None,
) -> list[Row]:
    """Rows of a Hugging Face dataset split (needs the network unless it is in the local cache)."""
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:
        raise DataError(
            f"data.hf_dataset: cannot load {name!r} split {split!r} ({e.__class__.__name__}: {e})"
        ) from e
    records = ((f"{name}[{split}] row {i}", f"{name}:{i}", dict(rec)) for i, rec in enumerate(ds))
    return normalise(records, fmt, on_error, report, check)


# --------------------------------------------------------------------------------------------------------
# Cleaning


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalized_key(messages: list[dict[str, str]]) -> str:
    """Text key that folds case, whitespace and ASCII punctuation (near-duplicate detection)."""
    text = " \u241e ".join(f"{m['role']}:{m['content']}" for m in messages).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def exact_key(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def dedup(rows: list[Row], mode: str, counts: Counter[str]) -> list[Row]:
    """Drop repeated rows (first occurrence kept), counting each kind of duplicate."""
    if mode == "none":
        return rows
    seen_exact: set[str] = set()
    seen_norm: set[str] = set()
    kept = []
    for row in rows:
        ek = exact_key(row.messages)
        if ek in seen_exact:
            counts["duplicate_exact"] += 1
            continue
        seen_exact.add(ek)
        if mode == "normalized":
            nk = normalized_key(row.messages)
            if nk in seen_norm:
                counts["duplicate_normalized"] += 1
                continue
            seen_norm.add(nk)
        kept.append(row)
    return kept


def drop_empty(rows: list[Row], min_response_chars: int, counts: Counter[str]) -> list[Row]:
    kept = []
    for row in rows:
        answer = row.messages[-1]["content"].strip()
        user_empty = all(not m["content"].strip() for m in row.messages if m["role"] == "user")
        if user_empty or len(answer) < max(min_response_chars, 1):
            counts["empty"] += 1
            continue
        kept.append(row)
    return kept


def split_rows(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Hold out ``fraction`` of rows (at least one when fraction > 0) with a fixed seed."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(rows) * fraction))
    val_idx = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val_idx], [
        r for i, r in enumerate(rows) if i in val_idx
    ]


# --------------------------------------------------------------------------------------------------------
# Augmentation: cheap noise on the user turn that keeps the target valid.

_FILLERS_BEFORE = ("um ", "hey, ", "ok so ", "please ", "uh, ")
_FILLERS_AFTER = (" please", " thanks", " now", " thank you")


def _aug_case(text: str, rng: random.Random) -> str:
    return rng.choice((str.lower, str.upper, str.capitalize))(text)


def _aug_punct(text: str, rng: random.Random) -> str:
    stripped = text.rstrip(".!?")
    return stripped + rng.choice(("", ".", "!", "?", "..."))


def _aug_filler(text: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(_FILLERS_BEFORE) + text
    return text.rstrip(".!?") + rng.choice(_FILLERS_AFTER)


def _aug_typo(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) > 3 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


AUGMENTATIONS = {"case": _aug_case, "punctuation": _aug_punct, "filler": _aug_filler, "typo": _aug_typo}


def augment(rows: list[Row], cfg: AugmentConfig, seed: int) -> list[Row]:
    """Augmented copies of ``rows`` (user turns only, targets untouched).

    Changing the user text could break a target that copies a span of it (a slot value), so an op is
    skipped for a row when the answer quotes text the op would alter: ``case`` and ``typo`` only run on rows
    whose answer shares no word with the user turn.
    """
    rng = random.Random(seed)
    out = []
    for row in rows:
        answer = row.messages[-1]["content"].lower()
        for _ in range(cfg.copies):
            msgs = [dict(m) for m in row.messages]
            changed = False
            for m in msgs:
                if m["role"] != "user":
                    continue
                quotes_user = any(w.lower() in answer for w in re.findall(r"[A-Za-z]{3,}", m["content"]))
                for op in cfg.ops:
                    if rng.random() >= cfg.prob or (op in ("case", "typo") and quotes_user):
                        continue
                    new = AUGMENTATIONS[op](m["content"], rng)
                    changed |= new != m["content"]
                    m["content"] = new
            if changed:
                out.append(Row(msgs, row.source + "+aug"))
    return out


# --------------------------------------------------------------------------------------------------------
# Summary helpers


def length_histogram(lengths: list[int], bins: int = 10) -> dict[str, Any]:
    """Token-length histogram with ``bins`` equal-width bins plus min/median/max."""
    if not lengths:
        return {"count": 0}
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((n - lo) // width for n in lengths)
    s = sorted(lengths)
    return {
        "count": len(lengths),
        "min": lo,
        "median": s[len(s) // 2],
        "p95": s[min(len(s) - 1, int(len(s) * 0.95))],
        "max": hi,
        "bins": [
            {"from": lo + b * width, "to": lo + (b + 1) * width - 1, "count": counts.get(b, 0)}
            for b in range((hi - lo) // width + 1)
        ],
    }


def label_counts(rows: list[Row], key: str | None) -> dict[str, int]:
    """Counts of ``key`` in JSON answers ('<invalid json>' where the answer does not parse)."""
    if not key:
        return {}
    c: Counter[str] = Counter()
    for row in rows:
        try:
            value = json.loads(row.messages[-1]["content"]).get(key, "<missing>")
        except (ValueError, AttributeError):
            value = "<invalid json>"
        c[str(value)] += 1
    return dict(sorted(c.items()))


def write_rows(path: Path, rows: list[Row]) -> None:
    from edgesft.io import atomic_write_text

    atomic_write_text(
        path,
        "".join(
            json.dumps({"messages": r.messages, "source": r.source}, ensure_ascii=False) + "\n" for r in rows
        ),
    )


def load_rows(path: Path) -> list[Row]:
    """Rows from a file this module wrote (a stage output, trusted format)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            rows.append(Row(rec["messages"], rec.get("source", "")))
    return rows


def data_files(cfg: DataConfig, resolve: Any) -> dict[str, list[Path]]:
    """The recipe's data files by split, resolved against the recipe folder."""
    out = {"train": [resolve(p) for p in cfg.train]}
    if cfg.val:
        out["val"] = [resolve(cfg.val)]
    if cfg.test:
        out["test"] = [resolve(cfg.test)]
    return out
