"""The answer schema (``data.answer_schema``) and constrained decoding: the phone dataset's schema and splits,
the data stage's checks, a planted case on a tiny random model in PyTorch, llama.cpp and onnxruntime-genai
(free decoding leaves the schema, constrained decoding never does), and the export bundle's schema, grammar
and runners."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgesft.answer_schema import GRAMMAR_FILE, SCHEMA_FILE, AnswerChecker, load_schema, schema_text
from edgesft.cli import main
from edgesft.config import load_recipe
from edgesft.data import Row, read_rows
from edgesft.errors import DataError, EdgesftError
from edgesft.io import sha256_file
from edgesft.runfolder import artifact_schema
from edgesft.stages import data as data_stage
from tests.conftest import SMOKE_DATA, write_recipe

ROOT = Path(__file__).resolve().parents[1]
PHONE = ROOT / "recipes" / "data" / "phone_commands"

# A bounded answer: every valid answer fits in the token budget below, so a constrained decode always ends.
PLANTED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intent": {"enum": ["call", "navigate"]},
        "slots": {
            "type": "object",
            "properties": {
                "contact": {"type": "string", "minLength": 1, "maxLength": 6},
                "urgent": {"type": "boolean"},
                # llama-cpp-python's GBNF converter drops integer bounds: the runtimes must not
                "minutes": {"type": "integer", "minimum": 0, "maximum": 9},
            },
            "required": ["contact"],
            "additionalProperties": False,
        },
    },
    "required": ["intent", "slots"],
    "additionalProperties": False,
}
BUDGET = 64
PROMPTS = ["call mom", "navigate to the airport please", "hi", "what's the weather in Paris tomorrow?"]


def _rows(prompts: list[str]) -> list[Row]:
    return [
        Row([{"role": "user", "content": p}, {"role": "assistant", "content": "{}"}], "t") for p in prompts
    ]


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("phone_generate", PHONE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_phone_schema_is_the_generators_contract_and_every_split_matches_it() -> None:
    gen = _generator()
    assert (PHONE / "schema.json").read_bytes() == gen.schema_bytes()  # written by generate.py, current
    schema = load_schema(PHONE / "schema.json")
    for branch in schema["anyOf"]:  # slots in the trained order: constrained decoders emit schema order
        intent = branch["properties"]["intent"]["const"]
        slots = branch["properties"]["slots"]
        keys = [k for alt in slots.get("anyOf", [slots]) for k in alt["properties"]]
        assert keys == gen.SLOT_ORDER[intent], intent
    check = AnswerChecker(schema, "schema.json")
    counts = {}
    for split in ("train", "val", "test"):
        rows = read_rows([PHONE / f"{split}.jsonl"], "auto", "fail", _report(), check)
        counts[split] = len(rows)
    assert counts == {"train": 6000, "val": 300, "test": 400}
    # what the contract forbids, the schema refuses
    for bad in (
        {"intent": "set_volume", "slots": {"level": 5, "direction": "up"}},
        {"intent": "set_volume", "slots": {}},
        {"intent": "set_volume", "slots": {"level": 101}},
        {"intent": "set_timer", "slots": {"seconds": 0}},
        {"intent": "set_alarm", "slots": {"time": "7:15"}},
        {"intent": "set_alarm", "slots": {"label": "gym"}},
        {"intent": "unsupported", "slots": {"query": "x"}},
        {"intent": "get_weather", "slots": {"day": "someday"}},
        {"intent": "call", "slots": {"contact": ""}},
        {"intent": "nap", "slots": {}},
    ):
        assert check.problem(json.dumps(bad)), bad
    assert check.problem('{"intent":"set_volume","slots":{"direction":"up"}}') is None


def _report() -> Any:
    from edgesft.data import ReadReport

    return ReadReport()


def test_schema_errors_name_the_file_and_say_why(tmp_path: Path) -> None:
    cases = {
        "missing.json": None,
        "broken.json": '{"type": "object",\n  "properties": }',
        "list.json": "[1, 2]",
        "invalid.json": '{"type": "objekt"}',
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(DataError) as e:
            load_schema(path)
        (line,) = e.value.problems
        assert str(path) in line and "data.answer_schema" in line, line
    assert "broken.json:2:" in str(_raised(load_schema, tmp_path / "broken.json"))
    assert "not a valid JSON Schema" in str(_raised(load_schema, tmp_path / "invalid.json"))
    check = AnswerChecker(load_schema(PHONE / "schema.json"), "schema.json")
    assert check.problem('{"intent":"set_alarm","slots":{"time":"7:15"}}') == (
        "the answer does not match schema.json at slots/time: '7:15' does not match "
        "'^([01][0-9]|2[0-3]):[0-5][0-9]$'"
    )
    assert "at intent: 'nap' is not one of 'set_alarm'" in str(check.problem('{"intent":"nap","slots":{}}'))
    assert "not JSON" in str(check.problem("set an alarm"))


def _raised(fn: Any, *args: Any) -> BaseException:
    with pytest.raises(DataError) as e:
        fn(*args)
    return e.value


def _bad_train_file(tmp_path: Path) -> tuple[Path, int]:
    """ci-smoke's training rows with one whose answer breaks the phone schema; (file, its line)."""
    lines = (SMOKE_DATA / "train.jsonl").read_text().splitlines(keepends=True)
    bad = {"intent": "set_timer", "slots": {"seconds": "five minutes"}}
    row = {
        "messages": [
            {"role": "user", "content": "timer 5 min"},
            {"role": "assistant", "content": json.dumps(bad)},
        ]
    }
    lines.insert(6, json.dumps(row) + "\n")
    path = tmp_path / "train.jsonl"
    path.write_text("".join(lines))
    return path, 7


def test_a_row_that_breaks_the_schema_is_one_error_line_or_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, line = _bad_train_file(tmp_path)
    data = {"train": str(train), "answer_schema": str(PHONE / "schema.json")}
    recipe = write_recipe(tmp_path / "fail", data=data)
    assert main(["run", str(recipe), "--until", "data"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (msg,) = err.strip().splitlines()
    assert msg == (
        f"error: {train}:{line}: the answer does not match schema.json at slots/seconds: 'five minutes' is not "
        "of type 'integer' (set data.on_error: skip to skip such rows)"
    )

    recipe = write_recipe(tmp_path / "skip", data={**data, "on_error": "skip"})
    assert main(["run", str(recipe), "--until", "data"]) == 0
    run = tmp_path / "skip" / "runs" / "t" / "data"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["read"]["train"]["malformed_skipped"] == 1
    assert f"{train}:{line}" in summary["malformed_examples"][0]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["outputs"][SCHEMA_FILE]["size"] == (PHONE / "schema.json").stat().st_size
    assert (run / SCHEMA_FILE).read_bytes() == (PHONE / "schema.json").read_bytes()
    # an edited schema file re-runs the data stage (and what reads it); chat and eval find the run's copy
    assert data_stage.external_inputs(load_recipe(recipe))["answer_schema"] == sha256_file(
        PHONE / "schema.json"
    )
    assert artifact_schema(run.parent / "gguf" / "t-Q8_0.gguf") == run / SCHEMA_FILE
    (run / SCHEMA_FILE).write_text("{}")
    with pytest.raises(EdgesftError, match="answer_schema.json: .* changed after the stage wrote it"):
        artifact_schema(run.parent / "merge")

    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "string", "minLength": -1}')
    recipe = write_recipe(tmp_path / "bad-schema", data={"answer_schema": str(broken)})
    assert main(["run", str(recipe), "--until", "data"]) == 2
    (msg,) = capsys.readouterr().err.strip().splitlines()
    assert msg.startswith(f"error: {broken}: data.answer_schema: not a valid JSON Schema (draft 2020-12)")
    recipe = write_recipe(tmp_path / "no-schema", data={"answer_schema": "nowhere.json"})
    assert main(["run", str(recipe), "--until", "data"]) == 2
    (msg,) = capsys.readouterr().err.strip().splitlines()
    assert msg == f"error: data.answer_schema: file not found: {tmp_path / 'no-schema' / 'nowhere.json'}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with SmolLM2's tokenizer and chat template: it rambles, never JSON."""
    from tests.test_onnx_export import make_model

    return make_model(tmp_path_factory.mktemp("schema") / "model")


def _verdicts(answers: list[str], schema: dict[str, Any] = PLANTED) -> list[str | None]:
    check = AnswerChecker(schema, "the planted schema")
    return [check.problem(a) for a in answers]


def test_constrained_torch_decoding_never_leaves_the_schema(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgesft.evaluate import generate_answers
    from edgesft.runtimes.torch_rt import TorchArtifact

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    rows = _rows(PROMPTS)
    free, _ = generate_answers(model, tok, rows, BUDGET, batch_size=3, progress=False)
    assert all(_verdicts(free)), free  # the planted failure: free decoding is never a valid answer
    text = schema_text(PLANTED)
    constrained, timing = generate_answers(
        model, tok, rows, BUDGET, batch_size=3, progress=False, schema=text
    )
    assert _verdicts(constrained) == [None] * len(rows), constrained
    assert timing["generated_tokens"] < len(rows) * BUDGET  # every answer ended with EOS, inside the budget

    art = TorchArtifact(tiny, threads=1)  # chat and bench's torch runtime
    from edgesft.runtimes import encode_chat

    new = art.generate(encode_chat(art, rows[0].messages[:1]), BUDGET, text)
    assert new[-1] in art.eos_ids() and _verdicts([art.detokenize(new[:-1])]) == [None]
    art.close()


@pytest.fixture(scope="module")
def tiny_gguf(tiny: Path) -> Path:
    from edgesft.gguf_export import write_gguf

    dest = tiny.parent / "tiny.gguf"
    write_gguf(tiny, dest, float_type="f32")
    return dest


def _child_answers(artifact: str, prompts: list[str], schema: str | None) -> list[str]:
    """In a child process: greedy answers in the artifact's own runtime, as bench answers test rows
    (:func:`edgesft.benchmark.answer_rows`), opened as an application runs it (last-position logits)."""
    from edgesft.benchmark import answer_rows
    from edgesft.runtimes import open_artifact

    art = open_artifact(Path(artifact), threads=1, all_logits=False)
    _, answers = answer_rows(art, _rows(prompts), "json", BUDGET, schema)
    art.close()
    return answers


def _answers(artifact: Path, prompts: list[str], schema: str | None) -> list[str]:
    from edgesft.isolate import call

    request = {"artifact": str(artifact), "prompts": prompts, "schema": schema}
    return list(call("tests.test_schema:_child_answers", request, timeout=600))


def test_constrained_llama_cpp_decoding_never_leaves_the_schema(tiny_gguf: Path) -> None:
    prompts = PROMPTS
    free = _answers(tiny_gguf, prompts, None)
    assert all(_verdicts(free)), free
    constrained = _answers(tiny_gguf, prompts, schema_text(PLANTED))
    assert _verdicts(constrained) == [None] * len(prompts), constrained


def test_the_primary_answers_more_rows_and_is_compared_on_the_first_ones(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    """``bench.quality.primary_test_rows``: the primary answers 6 rows, the others 4; its figures on its first
    4 rows are recorded beside. Planted: the references of rows 0, 2, 4 and 5 are the model's own answers."""
    from edgesft.isolate import call

    prompts = [*PROMPTS, "call dad now", "navigate home"]
    schema = schema_text(PLANTED)
    answers = _answers(tiny_gguf, prompts, schema)
    wrong = {"intent": "call", "slots": {"contact": "nobody"}}
    refs = [a if i in (0, 2, 4, 5) else json.dumps(wrong) for i, a in enumerate(answers)]
    assert [json.loads(r) != wrong for r in refs] == [True, False, True, False, True, True], answers
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]})
            + "\n"
            for p, r in zip(prompts, refs, strict=True)
        )  # fmt: skip
    )
    sequences = tmp_path / "sequences.json"
    sequences.write_text("[]")
    quality = {"sequences": str(sequences), "reference_dir": None, "test_file": str(test_file), "task": "json",
               "max_new_tokens": BUDGET, "schema": schema, "test_rows": 6, "common_rows": 4}  # fmt: skip
    request = {"artifact": str(tiny_gguf), "threads": 1, "latency": None, "quality": quality}
    test = call("edgesft.benchmark:bench_artifact", request, timeout=600)["quality"]["test"]
    assert (test["n"], test["exact_match"]) == (6, pytest.approx(4 / 6))
    assert (test["first_rows"]["n"], test["first_rows"]["exact_match"]) == (4, 0.5)
    others = call("edgesft.benchmark:bench_artifact", {**request, "quality": {**quality, "test_rows": 4,
                  "common_rows": None}}, timeout=600)["quality"]["test"]  # fmt: skip
    assert "first_rows" not in others and others["exact_match"] == 0.5


@pytest.mark.slow
def test_constrained_onnx_decoding_never_leaves_the_schema(tiny: Path, tmp_path: Path) -> None:
    from edgesft.config import OnnxVariant
    from edgesft.onnx_export import build_variant

    folder = tmp_path / "fp32"
    build_variant(tiny, folder, OnnxVariant(name="fp32", precision="fp32"), context_length=256,
                  calibration=None, log=lambda _: None)  # fmt: skip
    free = _answers(folder, PROMPTS, None)
    assert all(_verdicts(free)), free
    constrained = _answers(folder, PROMPTS, schema_text(PLANTED))
    assert _verdicts(constrained) == [None] * len(PROMPTS), constrained
    compact = [json.dumps(json.loads(a), separators=(",", ":"), ensure_ascii=False) for a in constrained]
    assert constrained == compact  # no whitespace between tokens, as the answers are trained


def test_the_bundle_ships_schema_and_grammar_and_the_gguf_runner_constrains(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    from edgesft import prompt
    from edgesft.bundle import TEMPLATES
    from edgesft.stages.export import _ship_schema

    source = tmp_path / "data" / SCHEMA_FILE
    source.parent.mkdir()
    source.write_text(json.dumps(PLANTED, indent=2))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    notes = _ship_schema(source, bundle, "tiny.gguf", "t")
    assert (bundle / SCHEMA_FILE).read_bytes() == source.read_bytes()
    grammar = (bundle / GRAMMAR_FILE).read_text()
    assert grammar.startswith("root ::=") or "\nroot ::=" in grammar
    assert "--grammar-file answer.gbnf" in notes and "format: $s[0]" in notes and "set_guidance" in notes
    onnx_only = tmp_path / "onnx-only"
    onnx_only.mkdir()
    notes = _ship_schema(source, onnx_only, None, "t")
    assert (
        "set_guidance" in notes and "--grammar-file" not in notes and not (onnx_only / GRAMMAR_FILE).exists()
    )
    for name in ("run_gguf.py", "run_onnx.py"):
        shutil.copy2(TEMPLATES / name, bundle / name)
    shutil.copy2(prompt.__file__, bundle / "edgesft_prompt.py")
    shutil.copy2(tiny_gguf, bundle / "tiny.gguf")

    def chat(*flags: str) -> str:
        proc = subprocess.run(
            [sys.executable, "run_gguf.py", "tiny.gguf", *flags],
            cwd=bundle,
            input="call mom\n",
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.removeprefix("> ").splitlines()[0]  # after the runner's input prompt

    assert _verdicts([chat()]) == [None]
    assert all(_verdicts([chat("--no-constrain")]))
