#!/usr/bin/env python3
"""Deterministic generator for the ``phone_commands`` dataset.

Task: parse a short spoken/typed phone command into one compact JSON object
``{"intent": NAME, "slots": {...}}``.  See README.md in this folder for the
full contract.

Running ``python recipes/data/phone_commands/generate.py`` rewrites
``train.jsonl``, ``val.jsonl`` and ``test.jsonl`` next to this file, and
``schema.json``: the answer's JSON Schema, made from the contract's constants.  The
output is byte-identical across runs: seeded ``random.Random`` streams drive
every choice, all pools are lists (never iterated sets), and rows are written
in a seeded shuffle order.

Random streams.  The test split has its own stream, so editing the train
pools or templates can never perturb it: ``random.Random(SEED)`` advanced by
``TEST_STREAM_OFFSET`` 32-bit draws, which is exactly where the original
single-stream generator (v1: train, then val, then test) started the test
split.  test.jsonl is therefore byte-identical to the v1 file; ``TEST_SHA256``
pins it.  Train and val share a second stream, ``DeckRandom(TRAIN_SEED)``.
The test split is built first and its user strings are reserved, so train/val
can never repeat one.

How the splits differ:
  * train and val use the *train* phrasing templates and the *train* value
    pools (names, places, songs, ...); val rows never repeat a train row.
  * test uses its own phrasing templates, polite wrappers and value pools
    that never occur in train/val, plus clock times, timer durations and
    volume levels that are disjoint from train/val (apart from a few fixed
    phrases such as "noon" or "an hour and a half" that are deliberately
    shared).
  * train/val numbers come from wide generated pools (minute counts 1-180,
    second counts 5-120, hours 1-12, hour+minute and minute+second combos,
    "N and a half", all clock hours and most minutes, volume 0-100) minus
    every value the test split can use, so the model has to learn the
    mappings instead of memorising a handful of values.  Train rendering
    code (``*_train`` functions) is separate from the test rendering code,
    which is frozen.
The generator asserts these properties before writing anything.

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

SEED = 20240611  # test stream (and the v1 single stream)
TEST_STREAM_OFFSET = 69271  # 32-bit draws v1 made for train+val before test
TRAIN_SEED = 20240612  # train + val stream
# sha256 of test.jsonl.  Test must not change: if an edit changes it, the edit
# touched the frozen test path (test templates, pools or rendering code).
TEST_SHA256 = "5905bcfd0810cc9cedb13f81350c1a7e3547019309c5f1dbc632a2f2c075d4e8"
OUT_DIR = Path(__file__).resolve().parent
SPLIT_SIZES = {"train": 6000, "val": 300, "test": 400}
UNSUPPORTED_SHARE = 0.15
MAX_ATTEMPTS = 400  # retries to find a not-yet-used user string

# ---------------------------------------------------------------------------
# Contract
# ---------------------------------------------------------------------------

# Slot order per intent: the canonical key order of the assistant JSON.
SLOT_ORDER = {
    "set_alarm": ["time", "label"],
    "set_timer": ["seconds"],
    "send_message": ["contact", "text"],
    "call": ["contact"],
    "play_music": ["query"],
    "search_web": ["query"],
    "navigate": ["destination"],
    "get_weather": ["location", "day"],
    "create_reminder": ["text", "time", "day"],
    "create_event": ["title", "day", "time"],
    "toggle_setting": ["setting", "state"],
    "set_volume": ["level", "direction"],
    "unsupported": [],
}
REQUIRED_SLOTS = {
    "set_alarm": ["time"],
    "set_timer": ["seconds"],
    "send_message": ["contact", "text"],
    "call": ["contact"],
    "play_music": ["query"],
    "search_web": ["query"],
    "navigate": ["destination"],
    "get_weather": [],
    "create_reminder": ["text"],
    "create_event": ["title"],
    "toggle_setting": ["setting", "state"],
    "set_volume": [],  # exactly one of level / direction, checked separately
    "unsupported": [],
}
INTENTS = list(SLOT_ORDER)
COMMAND_INTENTS = [i for i in INTENTS if i != "unsupported"]

FREE_TEXT_SLOTS = {"label", "text", "query", "destination", "title", "contact", "location"}
DAY_VALUES = ["today", "tomorrow", "monday", "tuesday", "wednesday", "thursday",
              "friday", "saturday", "sunday"]
SETTINGS = ["wifi", "bluetooth", "flashlight", "do_not_disturb", "airplane_mode"]
STATES = ["on", "off"]
DIRECTIONS = ["up", "down"]
TIME_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
TRAILING_PUNCT = ".,!?;:"


def assistant_json(intent: str, slots: dict) -> str:
    """Canonical compact assistant answer: intent first, slots in SLOT_ORDER."""
    ordered = {k: slots[k] for k in SLOT_ORDER[intent] if k in slots}
    return json.dumps({"intent": intent, "slots": ordered},
                      separators=(",", ":"), ensure_ascii=False)


# The same contract as a JSON Schema (schema.json, written beside the splits): what a recipe's
# data.answer_schema names, and what a constrained decoder follows. Slot properties come in SLOT_ORDER, the
# order the model was trained on, because constrained decoders emit properties in schema order.
SCHEMA_FILE = "schema.json"
FREE_TEXT_MAX_CHARS = 80  # a bound, so that a constrained decoder always ends a free-text slot
EXACTLY_ONE_SLOT = {"set_volume": ["level", "direction"]}  # one of these, never both, never neither


def slot_schema(key: str) -> dict:
    """The JSON Schema of one slot's value (what validate_row checks, as far as a schema can say)."""
    if key in FREE_TEXT_SLOTS:
        return {"type": "string", "minLength": 1, "maxLength": FREE_TEXT_MAX_CHARS}
    fixed = {
        "time": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},  # TIME_RE, ASCII digits
        "day": {"enum": DAY_VALUES},
        "seconds": {"type": "integer", "minimum": 1},
        "setting": {"enum": SETTINGS},
        "state": {"enum": STATES},
        "level": {"type": "integer", "minimum": 0, "maximum": 100},
        "direction": {"enum": DIRECTIONS},
    }
    return fixed[key]


def _slots_object(keys: list[str], required: list[str]) -> dict:
    return {
        "type": "object",
        "properties": {k: slot_schema(k) for k in keys},
        "required": list(required),
        "additionalProperties": False,
    }


def answer_schema() -> dict:
    """The assistant answer's JSON Schema (draft 2020-12): one ``anyOf`` branch per intent."""
    branches = []
    for intent in INTENTS:
        if intent in EXACTLY_ONE_SLOT:
            slots = {"anyOf": [_slots_object([k], [k]) for k in EXACTLY_ONE_SLOT[intent]]}
        else:
            slots = _slots_object(SLOT_ORDER[intent], REQUIRED_SLOTS[intent])
        branches.append({
            "type": "object",
            "properties": {"intent": {"const": intent}, "slots": slots},
            "required": ["intent", "slots"],
            "additionalProperties": False,
        })
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "phone_commands answer",
        "description": "Written by generate.py from its contract (SLOT_ORDER, REQUIRED_SLOTS, value sets).",
        "anyOf": branches,
    }


def schema_bytes() -> bytes:
    return (json.dumps(answer_schema(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _check(cond: bool, msg: str) -> None:
    # Explicit raise instead of `assert` so validation survives `python -O`.
    if not cond:
        raise ValueError(msg)


def validate_row(row: dict) -> None:
    """Raise ValueError unless ``row`` satisfies the dataset contract."""
    _check(isinstance(row, dict) and list(row) == ["messages"], "row must be {'messages': [...]}")
    msgs = row["messages"]
    _check(isinstance(msgs, list) and len(msgs) == 2, "exactly two messages (user, assistant)")
    _check([m.get("role") for m in msgs] == ["user", "assistant"], "roles must be user, assistant")
    for m in msgs:
        _check(list(m) == ["role", "content"] and isinstance(m["content"], str), "bad message keys")
    user, answer = msgs[0]["content"], msgs[1]["content"]
    _check(user == user.strip() and user != "", "user text must be non-empty and trimmed")

    obj = json.loads(answer)
    _check(isinstance(obj, dict) and list(obj) == ["intent", "slots"], "answer keys must be intent, slots")
    intent, slots = obj["intent"], obj["slots"]
    _check(intent in SLOT_ORDER, f"unknown intent {intent!r}")
    _check(isinstance(slots, dict), "slots must be an object")
    _check(answer == assistant_json(intent, slots), "answer is not canonical compact JSON")
    _check(set(slots) <= set(SLOT_ORDER[intent]), f"{intent}: unexpected slots {sorted(slots)}")
    _check(list(slots) == [k for k in SLOT_ORDER[intent] if k in slots], "slot order")
    for k in REQUIRED_SLOTS[intent]:
        _check(k in slots, f"{intent}: missing required slot {k}")

    for key, value in slots.items():
        _check(value is not None, f"{key}: null values are not allowed (omit the slot)")
        if key in FREE_TEXT_SLOTS:
            _check(isinstance(value, str) and value != "", f"{key} must be a non-empty string")
            _check(value == value.strip(), f"{key} not trimmed: {value!r}")
            _check(value[-1] not in TRAILING_PUNCT, f"{key} has trailing punctuation: {value!r}")
            _check(value in user, f"{key}={value!r} is not a substring of {user!r}")
        elif key == "time":
            _check(isinstance(value, str) and TIME_RE.match(value) is not None, f"bad time {value!r}")
        elif key == "day":
            _check(value in DAY_VALUES, f"bad day {value!r}")
        elif key == "seconds":
            _check(type(value) is int and value > 0, f"bad seconds {value!r}")
        elif key == "setting":
            _check(value in SETTINGS, f"bad setting {value!r}")
        elif key == "state":
            _check(value in STATES, f"bad state {value!r}")
        elif key == "level":
            _check(type(value) is int and 0 <= value <= 100, f"bad level {value!r}")
        elif key == "direction":
            _check(value in DIRECTIONS, f"bad direction {value!r}")
    if intent == "set_volume":
        _check(("level" in slots) != ("direction" in slots), "set_volume needs exactly one of level/direction")
    if intent == "unsupported":
        _check(slots == {}, "unsupported must have empty slots")


# ---------------------------------------------------------------------------
# Numbers, clock times and durations
# ---------------------------------------------------------------------------

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
        "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
        "seventeen", "eighteen", "nineteen"]
TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy",
        8: "eighty", 9: "ninety"}


def number_words(n: int, joiner: str = "-") -> str:
    """English words for 0..100 ("forty-five"; joiner=" " gives "forty five")."""
    if n < 20:
        return ONES[n]
    if n == 100:
        return "one hundred"
    tens, ones = divmod(n, 10)
    return TENS[tens] + ("" if ones == 0 else joiner + ONES[ones])


def indefinite_article(n: int) -> str:
    """'a' or 'an' for a spoken number ("an eight-minute", "a five-minute")."""
    spoken = number_words(n)
    return "an" if spoken[0] in "aeiou" and not spoken.startswith("one") else "a"


# Clock times.  Values are partitioned between train/val and test so that the
# test split measures generalisation to unseen times.  "noon"/"midnight" are
# fixed words and shared; the literal examples from the spec are pinned to train.
SHARED_TIMES = [(12, 0), (0, 0)]
TRAIN_PINNED_TIMES = [(7, 0), (20, 15), (18, 30), (19, 45), (19, 30), (20, 45)]


def time_split(h: int, m: int) -> str:
    """Which split owns the clock time h:m ('train', 'test' or 'shared')."""
    if (h, m) in SHARED_TIMES:
        return "shared"
    if (h, m) in TRAIN_PINNED_TIMES:
        return "train"
    return "test" if (h + m // 5) % 4 == 1 else "train"


def period_words(h: int) -> list[str]:
    """Day-period qualifiers that unambiguously fix am/pm for hour h (0..23)."""
    if 1 <= h <= 11:
        return ["in the morning"]
    if 12 <= h <= 16:
        return ["in the afternoon"]
    if 17 <= h <= 19:
        return ["in the evening"]
    if h == 20:
        return ["in the evening", "at night"]
    if 21 <= h <= 23:
        return ["at night"]
    return []


def minute_words(m: int) -> str:
    """'oh five', 'fifteen', 'forty-five' (m > 0)."""
    return "oh " + ONES[m] if m < 10 else number_words(m)


def time_phrases(h: int, m: int) -> dict[str, list[str]]:
    """All renderings of the 24h time h:m, grouped by style."""
    h12 = h % 12 or 12
    ampm = "am" if h < 12 else "pm"
    dotted = "a.m." if h < 12 else "p.m."
    hw = ONES[h12]
    styles: dict[str, list[str]] = {"h24": [f"{h:02d}:{m:02d}"]}
    if (h, m) == (12, 0):
        styles["special"] = ["noon", "midday", "12pm", "12 noon"]
        return styles
    if (h, m) == (0, 0):
        styles["special"] = ["midnight", "12am"]
        return styles
    if m == 0:
        styles["digits_ampm"] = [f"{h12}{ampm}", f"{h12} {ampm}", f"{h12} {dotted}", f"{h12}:00 {ampm}"]
        styles["words_ampm"] = [f"{hw} {ampm}"]
        if h != 12 and period_words(h):
            styles["words_period"] = [f"{hw} {p}" for p in period_words(h)]
            styles["oclock"] = [f"{hw} o'clock {p}" for p in period_words(h)]
    else:
        styles["digits_ampm"] = [f"{h12}:{m:02d}{ampm}", f"{h12}:{m:02d} {ampm}", f"{h12}:{m:02d} {dotted}"]
        styles["words_ampm"] = [f"{hw} {minute_words(m)} {ampm}"]
        if period_words(h):
            styles["words_period"] = [f"{hw} {minute_words(m)} {p}" for p in period_words(h)]
    # "quarter past eight", "twenty to six": the spoken hour differs for "to".
    rel = None
    if m in (5, 10, 15, 20, 25, 30) and h not in (0,):
        amount = {15: "quarter", 30: "half"}.get(m, number_words(m))
        rel = f"{amount} past {hw}"
    elif m in (35, 40, 45, 50, 55) and h not in (11, 23):
        amount = "quarter" if m == 45 else number_words(60 - m)
        rel = f"{amount} to {ONES[(h + 1) % 12 or 12]}"
    if rel:
        styles["relative_ampm"] = [f"{rel} {ampm}", f"{rel} {dotted}"]
        if period_words(h):
            styles["relative_period"] = [f"{rel} {p}" for p in period_words(h)]
    return styles


TIME_STYLE_WEIGHTS = {"digits_ampm": 3.0, "h24": 1.0, "words_ampm": 2.0, "words_period": 1.5,
                      "oclock": 0.6, "relative_ampm": 1.2, "relative_period": 1.2, "special": 3.0}

# Typical hours per intent, so that e.g. alarms are mostly early-morning.
TIME_HOURS = {
    "set_alarm": [4, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 9, 9, 10, 11, 13, 14, 15, 21, 22, 23, 0, 1],
    "create_reminder": [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22],
    "create_event": [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
}
MINUTE_CHOICES = [0, 0, 0, 0, 0, 15, 30, 30, 45, 10, 20, 40, 50, 5, 55, 25, 35]


def pick_time(rng: random.Random, split: str, intent: str) -> tuple[int, int]:
    """Pick a clock time owned by ``split`` (or shared) with intent-typical hours."""
    if rng.random() < 0.05:
        return rng.choice(SHARED_TIMES if intent == "set_alarm" else [(12, 0)])
    while True:
        h, m = rng.choice(TIME_HOURS[intent]), rng.choice(MINUTE_CHOICES)
        if time_split(h, m) == split:
            return h, m


def pick_phrase(rng: random.Random, styles: dict, weights: dict, style: str | None = None) -> str:
    """One phrasing from ``styles`` (style name -> phrasings), the style drawn by ``weights`` unless given."""
    if style is None:
        names = list(styles)
        style = rng.choices(names, weights=[weights[s] for s in names])[0]
    return rng.choice(styles[style])


def render_time(rng: random.Random, h: int, m: int, style: str | None = None) -> str:
    return pick_phrase(rng, time_phrases(h, m), TIME_STYLE_WEIGHTS, style)


# --- Train/val clock times -------------------------------------------------
# Train and val draw from every clock time that ``time_split`` gives to train
# (about three quarters of all 1440 minutes), with intent-typical hour weights,
# and render them in more styles than v1.  The test code above is frozen.

TRAIN_HOUR_WEIGHTS = {
    "set_alarm": [1, 1, 1, 1, 2, 4, 6, 6, 5, 4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
    "create_reminder": [0.5, 0.3, 0.3, 0.3, 0.3, 0.5, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
                        2, 2, 2, 1.5, 1],
    "create_event": [0.3, 0.2, 0.2, 0.2, 0.2, 0.3, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
                     2, 2, 1.5, 1, 0.5],
}


def pick_time_train(rng: random.Random, intent: str) -> tuple[int, int]:
    """A train-owned (or shared) clock time: any hour, round and odd minutes."""
    if rng.random() < 0.04:
        return rng.choice(SHARED_TIMES if intent == "set_alarm" else [(12, 0)])
    while True:
        h = rng.choices(range(24), weights=TRAIN_HOUR_WEIGHTS[intent])[0]
        r = rng.random()
        if r < 0.3:
            m = 0
        elif r < 0.65:
            m = rng.choice(range(5, 60, 5))
        else:
            m = rng.randint(1, 59)
        if time_split(h, m) == "train":
            return h, m


def time_phrases_train(h: int, m: int) -> dict[str, list[str]]:
    """Train renderings of h:m: the v1 styles plus more surface forms."""
    styles = {k: list(v) for k, v in time_phrases(h, m).items()}
    if (h, m) in SHARED_TIMES:
        return styles
    h12 = h % 12 or 12
    ampm = "am" if h < 12 else "pm"
    hw = ONES[h12]
    periods = period_words(h) if h != 12 or m else []
    digits = f"{h12}" if m == 0 else f"{h12}:{m:02d}"
    styles["digits_ampm"] += [f"{digits}{ampm.upper()}", f"{digits} {ampm.upper()}"]
    if m > 20 and m % 10:
        # "seven forty five pm" (space instead of hyphen)
        styles["words_ampm"].append(f"{hw} {number_words(m, ' ')} {ampm}")
    if periods:
        styles["digits_period"] = [f"{digits} {p}" for p in periods]
    # Relative forms: v1 skips midnight hour "past" and 11/23 "to"; name those
    # with noon/midnight instead, and add digit hours ("half past 7 pm").
    amount_past = {15: "quarter", 30: "half"}
    rel_words, rel_digits = [], []
    if m in (5, 10, 15, 20, 25, 30):
        amount = amount_past.get(m, number_words(m))
        if h == 0:
            rel_words.append(f"{amount} past midnight")
        elif h == 12 and m in (15, 30):
            rel_words.append(f"{amount} past noon")
        else:
            rel_digits.append(f"{amount} past {h12}")
    elif m in (35, 40, 45, 50, 55):
        amount = "quarter" if m == 45 else number_words(60 - m)
        if h == 11:
            rel_words.append(f"{amount} to noon")
        elif h == 23:
            rel_words.append(f"{amount} to midnight")
        else:
            rel_digits.append(f"{amount} to {(h + 1) % 12 or 12}")
    if rel_words:
        styles["relative_fixed"] = rel_words
    if rel_digits:
        styles["relative_digits"] = [f"{r} {ampm}" for r in rel_digits] + \
            [f"{r} {p}" for r in rel_digits for p in periods]
    return styles


TIME_STYLE_WEIGHTS_TRAIN = {
    "digits_ampm": 3.0, "h24": 1.4, "words_ampm": 2.4, "words_period": 1.4, "digits_period": 1.0,
    "oclock": 0.6, "relative_ampm": 1.0, "relative_period": 1.0, "relative_digits": 0.8,
    "relative_fixed": 1.5, "special": 3.0,
}


def render_time_train(rng: random.Random, h: int, m: int, style: str | None = None) -> str:
    return pick_phrase(rng, time_phrases_train(h, m), TIME_STYLE_WEIGHTS_TRAIN, style)


# Timer durations.  Numeric values are split between train/val and test; a few
# tricky fixed phrases are shared on purpose so both splits contain them.
# Only the test pool is used now: train/val draw from TRAIN_SPECS (below),
# which replaced the v1 train pool of 32 values.
DURATIONS = {
    "test": {
        "sec": [25, 35, 50, 75],
        "min": [6, 9, 11, 13, 14, 16, 18, 35, 50, 55],
        "hr": [4, 5],
        "hm": [(1, 5), (1, 40), (2, 20), (3, 10)],
        "phrase": [("three and a half minutes", 210), ("four and a half minutes", 270),
                   ("three and a half hours", 12600)],
    },
}
SHARED_DURATION_PHRASES = [("an hour and a half", 5400), ("two and a half minutes", 150),
                           ("half an hour", 1800)]
SHARED_SECONDS = {s for _, s in SHARED_DURATION_PHRASES}
DURATION_KIND_WEIGHTS = {"sec": 2, "min": 6, "hr": 1.2, "hm": 1.2, "phrase": 1, "shared": 1.3}


def pick_duration(rng: random.Random, split: str, adjectival: bool = False) -> tuple:
    """A duration spec: ('sec'|'min'|'hr', n), ('hm', h, m) or ('phrase', text, secs)."""
    pool = DURATIONS[split]
    kinds = ["sec", "min", "hr"] if adjectival else list(DURATION_KIND_WEIGHTS)
    kind = rng.choices(kinds, weights=[DURATION_KIND_WEIGHTS[k] for k in kinds])[0]
    if kind == "shared":
        return ("phrase",) + rng.choice(SHARED_DURATION_PHRASES)
    if kind == "phrase":
        return ("phrase",) + rng.choice(pool["phrase"])
    if kind == "hm":
        return ("hm",) + rng.choice(pool["hm"])
    return (kind, rng.choice(pool[kind]))


def duration_seconds(spec: tuple) -> int:
    kind = spec[0]
    if kind == "phrase":
        return spec[2]
    if kind == "hm":
        return spec[1] * 3600 + spec[2] * 60
    return spec[1] * {"sec": 1, "min": 60, "hr": 3600}[kind]


def _num(rng: random.Random, n: int) -> str:
    """Digits or words for n, e.g. '20' / 'twenty'."""
    return str(n) if rng.random() < 0.55 else number_words(n, rng.choice(["-", "-", " "]))


def render_duration(rng: random.Random, spec: tuple) -> str:
    """Spoken form of a duration spec ('5 min', 'ninety seconds', '1 hour and 20 minutes')."""
    kind = spec[0]
    if kind == "phrase":
        return spec[1]
    if kind == "hm":
        h, m = spec[1], spec[2]
        hour = rng.choice(["an hour", "1 hour", "one hour", "1 hr"]) if h == 1 else \
            rng.choice([f"{h} hours", f"{number_words(h)} hours", f"{h} hrs"])
        minute = rng.choice([f"{m} minutes", f"{m} min", f"{number_words(m)} minutes"])
        return hour + rng.choice([" ", " and "]) + minute
    n = spec[1]
    if kind == "sec":
        return rng.choice([f"{n} seconds", f"{n} secs", f"{n} sec",
                           f"{number_words(n)} seconds", f"{number_words(n)} seconds"])
    if kind == "min":
        if n == 1:
            return rng.choice(["1 minute", "one minute", "a minute", "1 min"])
        return rng.choice([f"{n} minutes", f"{n} mins", f"{n} min", f"{_num(rng, n)} minutes"])
    if n == 1:
        return rng.choice(["1 hour", "one hour", "an hour", "1 hr"])
    return rng.choice([f"{n} hours", f"{n} hrs", f"{number_words(n)} hours"])


def render_duration_adjective(rng: random.Random, spec: tuple) -> str:
    """Article + adjectival duration: 'a 5 minute', 'an eight-minute', 'a 30-second'."""
    kind, n = spec
    unit = {"sec": "second", "min": "minute", "hr": "hour"}[kind]
    body = rng.choice([f"{n} {unit}", f"{n}-{unit}", f"{number_words(n)}-{unit}"])
    return f"{indefinite_article(n)} {body}"


# --- Train/val timer durations ----------------------------------------------
# Wide generated pools: every spec whose value in seconds is a test value
# (other than the deliberately shared phrases) is removed, so test durations
# stay unseen.  Spec kinds beyond v1: ('ms', m, s) "2 min 15 sec" and
# ('half', unit, n) "5 and a half minutes" / "2.5 hours".

TEST_DURATION_SECONDS = {duration_seconds((k, *(v if isinstance(v, tuple) else (v,))))
                         for k, vs in DURATIONS["test"].items() for v in vs}
FORBIDDEN_TRAIN_SECONDS = TEST_DURATION_SECONDS - SHARED_SECONDS
TRAIN_DURATION_PHRASES = [
    ("a minute and a half", 90), ("a quarter of an hour", 900), ("quarter of an hour", 900),
    ("three quarters of an hour", 2700), ("half a minute", 30), ("a half hour", 1800),
    ("an hour and a quarter", 4500), ("a couple of minutes", 120), ("a couple of hours", 7200),
    ("a couple minutes", 120),
]
TRAIN_DURATION_KIND_WEIGHTS = {"min": 8, "sec": 4, "hr": 1.2, "hm": 1.6, "ms": 0.8, "half": 1,
                               "phrase": 0.5, "shared": 0.4}


def duration_seconds_train(spec: tuple) -> int:
    """duration_seconds plus the train-only kinds 'ms' and 'half'."""
    if spec[0] == "ms":
        return spec[1] * 60 + spec[2]
    if spec[0] == "half":
        return (2 * spec[2] + 1) * {"min": 30, "hr": 1800}[spec[1]]
    return duration_seconds(spec)


def _train_specs() -> dict[str, list[tuple[tuple, float]]]:
    """kind -> [(spec, weight)] for train/val, with every test value removed."""
    # sec / min / hr are dealt from decks (see DeckRandom), so the weight is an
    # integer number of copies per deck: every value comes up once per pass.
    specs: dict[str, list[tuple[tuple, float]]] = {
        "sec": [(("sec", n), 2 if n % 5 == 0 and n <= 60 else 1) for n in range(5, 121)],
        "min": [(("min", n), 2 if n <= 30 or (n <= 60 and n % 5 == 0) or n % 15 == 0 else 1)
                for n in range(1, 181)],
        "hr": [(("hr", n), 2 if n <= 3 else 1) for n in range(1, 13)],
        "hm": [(("hm", h, m), (3 if m % 5 == 0 else 1) / h) for h in (1, 2, 3, 4) for m in range(1, 60)],
        "ms": [(("ms", m, s), 1) for m in range(1, 11) for s in (5, 10, 15, 20, 30, 40, 45, 50)],
        "half": [(("half", "min", n), 1) for n in range(1, 21)] +
                [(("half", "hr", n), 1) for n in range(1, 12)],
        "phrase": [(("phrase", t, v), 1) for t, v in TRAIN_DURATION_PHRASES],
    }
    return {k: [(spec, w) for spec, w in v
                if duration_seconds_train(spec) not in FORBIDDEN_TRAIN_SECONDS]
            for k, v in specs.items()}


TRAIN_SPECS = _train_specs()


class DeckRandom(random.Random):
    """random.Random that can also deal pool items like cards: without
    replacement, reshuffling a fresh deck when one runs out.  One pass over a
    deck covers every item before any repeats, so the wide numeric pools are
    covered (almost) completely instead of by chance."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self._decks: dict[str, list] = {}

    def deal(self, key: str, items: list):
        deck = self._decks.get(key)
        if not deck:
            deck = list(items)
            self.shuffle(deck)
            self._decks[key] = deck
        return deck.pop()


DECK_KINDS = ("sec", "min", "hr")


def pick_duration_train(rng: DeckRandom, adjectival: bool = False) -> tuple:
    kinds = list(DECK_KINDS) if adjectival else list(TRAIN_DURATION_KIND_WEIGHTS)
    kind = rng.choices(kinds, weights=[TRAIN_DURATION_KIND_WEIGHTS[k] for k in kinds])[0]
    if kind == "shared":
        return ("phrase",) + rng.choice(SHARED_DURATION_PHRASES)
    pool = TRAIN_SPECS[kind]
    if kind in DECK_KINDS:
        return rng.deal(kind, [sp for sp, copies in pool for _ in range(copies)])
    return rng.choices([sp for sp, _ in pool], weights=[w for _, w in pool])[0]


def _num_train(rng: random.Random, n: int, words_share: float = 0.4) -> str:
    """Digits or words for n (numbers over 100 are always digits)."""
    if n > 100 or rng.random() >= words_share:
        return str(n)
    return number_words(n, rng.choice(["-", "-", " "]))


def _unit_train(rng: random.Random, n: int, kind: str, compact: bool = True) -> str:
    """'5 min', 'five minutes', '5m', '1 hr', 'an hour', '45s' (compact=False: no '5m')."""
    if n == 1:
        forms = {"sec": ["1 second", "one second"],
                 "min": ["1 minute", "one minute", "a minute", "1 min"],
                 "hr": ["1 hour", "one hour", "an hour", "1 hr"]}[kind]
        if compact and kind != "sec":
            forms = forms + [f"1{kind[0]}"]
        return rng.choice(forms)
    if compact and rng.random() < 0.12:
        return f"{n}{kind[0]}"  # 45s, 5m, 2h
    units = {"sec": ["seconds", "seconds", "secs", "sec"],
             "min": ["minutes", "minutes", "mins", "min"],
             "hr": ["hours", "hours", "hrs", "hr"]}[kind]
    num = _num_train(rng, n)
    if not num.isdigit():
        units = units[:2]  # "five minutes", not "five mins"
    return f"{num} {rng.choice(units)}"


def render_duration_train(rng: random.Random, spec: tuple) -> str:
    """Spoken/typed form of a train duration spec."""
    kind = spec[0]
    if kind == "phrase":
        return spec[1]
    if kind in ("hm", "ms"):
        big, small = ("hr", "min") if kind == "hm" else ("min", "sec")
        a, b = spec[1], spec[2]
        if rng.random() < 0.12:
            return f"{a}{big[0]}{rng.choice(['', ' '])}{b}{small[0]}"  # 1h30m, 2m 15s
        return (_unit_train(rng, a, big, compact=False) + rng.choice([" ", " and ", " and ", ", "])
                + _unit_train(rng, b, small, compact=False))
    if kind == "half":
        unit, n = spec[1], spec[2]
        word = {"min": "minute", "hr": "hour"}[unit]
        if n == 1:
            lead = "a minute and a half" if unit == "min" else "an hour and a half"
            return rng.choice([lead, f"one and a half {word}s", f"1.5 {word}s",
                               f"1 and a half {word}s"])
        forms = [f"{_num_train(rng, n, 0.6)} and a half {word}s", f"{n} and a half {word}s"]
        if unit == "hr" or n <= 10:
            forms.append(f"{n}.5 {word}s")  # "2.5 hours", not "16.5 minutes"
        return rng.choice(forms)
    return _unit_train(rng, spec[1], kind)


def render_duration_adjective_train(rng: random.Random, spec: tuple) -> str:
    """'a 5 minute', 'an eight-minute', 'a 90-second', 'a 120 minute'."""
    kind, n = spec
    unit = {"sec": "second", "min": "minute", "hr": "hour"}[kind]
    forms = [f"{n} {unit}", f"{n}-{unit}"]
    if n <= 100:
        forms.append(f"{number_words(n)}-{unit}")
    article = indefinite_article(n) if n <= 100 else "a"
    return f"{article} {rng.choice(forms)}"


# Volume levels (0 and 100 come from the mute / max templates).
VOLUME_LEVELS = {"test": [15, 35, 45, 55, 65, 85, 95]}  # train/val: TRAIN_VOLUME_LEVELS


def render_level(rng: random.Random, n: int) -> str:
    return rng.choice([str(n), f"{n}%", f"{n} percent", number_words(n), f"{number_words(n)} percent"])


# Train/val levels: every level 0-100 the test split does not use, dealt from
# a deck (multiples of ten twice per deck).  v1 train used only 11 levels.
TRAIN_VOLUME_LEVELS = [n for n in range(0, 101) if n not in VOLUME_LEVELS["test"]]
TRAIN_VOLUME_DECK = TRAIN_VOLUME_LEVELS + [n for n in TRAIN_VOLUME_LEVELS if n % 10 == 0]


def render_level_train(rng: random.Random, n: int) -> str:
    words = number_words(n, rng.choice(["-", " "]))
    return rng.choice([str(n), str(n), f"{n}%", f"{n} percent", words, f"{words} percent"])


def render_day(rng: random.Random, adverbial: bool) -> tuple[str, str]:
    """(phrase, day value).  Adverbial form can stand alone: 'on Friday', 'tomorrow'."""
    value = rng.choices(DAY_VALUES, weights=[3, 4, 1, 1, 1, 1, 1, 1, 1])[0]
    if value == "today":
        return "today", value
    if value == "tomorrow":
        return rng.choices(["tomorrow", "tmrw", "tomorow"], weights=[18, 1, 1])[0], value
    name = value if rng.random() < 0.5 else value.capitalize()
    if adverbial:
        return rng.choice([f"on {name}", f"on {name}", f"next {name}", f"this {name}"]), value
    return rng.choice([name, name, f"next {name}", f"this {name}"]), value


# How each setting may be named in a command.
SETTING_FORMS = {
    "wifi": ["wifi", "wi-fi", "WiFi", "Wi-Fi", "the wifi", "the Wi-Fi"],
    "bluetooth": ["bluetooth", "Bluetooth", "the bluetooth"],
    "flashlight": ["flashlight", "the flashlight", "torch", "the torch"],
    "do_not_disturb": ["do not disturb", "Do Not Disturb", "dnd", "DND", "do not disturb mode"],
    "airplane_mode": ["airplane mode", "flight mode", "aeroplane mode", "plane mode", "Airplane Mode"],
}
MODES = ["do_not_disturb", "airplane_mode"]

# ---------------------------------------------------------------------------
# Value pools.  POOLS["train"] feeds train and val, POOLS["test"] feeds test.
# ---------------------------------------------------------------------------

POOLS = {
    "train": {
        "contact": [
            "Emma", "Liam", "Olivia", "Noah", "Ava", "Ethan", "Sophia", "Mason", "Isabella",
            "Lucas", "Mia", "Oliver", "Amelia", "James", "Harper", "Benjamin", "Charlotte",
            "Henry", "Evelyn", "Daniel", "Priya", "Arjun", "Wei", "Mei", "Carlos", "Sofia",
            "Mateo", "Fatima", "Omar", "Aisha", "Yuki", "Kenji", "Chloe", "Jack", "Grace",
            "Leo", "Nora", "Sam", "Zoe", "Max", "John Smith", "Maria Garcia", "David Lee",
            "Sarah Johnson", "Michael Brown", "Emily Davis", "Ahmed Khan", "Anna Müller",
            "Luca Rossi", "Hannah Kim", "Raj Patel", "Laura Martin", "Tom Wilson",
            "Jessica Taylor", "Kevin O'Brien", "Nina Petrova", "José Hernández", "Mom", "Dad",
            "Grandma", "Uncle Joe", "Dr. Adams",
        ],
        "text": [
            "I'm running late", "see you at 8", "on my way", "can you pick up milk on the way home",
            "happy birthday", "call me when you get this", "dinner is ready",
            "I'll be home in 20 minutes", "don't forget your keys", "the meeting moved to 3pm",
            "love you", "good luck today", "where are you", "I'm outside",
            "let's grab coffee sometime", "thanks for yesterday", "are we still on for tonight",
            "I left my charger at your place", "running 10 minutes late", "can we talk later",
            "the kids are asleep", "I got the tickets", "miss you", "call you back in five",
            "parking is full so I'm around the corner", "bring a jacket it's cold", "just landed",
            "traffic is terrible", "see you soon", "what time is the party", "I'm at the front door",
            "ok sounds good", "I'll pick you up at 6", "lunch is on me", "check your email",
            "we need more coffee", "the game starts at 7", "congrats on the new job",
            "don't wait up for me",
        ],
        "song": [
            "Bohemian Rhapsody", "Hotel California", "Shape of You", "Blinding Lights", "Wonderwall",
            "Rolling in the Deep", "Billie Jean", "Imagine", "Hey Jude", "Dancing Queen",
            "Smells Like Teen Spirit", "Lose Yourself", "Bad Guy", "Take On Me", "Sweet Caroline",
            "Levitating", "Yellow", "Africa", "Thriller", "Halo", "Clocks", "Let It Be",
            "Hallelujah", "Uptown Funk",
        ],
        "artist": [
            "Queen", "Eagles", "Ed Sheeran", "The Weeknd", "Oasis", "Adele", "Michael Jackson",
            "John Lennon", "The Beatles", "ABBA", "Nirvana", "Eminem", "Billie Eilish", "a-ha",
            "Neil Diamond", "Dua Lipa", "Coldplay", "Toto", "Beyoncé", "Taylor Swift", "Drake",
            "Daft Punk", "Bruno Mars", "Miles Davis",
        ],
        "song_by": [
            "Bohemian Rhapsody by Queen", "Hotel California by Eagles", "Shape of You by Ed Sheeran",
            "Blinding Lights by The Weeknd", "Wonderwall by Oasis", "Rolling in the Deep by Adele",
            "Billie Jean by Michael Jackson", "Imagine by John Lennon", "Hey Jude by The Beatles",
            "Dancing Queen by ABBA", "Smells Like Teen Spirit by Nirvana", "Lose Yourself by Eminem",
            "Bad Guy by Billie Eilish", "Take On Me by a-ha", "Sweet Caroline by Neil Diamond",
            "Levitating by Dua Lipa", "Yellow by Coldplay", "Africa by Toto", "Halo by Beyoncé",
            "Thriller by Michael Jackson", "Clocks by Coldplay", "Let It Be by The Beatles",
        ],
        "genre": ["jazz", "classical", "rock", "hip hop", "country", "lo-fi", "pop", "indie",
                  "EDM", "R&B", "soul", "piano"],
        "query": [
            "best pizza recipe", "how tall is the eiffel tower", "cheap flights to Lisbon",
            "symptoms of the flu", "how to tie a tie", "python list comprehension",
            "who won the world cup in 2018", "population of Canada", "how many ounces in a cup",
            "best running shoes", "how to change a flat tire", "banana bread recipe",
            "what is a black hole", "Marvel movies in order", "how to remove a wine stain",
            "distance from earth to the moon", "tips for better sleep",
            "how old are the pyramids of Giza", "reviews for the iPhone 15", "used cars near me",
            "how to boil an egg", "history of the Roman empire", "vegan lasagna recipe",
            "how do vaccines work", "best hiking trails near Denver", "meaning of serendipity",
            "NBA scores", "cheap hotels in Rome", "how to unclog a drain",
            "how long to cook a turkey", "who wrote Pride and Prejudice", "Apple stock price",
            "easy chicken curry recipe", "how to learn guitar", "what is inflation",
            "how many calories in an avocado", "when is the next full moon",
            "home remedies for a sore throat",
        ],
        "destination": [
            "the airport", "221 Baker Street", "Central Park", "the nearest gas station",
            "Union Station", "the train station", "Golden Gate Bridge", "1600 Pennsylvania Avenue",
            "the closest pharmacy", "Times Square", "Chicago", "Boston", "the office", "Walmart",
            "Starbucks on Main Street", "42 Elm Street", "Mom's house", "the hospital",
            "Disneyland", "the beach", "the town center", "the nearest ATM", "Fisherman's Wharf",
            "the library", "Seattle", "Heathrow Airport", "the mall", "Oak Ridge High School",
            "350 Fifth Avenue", "the gym",
        ],
        "location": [
            "London", "Paris", "New York", "Tokyo", "San Francisco", "Berlin", "Sydney", "Toronto",
            "Madrid", "Mumbai", "Seoul", "Miami", "Dublin", "Cape Town", "Austin", "Rome",
            "Amsterdam", "Mexico City", "Vancouver", "Singapore", "Bangkok", "Cairo", "Atlanta",
            "São Paulo",
        ],
        "reminder": [
            "buy milk", "call the plumber", "water the plants", "take out the trash",
            "pay the electricity bill", "pick up the dry cleaning", "take my medication",
            "book a dentist appointment", "send the report to Mark", "stretch", "drink water",
            "check the oven", "move the car", "submit my timesheet", "call Grandma",
            "buy a birthday gift for Emma", "charge my phone", "walk the dog",
            "back up my laptop", "return the library books", "cancel the gym membership",
            "email the landlord", "pick up the kids from school", "defrost the chicken",
            "buy stamps", "lock the front door", "order more printer ink", "call the bank",
        ],
        "title": [
            "Team standup", "Dentist appointment", "Lunch with Priya", "Project review", "Book club",
            "Soccer practice", "Parent teacher conference", "Doctor's appointment", "Date night",
            "Yoga class", "Budget meeting", "Coffee with Sam", "Piano lesson", "Haircut",
            "Sprint planning", "Birthday party", "Job interview", "Car service", "Family dinner",
            "One on one with Laura", "Guitar lesson", "Client call", "Movie night", "Study group",
            "Board meeting", "Team lunch", "Gym session", "Code review", "Wedding rehearsal",
        ],
        "label": ["gym", "meds", "work", "morning run", "yoga", "school run", "catch the train",
                  "wake up", "take the bins out", "Workout", "Get up"],
        # Non-slot fillers for unsupported requests.
        "food": ["pizza", "burger", "burrito", "large pepperoni pizza", "chicken sandwich",
                 "salad", "bowl of ramen"],
        "restaurant": ["Luigi's", "the Golden Dragon", "Chipotle", "Sushi Palace"],
        "topic": ["cats", "programmers", "the ocean", "pizza", "doctors", "penguins"],
        "language": ["French", "Spanish", "German", "Italian", "Japanese"],
        "phrase": ["hello", "good morning", "thank you", "where is the bathroom", "I love you",
                   "how much does this cost"],
        "item": ["AA batteries", "a phone charger", "paper towels", "a yoga mat"],
    },
    "test": {
        "contact": [
            "Isla", "Mohammed", "Elena", "Hugo", "Ingrid", "Tariq", "Beatriz", "Kofi", "Siobhan",
            "Dmitri", "Ananya", "Rafael", "Mariko", "Felix", "Astrid", "Jamal", "Leila", "Tobias",
            "Chiara", "Nikhil", "Rebecca Thompson", "Jorge Ramirez", "Ling Zhao", "Patrick Murphy",
            "Fiona Campbell", "Sanjay Gupta", "Olga Ivanova", "Marcus Bell", "Camille Dubois",
            "Kwame Mensah", "Grandpa", "Aunt Linda", "Dr. Nguyen", "Coach Miller",
        ],
        "text": [
            "running a bit behind schedule", "the package just arrived", "save me a seat",
            "I left the spare key under the mat", "the babysitter cancelled",
            "practice is cancelled", "can you feed the dog", "my train is delayed",
            "I'll bring dessert", "meet me by the fountain", "did you lock the back door",
            "heading to the gym now", "pizza is here", "the wifi password is on the fridge",
            "happy anniversary", "we won the match", "I'm stuck in a meeting",
            "the car needs gas", "tickets are sold out", "I found your wallet", "almost there",
            "get well soon", "the show starts in 10 minutes",
        ],
        "song": ["Purple Rain", "Superstition", "Riptide", "Mr. Brightside", "Seven Nation Army",
                 "Valerie", "Respect", "Heroes", "Zombie", "Wannabe", "Jolene", "Royals", "Creep",
                 "Dreams"],
        "artist": ["Prince", "Stevie Wonder", "Vance Joy", "The Killers", "Amy Winehouse",
                   "Aretha Franklin", "David Bowie", "The Cranberries", "Spice Girls", "Lorde",
                   "Radiohead", "Fleetwood Mac", "Norah Jones", "Bob Marley", "Kendrick Lamar",
                   "Shakira", "Frank Sinatra", "BTS"],
        "song_by": ["Purple Rain by Prince", "Superstition by Stevie Wonder", "Riptide by Vance Joy",
                    "Mr. Brightside by The Killers", "Seven Nation Army by The White Stripes",
                    "Valerie by Amy Winehouse", "Respect by Aretha Franklin", "Heroes by David Bowie",
                    "Zombie by The Cranberries", "Wannabe by Spice Girls", "Jolene by Dolly Parton",
                    "Royals by Lorde", "Creep by Radiohead", "Dreams by Fleetwood Mac"],
        "genre": ["reggae", "bossa nova", "heavy metal", "k-pop", "blues", "ambient", "funk",
                  "salsa", "gospel", "punk", "techno", "folk"],
        "query": [
            "how to repot a cactus", "fastest land animal", "who painted the Mona Lisa",
            "gluten free pancake recipe", "how deep is the Mariana Trench", "train times to Edinburgh",
            "what causes the northern lights", "how to fold a fitted sheet",
            "largest desert in the world", "how to make cold brew coffee", "best budget laptops",
            "how do solar panels work", "opening hours of the Louvre", "how to get rid of fruit flies",
            "difference between a frog and a toad", "how many bones are in the human body",
            "sourdough starter instructions", "who invented the telephone", "how to knit a scarf",
            "cheapest time to fly to Tokyo", "signs of dehydration", "how to clean a cast iron pan",
            "what is machine learning", "tallest building in the world",
        ],
        "destination": [
            "the nearest EV charging station", "Grand Central Terminal", "the ferry terminal",
            "88 Maple Avenue", "the zoo", "Niagara Falls", "the closest hardware store",
            "Union Square", "the stadium", "Portland", "the post office", "Pike Place Market",
            "the dentist's office", "Lakeview Hospital", "15 Orchard Lane", "the nearest coffee shop",
            "Denver International Airport", "the campground", "the Museum of Modern Art",
            "Riverside Park",
        ],
        "location": ["Oslo", "Buenos Aires", "Nairobi", "Reykjavik", "Kyoto", "Montreal", "Prague",
                     "Auckland", "Lima", "Istanbul", "Edinburgh", "Phoenix", "Hanoi", "Vienna",
                     "Marrakech", "Helsinki", "Cork"],
        "reminder": [
            "renew my passport", "feed the fish", "clean the gutters", "schedule a haircut",
            "buy batteries", "mail the rent check", "pick up the prescription",
            "change the air filter", "call the insurance company", "bring the umbrella back to Felix",
            "take vitamins", "check the tire pressure", "order a new phone case", "repaint the fence",
            "water the garden", "register for the marathon", "return the rental car",
            "print the boarding passes", "thaw the salmon", "reply to the landlord",
        ],
        "title": ["Quarterly planning", "Vet appointment", "Coffee with Elena", "Swimming lesson",
                  "Design review", "Volunteer shift", "Eye exam", "Farewell party", "Product demo",
                  "Chess club", "Physio session", "Investor meeting", "Dance recital", "Open house",
                  "Mortgage meeting", "Team offsite", "Hackathon kickoff", "Pottery class"],
        "label": ["laundry", "feed the cat", "pick up kids", "Pilates", "swim practice", "flight",
                  "bake bread", "church"],
        "food": ["pepperoni calzone", "bubble tea", "kebab", "green curry"],
        "restaurant": ["Nando's", "the Blue Door Bistro", "Taco Fiesta"],
        "topic": ["dinosaurs", "astronauts", "coffee", "robots"],
        "language": ["Portuguese", "Korean", "Dutch", "Swahili"],
        "phrase": ["good night", "see you later", "nice to meet you", "excuse me"],
        "item": ["dish soap", "a desk lamp", "running socks"],
    },
}
# v2: wider train/val value pools (the test pools above are unchanged).
TRAIN_POOL_ADDITIONS = {
    "contact": [
        "Lily", "Ella", "Ryan", "Jacob", "Zara", "Ivan", "Sven", "Ines", "Pedro", "Ali", "Hiro",
        "Tanya", "Greta", "Bilal", "Nadia", "Theo", "Ruby", "Oscar", "Maya", "Finn", "Chen Wei",
        "Peter Park", "Sara Lopez", "Ben Cohen", "Aunt Mary", "Uncle Bob", "Mrs. Patel",
        "Dr. Lopez", "Gabriel Silva", "Emily Chen", "Owen", "Lucy", "Kate Moore", "Big Mike",
    ],
    "text": [
        "I'll call you tonight", "can you send me the address", "the door code is 4512",
        "I'm stuck in traffic", "good morning sunshine", "don't forget the cake",
        "we're out of bread", "I'll be there in 5", "how was the interview",
        "the concert got moved to Saturday", "can you walk the dog tonight", "I'm leaving work now",
        "text me when you land", "keep the change", "the plumber is coming at noon",
        "happy Friday", "I'm at the pharmacy", "sorry I missed your call", "meet you at the station",
        "dinner at 7 works for me",
    ],
    "song": [
        "Yesterday", "Stairway to Heaven", "Someone Like You", "Watermelon Sugar", "Old Town Road",
        "Despacito", "Believer", "Happy", "Counting Stars", "Roar", "Shallow",
        "Viva la Vida", "Sweet Child O' Mine", "Hound Dog",
    ],
    "artist": [
        "Harry Styles", "Lil Nas X", "Luis Fonsi", "Imagine Dragons", "Pharrell Williams",
        "OneRepublic", "Katy Perry", "Lady Gaga", "Guns N' Roses", "Led Zeppelin", "Elvis Presley",
        "Rihanna", "Ariana Grande", "Bob Dylan", "Pink Floyd",
    ],
    "song_by": [
        "Yesterday by The Beatles", "Stairway to Heaven by Led Zeppelin",
        "Someone Like You by Adele", "Watermelon Sugar by Harry Styles",
        "Old Town Road by Lil Nas X", "Despacito by Luis Fonsi", "Believer by Imagine Dragons",
        "Happy by Pharrell Williams", "Counting Stars by OneRepublic", "Roar by Katy Perry",
        "Shallow by Lady Gaga", "Viva la Vida by Coldplay", "Sweet Child O' Mine by Guns N' Roses",
        "Hound Dog by Elvis Presley",
    ],
    "genre": ["disco", "opera", "house", "acoustic", "synthwave", "grunge", "bluegrass", "latin",
              "chillhop", "90s pop"],
    "query": [
        "how to make pancakes", "what is the speed of sound", "best coffee shops near me",
        "how to start a vegetable garden", "why do cats purr", "cheap car insurance",
        "how to write a resume", "what is bitcoin", "weekend getaways near Chicago",
        "how many teaspoons in a tablespoon", "easy dinner ideas", "how to get a passport",
        "who discovered penicillin", "how long do dogs live", "best books of the year",
        "how to stop hiccups", "what is the ozone layer", "how to meditate",
        "homemade pizza dough", "when does daylight saving time end",
    ],
    "destination": [
        "the nearest supermarket", "the bus station", "Target", "Costco", "the park",
        "Grandma's house", "the cinema", "JFK Airport", "the Empire State Building",
        "the Space Needle", "Wembley Stadium", "10 Downing Street", "500 Oak Street",
        "Brooklyn Bridge", "the farmers market", "the car wash", "the university",
        "Los Angeles", "San Diego", "Philadelphia", "the nearest police station", "work",
    ],
    "location": [
        "Los Angeles", "Barcelona", "Lisbon", "Munich", "Stockholm", "Copenhagen", "Hong Kong",
        "Shanghai", "Delhi", "Dubai", "Manila", "Lagos", "Melbourne", "Denver", "Boston",
        "Houston", "Athens", "Warsaw", "Zurich", "Seattle", "Chicago", "Glasgow",
    ],
    "reminder": [
        "feed the rabbit", "call Mom back", "buy eggs", "renew the car insurance", "book flights",
        "pick up Lily from practice", "send the invoice", "do the dishes", "clean the fridge",
        "mow the lawn", "pay rent", "take the chicken out of the freezer", "call the vet",
        "buy flowers for Sara", "check the mail", "update my phone", "pack my gym bag",
        "wish Dad happy birthday", "order contact lenses", "bring lunch",
    ],
    "title": [
        "Brunch with Mom", "Team retro", "Dinner with the Parkers", "Tennis lesson",
        "Trip to Boston", "Kids' recital", "Performance review", "Baby shower",
        "Spanish class", "Marketing sync", "Math tutoring", "Car inspection", "Staff meeting",
        "Running club", "Dentist checkup", "Game night", "Yoga with Zoe", "Lunch meeting",
        "Town hall", "Drinks with Ryan",
    ],
    "label": ["dentist", "vitamins", "standup", "nap", "feed the dog", "bus", "study",
              "water plants", "shift", "Prayer", "class", "walk the dog", "Meditation",
              "leave for work", "lunch", "soccer", "call Dad", "Run"],
    # Texts that read well after "that" ("tell Ann that dinner is ready").
    "text_stmt": [
        "I'm running late", "dinner is ready", "I'll be home in 20 minutes",
        "the meeting moved to 3pm", "I'm outside", "the kids are asleep", "I got the tickets",
        "traffic is terrible", "I'm at the front door", "I'll pick you up at 6", "lunch is on me",
        "we need more coffee", "the game starts at 7", "I left my charger at your place",
        "parking is full so I'm around the corner", "I'll call you tonight",
        "the door code is 4512", "I'm stuck in traffic", "we're out of bread", "I'll be there in 5",
        "the concert got moved to Saturday", "I'm leaving work now", "the plumber is coming at noon",
        "I'm at the pharmacy", "dinner at 7 works for me",
    ],
    "label_noun": ["gym", "meds", "work", "yoga", "school run", "Workout", "dentist", "vitamins",
                   "standup", "nap", "bus", "study", "shift", "class", "Meditation", "lunch",
                   "soccer", "morning run"],
    # Unsupported fillers.
    "app": ["Instagram", "YouTube", "Netflix", "TikTok", "the calculator", "Uber", "Gmail",
            "Facebook", "the App Store", "Snapchat"],
    "appliance": ["the living room lights", "the TV", "the air conditioning", "the heater",
                  "the coffee machine", "the kitchen lights", "the dishwasher", "the fan"],
    "other_setting": ["the hotspot", "location services", "dark mode", "NFC", "battery saver",
                      "auto-rotate", "night shift", "mobile data", "the screen reader"],
    "country": ["France", "Australia", "Brazil", "Japan", "Egypt", "Canada", "India", "Mexico"],
    "word": ["necessary", "rhythm", "definitely", "restaurant", "bureaucracy"],
}
for _key, _values in TRAIN_POOL_ADDITIONS.items():
    POOLS["train"].setdefault(_key, []).extend(_values)

# Pools whose values end up in free-text slots (the rest are unsupported fillers).
SLOT_POOLS = ["contact", "text", "song", "artist", "song_by", "genre", "query", "destination",
              "location", "reminder", "title", "label", "label_noun", "text_stmt"]

# Placeholder -> (slot name, pool name) for free-text slots.
FREE_TEXT_PLACEHOLDERS = {
    "contact": ("contact", "contact"), "text": ("text", "text"), "query": ("query", "query"),
    "song": ("query", "song"), "artist": ("query", "artist"), "song_by": ("query", "song_by"),
    "genre": ("query", "genre"), "destination": ("destination", "destination"),
    "location": ("location", "location"), "reminder": ("text", "reminder"),
    "title": ("title", "title"), "label": ("label", "label"),
    "label_noun": ("label", "label_noun"),  # labels that fit "a {label_noun} alarm" (train only)
    "text_stmt": ("text", "text_stmt"),  # statements that fit "tell X that ..." (train only)
}

# ---------------------------------------------------------------------------
# Phrasing templates.  A template is "text" or ("text", fixed_slots).
# Placeholders: {time} {iday}(day said but ignored) {day} {on_day} {dur}
# {a_dur_adj} {level} {setting} {bare_setting} + FREE_TEXT_PLACEHOLDERS.
# fixed_slots may carry "_settings" to restrict which settings fit the phrase.
# ---------------------------------------------------------------------------

ON, OFF = {"state": "on"}, {"state": "off"}
UP, DOWN = {"direction": "up"}, {"direction": "down"}
MUTE, MAX = {"level": 0}, {"level": 100}

TEMPLATES = {
    "train": {
        "set_alarm": [
            "set an alarm for {time}", "alarm {time}", "wake me up at {time}",
            "wake me {iday} at {time}", "set an alarm for {time} {iday}",
            "set an alarm at {time} called {label}", "alarm at {time} labeled {label}",
            "I need to be up at {time}", "set alrm for {time}",
            "set an alarm for {time} named {label}", "set my alarm for {time}",
            "alarm for {time} {iday} called {label}", "wake me up {iday} at {time}",
        ],
        "set_timer": [
            "set a timer for {dur}", "timer {dur}", "timer for {dur}", "start {a_dur_adj} timer",
            "countdown {dur}", "set timer {dur}", "buzz me in {dur}", "start a timer for {dur}",
            "{dur} timer", "set a tmer for {dur}", "alert me in {dur}",
        ],
        "send_message": [
            "text {contact} {text}", "text {contact} that {text_stmt}",
            "send a message to {contact} saying {text}", "message {contact}: {text}",
            "tell {contact} {text}", "send {contact} a text saying {text}", "sms {contact} {text}",
            "whatsapp {contact} saying {text}", "send a txt to {contact}: {text}",
            "shoot {contact} a message: {text}",
        ],
        "call": [
            "call {contact}", "ring {contact}", "phone {contact}", "dial {contact}",
            "give {contact} a call", "start a call with {contact}", "calll {contact}",
            "get {contact} on the phone", "video call {contact}", "call {contact} on speaker",
        ],
        "play_music": [
            "play {song}", "play {song_by}", "play some {genre}", "play {artist}",
            "put on some {genre}", "play music by {artist}", "i want to hear {song_by}",
            "shuffle {artist}", "play {genre} music", "put on {song}", "plya {song}",
            "play the song {song}", "listen to {artist}",
        ],
        "search_web": [
            "search for {query}", "google {query}", "look up {query}", "search the web for {query}",
            "find {query} online", "search {query}", "web search {query}", "serch for {query}",
            "look online for {query}", "search google for {query}",
        ],
        "navigate": [
            "navigate to {destination}", "take me to {destination}", "directions to {destination}",
            "how do i get to {destination}", "get directions to {destination}",
            "drive me to {destination}", "start navigation to {destination}",
            "route to {destination}", "navgate to {destination}", "show me the way to {destination}",
        ],
        "get_weather": [
            "what's the weather", "what's the weather like in {location}", "weather {day}",
            "weather in {location}", "weather in {location} {day}", "is it going to rain {on_day}",
            "will it rain in {location} {on_day}", "how hot will it be in {location} {on_day}",
            "do i need an umbrella {on_day}", "what's the forecast for {day}",
            "forecast {location}", "how cold is it in {location}", "whats the wether in {location}",
            "what's the temperature outside",
        ],
        "create_reminder": [
            "remind me to {reminder}", "remind me to {reminder} at {time}",
            "remind me {on_day} to {reminder}", "remind me to {reminder} {on_day} at {time}",
            "set a reminder to {reminder}", "set a reminder for {day} at {time} to {reminder}",
            "don't let me forget to {reminder}", "remnd me to {reminder}", "reminder: {reminder}",
            "remind me at {time} to {reminder}", "add a reminder to {reminder} {on_day}",
            "remind me {on_day} at {time} to {reminder}",
        ],
        "create_event": [
            "schedule {title} {on_day} at {time}", "add {title} to my calendar",
            "add {title} to my calendar {on_day}", "create an event called {title} {on_day}",
            "put {title} on my calendar for {day} at {time}", "new event {title} at {time}",
            "calendar event {title} {on_day}", "book {title} {on_day} at {time}",
            "set up {title} for {day}", "create event: {title}", "schedual {title} {on_day}",
            "add an event {title} at {time} {on_day}",
        ],
        "toggle_setting": [
            ("turn on {setting}", ON), ("turn {setting} on", ON), ("switch on {setting}", ON),
            ("switch {setting} off", OFF), ("turn off {setting}", OFF), ("turn {setting} off", OFF),
            ("enable {setting}", ON), ("disable {setting}", OFF), ("{bare_setting} on", ON),
            ("{bare_setting} off", OFF), ("kill {setting}", OFF), ("activate {setting}", ON),
            ("deactivate {setting}", OFF), ("shut off {setting}", OFF), ("trun on {setting}", ON),
            ("put my phone in {bare_setting}", {"state": "on", "_settings": MODES}),
        ],
        "set_volume": [
            ("set the volume to {level}", {}), ("volume {level}", {}),
            ("turn the volume to {level}", {}), ("change volume to {level}", {}),
            ("put the volume at {level}", {}), ("set media volume to {level}", {}),
            ("make the volume {level}", {}), ("volum to {level}", {}), ("volume at {level}", {}),
            ("louder", UP), ("turn it up", UP), ("volume up", UP), ("make it louder", UP),
            ("raise the volume", UP), ("turn the volume up a bit", UP),
            ("quieter", DOWN), ("turn it down", DOWN), ("volume down", DOWN),
            ("lower the volume", DOWN), ("make it quieter", DOWN), ("turn the volume down", DOWN),
            ("mute", MUTE), ("mute the phone", MUTE), ("mute my phone", MUTE),
            ("volume to zero", MUTE), ("turn the volume all the way down", MUTE),
            ("max volume", MAX), ("full volume", MAX), ("turn the volume all the way up", MAX),
            ("volume to max", MAX), ("maximum volume", MAX),
        ],
        "unsupported": [
            "order a {food}", "order {food} from {restaurant}", "what's {a}+{b}",
            "what is {a} plus {b}", "what's {a} times {b}", "tell me a joke about {topic}",
            "translate {phrase} to {language}", "book a table for {n} at {restaurant}",
            "set the brightness to {pct} percent", "buy {item} on amazon",
            "how many calories are in a {food}",
        ],
    },
    "test": {
        "set_alarm": [
            "get me up at {time}", "I want an alarm at {time}",
            "make an alarm for {time} and call it {label}", "{time} alarm",
            "I need an alarm {iday} at {time}", "put an alarm on for {time} with the label {label}",
            "alarm me at {time}", "alarm me {iday} at {time}",
        ],
        "set_timer": [
            "put a timer on for {dur}", "I need a timer for {dur}", "count down from {dur}",
            "ping me in {dur}", "make {a_dur_adj} timer", "timer set to {dur}",
        ],
        "send_message": [
            "drop {contact} a message that says {text}", "write to {contact}: {text}",
            "send {contact} the message {text}", "can you message {contact} and say {text}",
            "compose a text to {contact} reading {text}", "msg {contact} {text}",
        ],
        "call": [
            "place a call to {contact}", "I want to talk to {contact} on the phone",
            "ring up {contact}", "make a call to {contact}", "connect me with {contact}",
            "phone up {contact}",
        ],
        "play_music": [
            "queue up {song_by}", "start playing {artist}", "I'm in the mood for some {genre}",
            "blast {song}", "stream {song_by}", "could I hear something by {artist}",
            "throw on some {genre} music",
        ],
        "search_web": [
            "do a web search on {query}", "run a search for {query}", "find me info about {query}",
            "check the internet for {query}", "query the web for {query}", "search up {query}",
        ],
        "navigate": [
            "guide me to {destination}", "what's the fastest route to {destination}",
            "i need to get to {destination}", "plot a course to {destination}",
            "find the way to {destination}", "lead the way to {destination}",
        ],
        "get_weather": [
            "give me the forecast for {location}", "should i bring a jacket {on_day}",
            "how's the weather looking in {location} {on_day}", "temperature in {location} {on_day}",
            "will it snow {on_day}", "what's it like outside", "is it sunny in {location}",
            "any rain expected in {location} {on_day}",
        ],
        "create_reminder": [
            "can you make sure I remember to {reminder}", "create a reminder that says {reminder}",
            "nudge me {on_day} at {time} to {reminder}", "I need a reminder to {reminder} at {time}",
            "make a note to remind me to {reminder} {on_day}",
            "reminde me to {reminder} at {time} {on_day}",
        ],
        "create_event": [
            "pencil in {title} for {day} at {time}", "make a calendar entry for {title}",
            "block my calendar {on_day} at {time} for {title}",
            "I have {title} {on_day} at {time}, add it to my calendar",
            "insert {title} into my calendar {on_day}", "register an event named {title}",
        ],
        "toggle_setting": [
            ("flip {setting} on", ON), ("power off {setting}", OFF),
            ("I'd like {setting} switched on", ON), ("cut {setting}", OFF),
            ("toggle {setting} off", OFF), ("toggle on {setting}", ON),
            ("kill {setting} right now", OFF), ("{bare_setting} on right away", ON),
            ("get me out of {bare_setting}", {"state": "off", "_settings": MODES}),
            ("go into {bare_setting}", {"state": "on", "_settings": MODES}),
            ("switch {setting} back on", ON), ("shut {setting} down", OFF),
        ],
        "set_volume": [
            ("adjust the volume to {level}", {}), ("I want the volume at {level}", {}),
            ("bring the volume to {level}", {}), ("volume level {level}", {}),
            ("put the sound at {level}", {}), ("set sound level to {level}", {}),
            ("a bit louder", UP), ("crank it up", UP), ("turn the sound up", UP),
            ("increase the volume", UP), ("pump up the volume", UP),
            ("a little quieter", DOWN), ("bring the volume down", DOWN),
            ("decrease the volume", DOWN), ("softer", DOWN), ("turn the sound down", DOWN),
            ("mute the sound", MUTE), ("mute everything", MUTE), ("turn the sound all the way down", MUTE),
            ("turn the sound all the way up", MAX), ("crank the volume to the max", MAX),
            ("as loud as it goes", MAX), ("volume all the way up", MAX),
        ],
        "unsupported": [
            "get me a {food} delivered", "calculate {a} minus {b}", "what is {a} divided by {b}",
            "say something funny about {topic}", "how do you say {phrase} in {language}",
            "reserve a table at {restaurant}", "what's the square root of {sq}",
            "add {item} to my shopping cart",
        ],
    },
}

# v2: more train/val phrasings.  New verbs and sentence structures, optional
# slots (label, day, time, location) in about half of the rows and in varied
# positions.  None of these equals a test template, even with the placeholder
# names ignored (check_disjoint_design checks this).
TRAIN_TEMPLATE_ADDITIONS = {
    "set_alarm": [
        "set a {label_noun} alarm for {time}", "{label_noun} alarm at {time}",
        "set an alarm for {time} and label it {label}", "new alarm at {time} called {label}",
        "create an alarm for {time} labelled {label}", "alarm called {label} at {time}",
        "set an alarm named {label} for {time} {iday}", "add an alarm for {time} with the name {label}",
        "wake me up at {time} for {label_noun}", "alarm for {time} for {label_noun}",
        "set my alarm to {time} and name it {label}", "alarm {time} {label_noun}",
        "can you wake me at {time}", "I have to get up at {time} {iday}",
        "make sure I'm up by {time}", "create an alarm for {time}", "new alarm {time}",
        "{iday} at {time} wake me up", "at {time} wake me up", "I want to wake up at {time}",
        "schedule an alarm for {time}",
    ],
    "set_timer": [
        "set {a_dur_adj} timer", "start a countdown for {dur}", "set a countdown for {dur}",
        "new timer {dur}", "new timer for {dur}", "create a timer for {dur}",
        "add a timer for {dur}", "{dur} countdown", "I want {a_dur_adj} timer",
        "run a timer for {dur}", "notify me in {dur}", "let me know in {dur}",
        "set the timer to {dur}", "give me a timer for {dur}", "kitchen timer {dur}",
        "set an egg timer for {dur}", "{a_dur_adj} timer",
    ],
    "send_message": [
        "send a text to {contact} saying {text}", "text {contact} saying {text}",
        "message {contact} that {text_stmt}", "tell {contact} that {text_stmt}",
        "let {contact} know that {text_stmt}", "send {contact} a message: {text}",
        "reply to {contact}: {text}", "send a message to {contact}: {text}",
        "new message to {contact}: {text}", "write {contact} a text saying {text}",
        "send a msg to {contact} saying {text}", "whatsapp {contact}: {text}",
        "text {contact}: {text}", "send {contact} a quick text: {text}",
    ],
    "call": [
        "give {contact} a ring", "give {contact} a buzz", "facetime {contact}",
        "I need to call {contact}", "I wanna call {contact}", "start a video call with {contact}",
        "voice call {contact}", "get {contact} on the line", "try calling {contact}",
        "call {contact} back", "put me through to {contact}", "patch me through to {contact}",
        "call {contact} now", "ring {contact} for me", "dial {contact}'s number",
        "call {contact} on their cell", "can you call {contact}",
    ],
    "play_music": [
        "put on {artist}", "spin {song}", "spin some {genre}", "I wanna hear {song}",
        "I want to listen to some {genre}", "let's hear {song_by}", "play me some {genre}",
        "play me {song}", "turn on some {genre}", "listen to {song_by}", "play {song} on spotify",
        "play anything by {artist}", "shuffle some {genre}", "put {song_by} on",
        "I'd like to hear {song}", "play songs by {artist}", "play {genre} on spotify",
    ],
    "search_web": [
        "search online for {query}", "google search {query}", "look up {query} online",
        "do a google search for {query}", "bing {query}", "search the internet for {query}",
        "I want to search for {query}", "web search for {query}", "search on google for {query}",
        "what does google say about {query}", "pull up search results for {query}",
        "get me results for {query}", "browse the web for {query}",
        "show me search results for {query}",
    ],
    "navigate": [
        "route me to {destination}", "give me directions to {destination}",
        "navigate me to {destination}", "how can I get to {destination}", "get me to {destination}",
        "drive to {destination}", "let's go to {destination}", "show me how to get to {destination}",
        "what's the best way to get to {destination}", "map a route to {destination}",
        "walking directions to {destination}", "I want to go to {destination}",
        "open maps to {destination}", "start driving to {destination}",
        "directions from here to {destination}",
    ],
    "get_weather": [
        "weather for {location}", "what's the weather {on_day}",
        "what will the weather be like in {location} {on_day}", "{location} weather",
        "{location} weather {day}", "is it raining in {location}", "is it going to be cold {on_day}",
        "will it be sunny in {location} {on_day}", "what's the forecast in {location} for {day}",
        ("tomorrow's weather in {location}", {"day": "tomorrow"}),
        ("today's forecast for {location}", {"day": "today"}),
        "{on_day}, what's the weather in {location}",
        "is there rain in the forecast for {location} {on_day}", "chance of rain in {location} {on_day}",
        "do I need a coat in {location} {on_day}", "what's the high {on_day}",
        "weather {day} in {location}", "check the weather in {location}", "check the weather {on_day}",
        "forecast for {location} {on_day}", "is it windy in {location}",
        "how warm is it going to get {on_day}", "weather forecast", "show me the weather",
        "is it cold outside", "do I need sunscreen",
    ],
    "create_reminder": [
        "reminder to {reminder} {on_day}", "reminder to {reminder} at {time}",
        "set a reminder at {time} to {reminder}", "at {time} remind me to {reminder}",
        "{on_day} remind me to {reminder}", "{on_day} at {time} remind me to {reminder}",
        "remind me {on_day} to {reminder} at {time}", "can you remind me to {reminder} {on_day}",
        "make a reminder to {reminder}", "new reminder: {reminder} {on_day} at {time}",
        "add a reminder for {time} to {reminder}", "don't let me forget to {reminder} {on_day}",
        "alert me at {time} to {reminder}", "set a reminder {on_day} at {time}: {reminder}",
        "I need to {reminder} {on_day}, remind me", "create a reminder to {reminder} at {time} {on_day}",
        "set a reminder: {reminder}", "remind me at {time} {on_day} to {reminder}",
    ],
    "create_event": [
        "schedule {title} for {day}", "schedule {title} at {time} {on_day}",
        "create an event {title} at {time}", "add an event called {title}",
        "put {title} in my calendar", "put {title} in my calendar at {time}",
        "new calendar event: {title}", "make an event called {title} at {time}", "schedule {title}",
        "add {title} at {time}", "save {title} to my calendar for {time}", "calendar: {title} at {time}",
        "add to my calendar: {title} {on_day} at {time}", "create a calendar event for {title}",
        "book {title} for {time}", "add {title} to my calendar at {time}",
        "log {title} in my calendar", "schedule an event named {title} {on_day}",
    ],
    "toggle_setting": [
        ("switch off {setting}", OFF), ("switch {setting} on", ON), ("put {bare_setting} on", ON),
        ("I want {setting} on", ON), ("I want {setting} off", OFF), ("{bare_setting} off now", OFF),
        ("turn {setting} on for me", ON), ("can you turn off {setting}", OFF),
        ("exit {bare_setting}", {"state": "off", "_settings": MODES}),
        ("leave {bare_setting}", {"state": "off", "_settings": MODES}),
        ("take me out of {bare_setting}", {"state": "off", "_settings": MODES}),
        ("take my phone off {bare_setting}", {"state": "off", "_settings": MODES}),
        ("put me in {bare_setting}", {"state": "on", "_settings": MODES}),
        ("switch to {bare_setting}", {"state": "on", "_settings": MODES}),
        ("enter {bare_setting}", {"state": "on", "_settings": MODES}),
        ("I need {setting}", {"state": "on", "_settings": ["flashlight"]}),
        ("I'm going to bed, turn on {bare_setting}", {"state": "on", "_settings": ["do_not_disturb"]}),
        ("I'm boarding now, turn on {bare_setting}", {"state": "on", "_settings": ["airplane_mode"]}),
        ("I landed, turn off {bare_setting}", {"state": "off", "_settings": ["airplane_mode"]}),
        ("I'm home, switch on {setting}", {"state": "on", "_settings": ["wifi"]}),
        ("I'm out of range, turn off {setting}", {"state": "off", "_settings": ["wifi"]}),
        ("turn on {setting} for my headphones", {"state": "on", "_settings": ["bluetooth"]}),
        ("disconnect {setting}", {"state": "off", "_settings": ["bluetooth"]}),
    ],
    "set_volume": [
        ("volume to {level}", {}), ("set volume {level}", {}), ("turn it up to {level}", {}),
        ("turn it down to {level}", {}), ("lower the volume to {level}", {}),
        ("raise the volume to {level}", {}), ("turn the volume down to {level}", {}),
        ("set the ringer volume to {level}", {}), ("media volume {level}", {}),
        ("put the volume on {level}", {}), ("can you set the volume to {level}", {}),
        ("it's too loud", DOWN), ("it's too quiet", UP), ("I can't hear it", UP),
        ("boost the volume", UP), ("reduce the volume", DOWN), ("turn it up a little", UP),
        ("lower it", DOWN), ("silence my phone", MUTE), ("turn off the sound", MUTE),
        ("max it out", MAX), ("turn it all the way up", MAX), ("half volume", {"level": 50}),
    ],
    "unsupported": [
        "what's {a} minus {b}", "how much is {a} times {b}", "what's {pct} percent of {a}",
        "what is {a} squared", "{a} plus {b}", "convert {a} miles to kilometers",
        "open {app}", "launch {app}", "close {app}", "uninstall {app}",
        "turn on {appliance}", "turn off {appliance}", "set the thermostat to {a} degrees",
        "turn on {other_setting}", "turn off {other_setting}", "enable {other_setting}",
        "disable {other_setting}", "what's the capital of {country}",
        "who is the prime minister of {country}", "what language do they speak in {country}",
        "send {a} dollars to {person}", "spell {word}", "define {word}",
        "how do I pronounce {word}", "write a poem about {topic}", "draw a picture of {topic}",
        "what's {a} degrees fahrenheit in celsius",
    ],
}
for _intent, _templates in TRAIN_TEMPLATE_ADDITIONS.items():
    TEMPLATES["train"][_intent].extend(_templates)
POOLS["train"]["person"] = list(POOLS["train"]["contact"])  # unsupported filler, no slot

# Chit-chat and out-of-scope requests without placeholders (unsupported).
CHITCHAT = {
    "train": [
        "how are you", "tell me a joke", "you're awesome", "good morning", "what's your name",
        "who made you", "thank you", "never mind", "I'm bored", "what's the meaning of life",
        "sing me a song", "do you love me", "hello", "what can you do", "are you a robot",
        "I'm hungry", "that's funny", "what's up", "goodbye", "you're useless", "I'm so tired",
        "can you dance", "what's your favorite color", "do you dream", "tell me a story",
        "I love you", "lol", "ok", "hmm", "yes", "no thanks", "what time is it",
        "what's today's date", "open the camera", "take a screenshot", "take a selfie",
        "flip a coin", "roll a die", "what's my battery level", "read my messages",
        "show me my photos", "recommend a good movie", "write a poem about cats", "how old are you",
        "are you listening", "wow", "you're the best", "order a pizza", "what's 2+2",
        "translate hello to french", "empty the trash folder",
    ],
    "test": [
        "how's your day going", "you're hilarious", "good night", "who are you really",
        "I'm feeling lonely", "can you keep a secret", "do you have feelings",
        "tell me something interesting", "I had a rough day", "are you smarter than me",
        "open the gallery", "record a voice memo", "scan this QR code", "check my bank balance",
        "unlock the front door", "write a haiku about rain", "make me a sandwich", "sup", "brb",
        "nah", "thanks a lot", "whatever", "do a barrel roll", "what's your favorite movie",
        "tell me a riddle", "clear my notifications",
    ],
}
# v2: more train chit-chat, trivia and requests for things the phone parser
# does not do (other apps, smart home, reading/cancelling alarms, playback).
CHITCHAT["train"].extend([
    "good afternoon", "good evening", "how's it going", "tell me about yourself",
    "what's your favorite food", "do you like music", "who's your creator", "can you hear me",
    "testing testing", "are you there", "thanks so much", "cool", "nice", "great job",
    "you're funny", "that's not what I asked", "stop", "cancel", "shut up", "happy new year",
    "merry christmas", "I'm sad", "I'm happy today", "what should I eat for dinner",
    "what should I do today", "give me a compliment", "motivate me", "tell me a fun fact",
    "who won the super bowl", "when did world war two end", "how many legs does a spider have",
    "what's the speed of light", "who wrote hamlet", "what year is it", "what day is it",
    "what rhymes with orange", "is a tomato a fruit", "why is the sky blue", "check my email",
    "make the screen brighter", "lock my phone", "restart my phone", "call an uber",
    "book a taxi", "take a photo", "record a video", "start a workout", "let's play a game",
    "what's the exchange rate for the euro", "how much is bitcoin worth", "pay my phone bill",
    "order groceries", "find my keys", "where did I park", "what's on my calendar",
    "what are my reminders", "cancel my alarm", "delete all my alarms", "stop the timer",
    "how much time is left on my timer", "what song is this", "skip this song",
    "pause the music", "read me the news", "what's the traffic like", "snooze",
    "how do I look", "you're smart", "can you speak spanish", "knock knock",
    "beam me up", "I need a hug", "what's the password", "help",
])
# Keyboard-mash syllables for train gibberish; test gets a fixed, disjoint list.
GIBBERISH_SYLLABLES = ["asdf", "jkl", "qwer", "ty", "zxcv", "fgh", "uiop", "hjk", "sdf", "lkj",
                       "poiu", "mnb", "gfd", "wer", "xcv", "oiu", "bnm", "ghj"]
KEYBOARD_LETTERS = "qwrtypsdfghjklzxcvbnm"  # train only; no vowels, so no real words
TEST_GIBBERISH = ["blorpt zinnik", "ksksksk", "mmm hmm grr", "qqqq pppp", "lorem ipsum dolor",
                  "fwoomp bleh", "zzzzzz", "xkcd plonk wub", "ughhhh", "abc def ghi", "ñam ñam ñom"]

# ---------------------------------------------------------------------------
# Surface noise: polite wrappers, typos, casing, trailing punctuation.
# Wrappers are split-specific so test phrasing is unseen.
# ---------------------------------------------------------------------------

WRAPPERS = {
    "train": {"request": ["please ", "could you please ", "can you ", "could you ",
                          "can you please ", "hey can you "],
              "vocative": ["hey, ", "ok phone, ", "hey phone ", "phone, ", "ok, ", "hi, "],
              "suffix": [" please", " thanks", " thank you", " thx", " for me"]},
    "test": {"request": ["would you kindly ", "I need you to ", "do me a favor and ", "kindly "],
             "vocative": ["hey assistant, ", "yo, "],
             "suffix": [" pls", " cheers", " if you can"]},
}
# Request-style prefixes only fit commands that start with an imperative verb.
IMPERATIVE_VERBS = {
    "set", "wake", "call", "ring", "phone", "dial", "give", "start", "get", "text", "send",
    "message", "tell", "sms", "whatsapp", "shoot", "play", "put", "shuffle", "listen", "search",
    "google", "look", "find", "navigate", "take", "drive", "show", "remind", "add", "create",
    "schedule", "book", "turn", "switch", "enable", "disable", "kill", "activate", "deactivate",
    "shut", "mute", "raise", "lower", "make", "change", "order", "translate", "buy", "flip",
    "roll", "open", "read", "recommend", "write", "sing", "place", "connect", "drop", "compose",
    "queue", "stream", "blast", "throw", "run", "check", "guide", "plot", "lead", "nudge",
    "pencil", "block", "insert", "register", "power", "toggle", "cut", "go", "adjust", "bring",
    "crank", "increase", "decrease", "pump", "calculate", "say", "reserve", "record", "scan",
    "unlock", "clear", "empty", "alert", "buzz", "ping", "count",
}
QUESTION_WORDS = {"what's", "whats", "what", "will", "is", "can", "could", "would", "does",
                  "how", "how's", "should", "any", "who", "are"}
# Train-only extensions (the sets above drive the frozen test split).
TRAIN_IMPERATIVE_VERBS = IMPERATIVE_VERBS | {
    "spin", "route", "facetime", "voice", "patch", "try", "launch", "close", "uninstall",
    "define", "spell", "convert", "exit", "leave", "enter", "boost", "reduce", "silence",
    "notify", "let", "save", "log", "bing", "browse", "pull", "map", "reply", "draw",
    "lock", "restart", "pause", "skip", "stop", "cancel", "delete", "snooze", "enable", "disable",
}
TRAIN_QUESTION_WORDS = QUESTION_WORDS | {"where", "when", "why", "which", "who's"}
# Common misspellings applied (rarely) to template words, never to slot values.
TYPOS = {"weather": ["wether", "weathr"], "message": ["mesage", "messge"], "reminder": ["remider"],
         "calendar": ["calender", "calandar"], "volume": ["volum", "voulme"], "alarm": ["alarn"],
         "timer": ["timr"], "directions": ["directons"],
         "search": ["serach"], "navigate": ["navigte"], "remind": ["remnid"], "the": ["teh"],
         "music": ["musik"], "forecast": ["forcast"], "tomorrow": ["tmrw"]}
TRAIN_TYPOS = {**TYPOS, "play": ["paly"], "turn": ["tunr"], "schedule": ["schedul"],
               "text": ["txt"], "event": ["evnt"], "directions": ["directons", "drections"]}
TYPO_RATE = 0.08

PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")
# Free-text slot values are wrapped in control-char markers while the text is
# being transformed (casing etc.) so we can recover exactly what was written.
MARK_OPEN, MARK_SEP, MARK_CLOSE = "\x01", "\x03", "\x02"
MARK_RE = re.compile("\x01(\\d+)\x03(.*?)\x02")


def inject_typo(template: str, rng: random.Random, typos: dict = TYPOS) -> str:
    """Occasionally misspell one template word (outside placeholders)."""
    if rng.random() >= TYPO_RATE:
        return template
    words = [w for w in re.findall(r"(?<![{\w])[a-z]+(?![\w}])", template) if w in typos]
    if not words:
        return template
    word = rng.choice(words)
    return re.sub(rf"(?<![{{\w]){word}(?![\w}}])", rng.choice(typos[word]), template, count=1)


def first_word(marked: str) -> str:
    return marked.split(" ", 1)[0].lower().rstrip(",:")


def add_wrappers(marked: str, split: str, rng: random.Random) -> str:
    """Polite prefixes / suffixes ("could you please ...", "... thanks")."""
    w = WRAPPERS["test" if split == "test" else "train"]
    verbs = IMPERATIVE_VERBS if split == "test" else TRAIN_IMPERATIVE_VERBS
    r = rng.random()
    if r < 0.16 and first_word(marked) in verbs:
        marked = rng.choice(w["request"]) + marked
    elif r < 0.22:
        marked = rng.choice(w["vocative"]) + marked
    # No suffix after a trailing free-text slot: "text Ann see you thanks" would
    # make it unclear whether "thanks" belongs to the message.
    if rng.random() < 0.08 and not marked.endswith(MARK_CLOSE):
        marked += rng.choice(w["suffix"])
    return marked


def add_punctuation(marked: str, rng: random.Random, question_words: set = QUESTION_WORDS,
                    vocatives: tuple = ("hey", "yo", "ok")) -> str:
    """Trailing '?', '.' or '!' (questions get '?' more often)."""
    if marked.endswith("."):  # e.g. "7 a.m." already ends with a dot
        return marked
    words = marked.lower().replace(",", "").split()
    if words[0] in vocatives and len(words) > 2:  # skip a vocative
        words = words[2:] if words[1] in {"phone", "assistant"} else words[1:]
    # "do you ..." is a question, "do a web search ..." / "do me a favor ..." are not.
    is_question = words[0] in question_words or words[:2] in (["do", "you"], ["do", "i"])
    r = rng.random()
    if is_question:
        return marked + "?" if r < 0.5 else marked
    if r < 0.08:
        return marked + "."
    if r < 0.15:
        return marked + "!"
    return marked


def apply_casing(marked: str, rng: random.Random) -> str:
    """ALL CAPS, all lowercase, Sentence case or untouched."""
    r = rng.random()
    if r < 0.06:
        return marked.upper()
    if r < 0.26:
        return marked.lower()
    # Sentence case only when the text starts with a letter ("01:00 alarm" stays).
    if r < 0.70 and MARK_RE.sub(lambda m: m.group(2), marked)[:1].isalpha():
        # Marker headers hold no letters, so the first letter is the visible one.
        for i, ch in enumerate(marked):
            if ch.isalpha():
                return marked[:i] + ch.upper() + marked[i + 1:]
    return marked


# ---------------------------------------------------------------------------
# Example construction
# ---------------------------------------------------------------------------

def pool_split(split: str) -> str:
    return "test" if split == "test" else "train"


def unpack(template) -> tuple[str, dict]:
    return (template, {}) if isinstance(template, str) else template


def gibberish(rng: random.Random, split: str) -> str:
    if split == "test":
        return rng.choice(TEST_GIBBERISH)
    if rng.random() < 0.4:  # random keyboard letters, e.g. "xbqw fjrt"
        words = ["".join(rng.choice(KEYBOARD_LETTERS) for _ in range(rng.randint(3, 7)))
                 for _ in range(rng.randint(1, 3))]
        return " ".join(words)
    chunks = [rng.choice(GIBBERISH_SYLLABLES) for _ in range(rng.randint(2, 3))]
    return rng.choice([" ", ""]).join(chunks)


def make_example(intent: str, split: str, rng: random.Random, template=None,
                 force: dict | None = None) -> tuple[str, dict]:
    """Build one (user text, slots) pair for ``intent`` in ``split``.

    ``template``/``force`` pin the phrasing and some values (used for the
    hard cases that every split must contain); forced rows skip random typos.
    """
    force = force or {}
    ps = pool_split(split)
    pools = POOLS[ps]
    if template is None:
        template = rng.choice(TEMPLATES[ps][intent])
    text, fixed = unpack(template)
    fixed = dict(fixed)
    allowed_settings = fixed.pop("_settings", SETTINGS)
    train = split != "test"  # train/val use the *_train renderers; test code is frozen
    if not force:
        text = inject_typo(text, rng, TRAIN_TYPOS if train else TYPOS)
    slots: dict = dict(fixed)
    span_slots: list[str] = []

    def mark(slot: str, value: str) -> str:
        span_slots.append(slot)
        return f"{MARK_OPEN}{len(span_slots) - 1}{MARK_SEP}{value}{MARK_CLOSE}"

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name in FREE_TEXT_PLACEHOLDERS:
            slot, pool = FREE_TEXT_PLACEHOLDERS[name]
            return mark(slot, rng.choice(pools[pool]))
        if name == "time" and train:
            h, m, style = force.get("time") or (*pick_time_train(rng, intent), None)
            slots["time"] = f"{h:02d}:{m:02d}"
            return render_time_train(rng, h, m, style)
        if name == "time":
            h, m, style = force.get("time") or (*pick_time(rng, ps, intent), None)
            slots["time"] = f"{h:02d}:{m:02d}"
            return render_time(rng, h, m, style)
        if name in ("day", "on_day", "iday"):
            phrase, value = render_day(rng, adverbial=name != "day")
            if name == "iday":  # alarms have no day slot: the day word is ignored
                return force.get("iday", phrase)
            slots["day"] = value
            return phrase
        if name == "dur" and train:
            spec = force.get("dur") or pick_duration_train(rng)
            slots["seconds"] = duration_seconds_train(spec)
            return render_duration_train(rng, spec)
        if name == "a_dur_adj" and train:
            spec = pick_duration_train(rng, adjectival=True)
            slots["seconds"] = duration_seconds_train(spec)
            return render_duration_adjective_train(rng, spec)
        if name == "level" and train:
            n = rng.deal("level", TRAIN_VOLUME_DECK)
            slots["level"] = n
            return render_level_train(rng, n)
        if name == "dur":
            spec = force.get("dur") or pick_duration(rng, ps)
            slots["seconds"] = duration_seconds(spec)
            return render_duration(rng, spec)
        if name == "a_dur_adj":
            spec = pick_duration(rng, ps, adjectival=True)
            slots["seconds"] = duration_seconds(spec)
            return render_duration_adjective(rng, spec)
        if name == "level":
            n = rng.choice(VOLUME_LEVELS[ps])
            slots["level"] = n
            return render_level(rng, n)
        if name in ("setting", "bare_setting"):
            if "setting" in force:
                key, form = force["setting"]
            else:
                key = rng.choice(allowed_settings)
                forms = SETTING_FORMS[key]
                if name == "bare_setting":
                    forms = [f for f in forms if not f.startswith("the ")]
                form = rng.choice(forms)
            slots["setting"] = key
            return form
        # Unsupported fillers (no slots).
        if name in ("a", "b"):
            return str(rng.randint(2, 99))
        if name == "n":
            return _num(rng, rng.randint(2, 8))
        if name == "pct":
            return str(rng.choice(range(10, 100, 10)))
        if name == "sq":
            return str(rng.choice([16, 25, 36, 49, 64, 81, 144]))
        if name in pools:
            return rng.choice(pools[name])
        raise KeyError(f"unknown placeholder {{{name}}} in {text!r}")

    marked = PLACEHOLDER_RE.sub(fill, text)
    marked = add_wrappers(marked, split, rng)
    if train:
        marked = add_punctuation(marked, rng, TRAIN_QUESTION_WORDS, ("hey", "yo", "ok", "hi", "phone"))
    else:
        marked = add_punctuation(marked, rng)
    marked = apply_casing(marked, rng)
    marked = re.sub(r"\s+", " ", marked).strip()

    for m in MARK_RE.finditer(marked):
        slots[span_slots[int(m.group(1))]] = m.group(2)
    user = MARK_RE.sub(lambda m: m.group(2), marked)
    return user, slots


def make_unsupported(split: str, rng: random.Random) -> tuple[str, dict]:
    """Out-of-scope request, chit-chat or gibberish."""
    ps = pool_split(split)
    kind = rng.choices(["chitchat", "request", "gibberish"], weights=[40, 45, 15])[0]
    if kind == "gibberish":
        # Gibberish stays raw: no wrappers or punctuation, just random casing.
        text = gibberish(rng, split)
        return (text.upper() if rng.random() < 0.15 else text), {}
    template = rng.choice(CHITCHAT[ps]) if kind == "chitchat" else None
    if template is None:
        return make_example("unsupported", split, rng)
    return make_example("unsupported", split, rng, template=template)


def build_row(user: str, intent: str, slots: dict) -> dict:
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": assistant_json(intent, slots)}]}


# Hard-but-fair cases that each of train and test must contain; the templates
# come from that split's own template list.
HARD_CASES = {
    "train": [
        ("set_alarm", "wake me {iday} at {time}", {"iday": "tomorrow", "time": (7, 0, "digits_ampm")}),
        ("set_alarm", "set an alarm for {time} {iday}", {"iday": "on Monday"}),
        ("set_alarm", "set an alarm for {time}", {"time": (20, 45, "relative_ampm")}),
        ("set_alarm", "alarm {time}", {"time": (7, 0, "digits_ampm")}),
        ("create_reminder", "remind me at {time} to {reminder}", {"time": (20, 15, "relative_ampm")}),
        ("create_event", "new event {title} at {time}", {"time": (18, 30, "relative_period")}),
        ("set_timer", "set a timer for {dur}", {"dur": ("phrase", "an hour and a half", 5400)}),
        ("set_timer", "timer {dur}", {"dur": ("phrase", "two and a half minutes", 150)}),
        ("set_timer", "buzz me in {dur}", {"dur": ("min", 20)}),
        ("set_volume", ("mute", MUTE), {"plain": True}),
        ("set_volume", ("turn the volume all the way up", MAX), {"plain": True}),
        ("set_volume", ("louder", UP), {"plain": True}),
        ("set_volume", ("quieter", DOWN), {"plain": True}),
        ("toggle_setting", ("kill {setting}", OFF), {"setting": ("wifi", "the wifi")}),
        ("toggle_setting", ("{bare_setting} on", ON), {"setting": ("airplane_mode", "flight mode")}),
        ("toggle_setting", ("turn on {setting}", ON), {"setting": ("flashlight", "the torch")}),
        ("toggle_setting", ("turn off {setting}", OFF), {"setting": ("do_not_disturb", "dnd")}),
    ],
    "test": [
        ("set_alarm", "I need an alarm {iday} at {time}", {"iday": "tomorrow"}),
        ("set_alarm", "get me up at {time}", {"time": (8, 45, "relative_ampm")}),
        ("create_reminder", "nudge me {on_day} at {time} to {reminder}", {"time": (16, 45, "relative_ampm")}),
        ("create_event", "pencil in {title} for {day} at {time}", {"time": (15, 30, "relative_period")}),
        ("set_timer", "I need a timer for {dur}", {"dur": ("phrase", "an hour and a half", 5400)}),
        ("set_timer", "put a timer on for {dur}", {"dur": ("phrase", "two and a half minutes", 150)}),
        ("set_timer", "ping me in {dur}", {"dur": ("min", 35)}),
        ("set_volume", ("mute the sound", MUTE), {"plain": True}),
        ("set_volume", ("turn the sound all the way up", MAX), {"plain": True}),
        ("set_volume", ("a bit louder", UP), {"plain": True}),
        ("set_volume", ("a little quieter", DOWN), {"plain": True}),
        ("toggle_setting", ("kill {setting} right now", OFF), {"setting": ("wifi", "the wifi")}),
        ("toggle_setting", ("{bare_setting} on right away", ON), {"setting": ("airplane_mode", "flight mode")}),
        ("toggle_setting", ("flip {setting} on", ON), {"setting": ("flashlight", "the torch")}),
        ("toggle_setting", ("toggle {setting} off", OFF), {"setting": ("do_not_disturb", "DND")}),
    ],
}


def intent_quotas(size: int) -> dict[str, int]:
    """~15% unsupported, the rest spread evenly over the 12 command intents."""
    unsupported = round(size * UNSUPPORTED_SHARE)
    base, extra = divmod(size - unsupported, len(COMMAND_INTENTS))
    quotas = {intent: base + (1 if i < extra else 0) for i, intent in enumerate(COMMAND_INTENTS)}
    quotas["unsupported"] = unsupported
    return quotas


def build_split(split: str, rng: random.Random, seen: set[str]) -> list[dict]:
    """Generate one split; ``seen`` holds user strings already used anywhere."""
    quotas = intent_quotas(SPLIT_SIZES[split])
    rows: list[dict] = []

    def add(factory) -> None:
        for _ in range(MAX_ATTEMPTS):
            user, slots, intent = factory()
            if user not in seen:
                seen.add(user)
                row = build_row(user, intent, slots)
                validate_row(row)
                rows.append(row)
                return
        raise RuntimeError(f"{split}: could not find a fresh example")

    templates = TEMPLATES[pool_split(split)]
    for intent, template, force in HARD_CASES.get(split, []):
        if template not in templates[intent]:
            raise ValueError(f"hard case template {template!r} is not a {split} template")
        add(lambda: (*make_example(intent, split, rng, template, force), intent))
        quotas[intent] -= 1
    for intent in INTENTS:
        for _ in range(quotas[intent]):
            if intent == "unsupported":
                add(lambda: (*make_unsupported(split, rng), "unsupported"))
            else:
                add(lambda: (*make_example(intent, split, rng), intent))
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------------------
# Global checks
# ---------------------------------------------------------------------------

def normalise_template(text: str) -> str:
    """Template text with every placeholder name replaced by {X}, lowercased."""
    return PLACEHOLDER_RE.sub("{X}", text).lower()


def check_disjoint_design() -> None:
    """Test templates, wrappers, value pools, times, durations and levels are unseen in train."""
    for intent in INTENTS:
        train_t = {unpack(t)[0] for t in TEMPLATES["train"][intent]}
        test_t = {unpack(t)[0] for t in TEMPLATES["test"][intent]}
        assert not train_t & test_t, f"{intent}: templates shared {train_t & test_t}"
        # Also no test template with other placeholder names ("queue up {song}"
        # would re-create the test phrasing "queue up {song_by}").
        shared = {normalise_template(t) for t in train_t} & {normalise_template(t) for t in test_t}
        assert not shared, f"{intent}: train template equals a test template up to placeholders: {shared}"
        if intent != "unsupported":
            assert len(train_t) >= 20, f"{intent}: needs >= 20 train templates"
        assert len(train_t) == len(TEMPLATES["train"][intent]), f"{intent}: duplicate train template"
    all_test_t = {normalise_template(unpack(t)[0]) for ts in TEMPLATES["test"].values() for t in ts}
    all_train_t = {normalise_template(unpack(t)[0]) for ts in TEMPLATES["train"].values() for t in ts}
    assert not all_test_t & all_train_t, f"template shared across intents: {all_test_t & all_train_t}"
    assert not {c.casefold() for c in CHITCHAT["train"]} & {c.casefold() for c in CHITCHAT["test"]}
    assert len(set(CHITCHAT["train"])) == len(CHITCHAT["train"]), "duplicate train chit-chat"
    for part in ("request", "vocative", "suffix"):
        assert not set(WRAPPERS["train"][part]) & set(WRAPPERS["test"][part])
    train_values = {v.casefold() for k, vs in POOLS["train"].items() for v in vs}
    for key in POOLS["test"]:
        overlap = {v for v in POOLS["test"][key] if v.casefold() in train_values}
        assert not overlap, f"test pool {key!r} overlaps train values: {overlap}"
    # Numbers: every value a train/val row can get, versus every value test can get.
    train_secs = {duration_seconds_train(spec) for specs in TRAIN_SPECS.values() for spec, _ in specs}
    train_secs |= {duration_seconds_train(spec) for _, _, f in HARD_CASES["train"]
                   for spec in [f.get("dur")] if spec}
    shared_train = train_secs & TEST_DURATION_SECONDS
    assert shared_train <= SHARED_SECONDS, f"durations shared: {shared_train - SHARED_SECONDS}"
    assert not set(TRAIN_VOLUME_LEVELS) & set(VOLUME_LEVELS["test"]), "volume levels shared"
    test_times = {(h, m) for h in range(24) for m in range(60) if time_split(h, m) == "test"}
    assert not test_times & set(SHARED_TIMES + TRAIN_PINNED_TIMES)
    for _, _, f in HARD_CASES["train"]:
        if "time" in f:
            assert time_split(*f["time"][:2]) != "test", f"train hard case uses a test time {f}"
    assert not set(TEST_GIBBERISH) & set(GIBBERISH_SYLLABLES)


def slot_values(rows: list[dict], keys: set[str]) -> set:
    out = set()
    for row in rows:
        slots = json.loads(row["messages"][1]["content"])["slots"]
        out |= {(k, str(v).casefold() if k in FREE_TEXT_SLOTS else v)
                for k, v in slots.items() if k in keys}
    return out


def check_splits(splits: dict[str, list[dict]]) -> None:
    """Row-level guarantees: no leakage of test strings / values into train or val."""
    users = {s: [r["messages"][0]["content"] for r in rows] for s, rows in splits.items()}
    train_val_users = set(users["train"]) | set(users["val"])
    assert not set(users["val"]) & set(users["train"]), "val repeats a train row"
    assert not set(users["test"]) & train_val_users, "test user string seen in train/val"
    seen_rows = splits["train"] + splits["val"]
    free = {(k, v) for k, v in slot_values(splits["test"], FREE_TEXT_SLOTS)}
    free_seen = {v for _, v in slot_values(seen_rows, FREE_TEXT_SLOTS)}
    leaked = {v for _, v in free if v in free_seen}
    assert not leaked, f"test free-text values seen in train/val: {leaked}"
    shared_times = {f"{h:02d}:{m:02d}" for h, m in SHARED_TIMES}
    t_test = {v for _, v in slot_values(splits["test"], {"time"})} - shared_times
    assert not t_test & {v for _, v in slot_values(seen_rows, {"time"})}, "test time seen in train"
    d_test = {v for _, v in slot_values(splits["test"], {"seconds"})} - SHARED_SECONDS
    assert not d_test & {v for _, v in slot_values(seen_rows, {"seconds"})}, "test duration seen in train"
    # The same for volume levels (0 and 100 are the fixed mute / max phrases) ...
    l_test = {v for _, v in slot_values(splits["test"], {"level"})} - {0, 100}
    assert not l_test & {v for _, v in slot_values(seen_rows, {"level"})}, "test volume level seen in train"
    # ... and, stricter, against every value the test generator could produce.
    seen_secs = {v for _, v in slot_values(seen_rows, {"seconds"})}
    assert not seen_secs & FORBIDDEN_TRAIN_SECONDS, f"test-pool durations in train: {seen_secs & FORBIDDEN_TRAIN_SECONDS}"
    seen_times = {v for _, v in slot_values(seen_rows, {"time"})}
    bad = {t for t in seen_times if time_split(int(t[:2]), int(t[3:])) == "test"}
    assert not bad, f"test-partition clock times in train/val: {bad}"
    seen_levels = {v for _, v in slot_values(seen_rows, {"level"})}
    assert not seen_levels & set(VOLUME_LEVELS["test"]), "test-pool volume levels in train/val"
    for split, rows in splits.items():
        intents = Counter(json.loads(r["messages"][1]["content"])["intent"] for r in rows)
        assert set(intents) == set(INTENTS), f"{split}: missing intents"
        share = intents["unsupported"] / len(rows)
        assert 0.13 <= share <= 0.17, f"{split}: unsupported share {share:.2f}"


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def test_stream() -> random.Random:
    """The test split's own stream: Random(SEED) at the point where v1 began test."""
    rng = random.Random(SEED)
    rng.getrandbits(32 * TEST_STREAM_OFFSET)  # consumes exactly TEST_STREAM_OFFSET 32-bit words
    return rng


def split_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def generate() -> dict[str, list[dict]]:
    check_disjoint_design()
    # Test first, from its own stream; its user strings are then reserved so
    # that train/val can never produce one of them.
    seen: set[str] = set()
    test = build_split("test", test_stream(), seen)
    digest = hashlib.sha256(split_bytes(test)).hexdigest()
    assert digest == TEST_SHA256, f"test split changed (sha256 {digest}); the test path must stay frozen"
    rng = DeckRandom(TRAIN_SEED)
    train = build_split("train", rng, seen)
    val = build_split("val", rng, seen)
    splits = {"train": train, "val": val, "test": test}
    check_splits(splits)
    return splits


def write_splits(splits: dict[str, list[dict]]) -> None:
    for split, rows in splits.items():
        for row in rows:
            validate_row(row)
        (OUT_DIR / f"{split}.jsonl").write_bytes(split_bytes(rows))
    (OUT_DIR / SCHEMA_FILE).write_bytes(schema_bytes())


def report(splits: dict[str, list[dict]]) -> None:
    header = f"{'intent':<16}" + "".join(f"{s:>7}" for s in splits)
    print(header)
    counts = {s: Counter(json.loads(r["messages"][1]["content"])["intent"] for r in rows)
              for s, rows in splits.items()}
    for intent in INTENTS:
        print(f"{intent:<16}" + "".join(f"{counts[s][intent]:>7}" for s in splits))
    print(f"{'TOTAL':<16}" + "".join(f"{len(rows):>7}" for rows in splits.values()))
    for split in splits:
        digest = hashlib.sha256((OUT_DIR / f"{split}.jsonl").read_bytes()).hexdigest()
        print(f"sha256 {split}.jsonl {digest}")
    print(f"sha256 {SCHEMA_FILE} {hashlib.sha256((OUT_DIR / SCHEMA_FILE).read_bytes()).hexdigest()}")


def main() -> int:
    splits = generate()
    write_splits(splits)
    report(splits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
