"""Data pipeline: formats, malformed rows, dedup/filters, masking, EOS, augmentation, splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from edgesft import data as D
from edgesft.chat import build_template, encode_conversation, prepare_tokenizer, render
from edgesft.config import AugmentConfig
from edgesft.errors import DataError


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from edgesft.config import ModelConfig
    from edgesft.models import resolve_model

    t = AutoTokenizer.from_pretrained(resolve_model(ModelConfig(base="tiny-llama")).path)
    prepare_tokenizer(t, None, [])
    return t


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_each_format_normalises_to_messages(tmp_path: Path) -> None:
    msgs = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    alpaca = {"instruction": "Add", "input": "1 2", "output": "3"}
    pc = {"prompt": "p", "completion": "c"}
    f = _write(tmp_path / "a.jsonl", [json.dumps(msgs), json.dumps(alpaca), json.dumps(pc)])
    report = D.ReadReport()
    rows = D.read_rows([f], "auto", "fail", report)
    assert [r.messages[-1]["content"] for r in rows] == ["yo", "3", "c"]
    assert rows[1].messages[0]["content"] == "Add\n\n1 2"
    assert report.formats == Counter({"messages": 1, "alpaca": 1, "prompt_completion": 1})
    assert rows[2].source == "a.jsonl:3"


def test_json_and_csv_files(tmp_path: Path) -> None:
    j = tmp_path / "d.json"
    j.write_text(json.dumps([{"prompt": "a", "completion": "b"}]))
    c = tmp_path / "d.csv"
    c.write_text('instruction,input,output\n"say hi",,hello\n')
    rows = D.read_rows([j, c], "auto", "fail", D.ReadReport())
    assert [r.messages for r in rows] == [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hello"}],
    ]
    assert rows[1].source == "d.csv:2"


def test_malformed_row_fails_with_file_and_line(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "bad.jsonl",
        ['{"prompt": "a", "completion": "b"}', "{not json", '{"prompt": 1, "completion": "b"}'],
    )
    with pytest.raises(DataError) as exc:
        D.read_rows([f], "auto", "fail", D.ReadReport())
    assert str(exc.value).startswith(f"{f}:2: invalid JSON")


def test_malformed_rows_skipped_and_counted(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "bad.jsonl",
        [
            '{"prompt": "a", "completion": "b"}',
            "{not json",
            '{"prompt": 1, "completion": "b"}',
            '{"foo": 1}',
            '{"messages": [{"role": "user", "content": "q"}]}',
        ],
    )
    report = D.ReadReport()
    rows = D.read_rows([f], "auto", "skip", report)
    assert len(rows) == 1 and report.malformed == 4 and report.read == 5
    assert report.errors[1].endswith("bad.jsonl:3: field 'prompt' must be a string, got int")
    assert "cannot detect the row format" in report.errors[2]
    assert "last message must be the assistant's" in report.errors[3]


def _row(user: str, answer: str) -> D.Row:
    return D.Row([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], "x")


def test_dedup_exact_and_normalized_counts() -> None:
    rows = [_row("Call mom", "a"), _row("Call mom", "a"), _row("call  MOM!", "a"), _row("call dad", "a")]
    counts: Counter[str] = Counter()
    kept = D.dedup(rows, "normalized", counts)
    assert len(kept) == 2 and counts == Counter({"duplicate_exact": 1, "duplicate_normalized": 1})
    counts = Counter()
    assert len(D.dedup(rows, "exact", counts)) == 3 and counts == Counter({"duplicate_exact": 1})


def test_empty_filter() -> None:
    counts: Counter[str] = Counter()
    kept = D.drop_empty([_row("a", ""), _row("  ", "x"), _row("q", "ok")], 1, counts)
    assert len(kept) == 1 and counts["empty"] == 2


def test_masking_prompt_tokens_carry_no_loss_and_eos_ends(tok) -> None:
    msgs = [
        {"role": "user", "content": "set a timer for 5 min"},
        {"role": "assistant", "content": '{"intent":"set_timer"}'},
    ]
    ids, labels = encode_conversation(tok, msgs)
    prompt_ids = tok(render(tok, msgs[:1], add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert all(lab == -100 for lab in labels[: len(prompt_ids)])
    answer = [t for t in labels if t != -100]
    assert answer[-1] == tok.eos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(answer[:-1]) == '{"intent":"set_timer"}'
    ids2, labels2 = encode_conversation(tok, msgs, train_on_prompt=True)
    assert ids2 == ids and labels2 == ids


def test_multi_turn_masks_every_assistant_turn(tok) -> None:
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    ids, labels = encode_conversation(tok, msgs)
    trained = tok.decode([t for t in labels if t != -100])
    assert trained == "b<|im_end|>d<|im_end|>"


def test_eos_appended_when_template_lacks_it(tok) -> None:
    saved = tok.chat_template
    try:
        tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        ids, labels = encode_conversation(
            tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ans"}]
        )
        assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    finally:
        tok.chat_template = saved


def test_default_system_prompt_removed_and_recipe_prompt_baked(tok) -> None:
    stock = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    assert "You are helpful" not in build_template(stock, None)
    tok2 = tok.__class__.from_pretrained(tok.name_or_path)
    tok2.chat_template = stock
    assert prepare_tokenizer(tok2, None, [])["removed_default_system_prompt"]
    tok2.chat_template = stock
    assert prepare_tokenizer(tok2, "Reply in JSON.", [])["removed_default_system_prompt"]
    text = render(tok2, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert (
        text
        == "<|im_start|>system\nReply in JSON.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_augmentation_is_deterministic_and_keeps_targets() -> None:
    rows = [_row("turn on the wifi", '{"intent":"toggle_setting"}'), _row("call Ann", '{"contact":"Ann"}')]
    cfg = AugmentConfig(enabled=True, copies=2, prob=1.0)
    a, b = D.augment(rows, cfg, 1), D.augment(rows, cfg, 1)
    assert [r.messages for r in a] == [r.messages for r in b] and a
    for r in a:
        assert r.messages[-1] in (rows[0].messages[-1], rows[1].messages[-1])
        if r.messages[-1]["content"] == '{"contact":"Ann"}':
            assert "Ann" in r.messages[0]["content"]  # quoted span untouched by case/typo


def test_split_is_seeded() -> None:
    rows = [_row(f"q{i}", "a") for i in range(50)]
    t1, v1 = D.split_rows(rows, 0.2, 3)
    t2, v2 = D.split_rows(rows, 0.2, 3)
    assert len(v1) == 10 and [r.messages for r in v1] == [r.messages for r in v2]
    assert D.split_rows(rows, 0.2, 4)[1] != v1


def test_phone_dataset_contract() -> None:
    root = Path(__file__).resolve().parents[1] / "recipes" / "data" / "phone_commands"
    splits = {s: D.load_rows(root / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert len(splits["train"]) >= 3000
    intents = {json.loads(r.messages[-1]["content"])["intent"] for r in splits["test"]}
    assert len(intents) == 13
    train_users = {r.messages[0]["content"] for r in splits["train"]}
    assert not train_users & {r.messages[0]["content"] for r in splits["test"]}


def _data_stage(tmp_path: Path, **data: object) -> dict:
    from edgesft.config import load_recipe
    from edgesft.pipeline import run_pipeline
    from edgesft.stages import STAGES
    from tests.conftest import write_recipe

    recipe = load_recipe(write_recipe(tmp_path, data=data))
    run_pipeline(recipe, STAGES, until_stage="data", log=lambda _m: None)
    return json.loads((tmp_path / "runs" / "t" / "data" / "summary.json").read_text())


def test_data_stage_summary_counts_overlong_drop_and_truncate(tmp_path: Path) -> None:
    dropped = _data_stage(tmp_path / "a", max_length=36, label_key="intent")
    assert dropped["dropped"]["train"]["overlong"] > 0
    assert dropped["token_lengths"]["train"]["max"] <= 36
    assert sum(dropped["labels"]["train"].values()) == dropped["kept"]["train"]
    assert dropped["kept"]["test"] == 24
    truncated = _data_stage(tmp_path / "b", max_length=36, overlong="truncate")
    assert truncated["truncated"]["train"] == dropped["dropped"]["train"]["overlong"]
    assert "overlong" not in truncated["dropped"]["train"]


def test_data_stage_reports_skipped_malformed_rows(tmp_path: Path) -> None:
    from tests.conftest import SMOKE_DATA

    f = tmp_path / "mixed.jsonl"
    f.write_text((SMOKE_DATA / "train.jsonl").read_text() + "{broken\n")
    s = _data_stage(tmp_path, train=[str(f)], on_error="skip")
    assert s["read"]["train"]["malformed_skipped"] == 1
    assert s["malformed_examples"][0].endswith(
        "mixed.jsonl:241: invalid JSON (Expecting property name enclosed in double quotes at column 2)"
    )
