"""`edgesft check` and baselines on two tiny GGUFs, one about ten times slower to decode than the other.

Timing tests use one thread (a loaded 2-core runner makes multi-threaded llama.cpp erratic) and a 50%
allowance against a ~10x slowdown, so their verdicts do not depend on the machine's load; the false-alarm
rate at the real 10% allowance is what bench/gate_calibration.py measures.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_gguf import make_model

from edgesft.cli import main
from edgesft.config import CheckConfig, ModelConfig
from edgesft.errors import EdgesftError
from edgesft.gate import (
    LEGACY_REFERENCE,
    SCHEMA,
    TimingFailure,
    TimingWorker,
    artifact_facts,
    artifact_path,
    check,
    check_settings,
    compare_facts,
    interleave,
    load_baseline,
    primary_key,
    reference_workload,
    save_baseline,
)
from edgesft.gguf_export import write_gguf
from edgesft.isolate import IsolatedFailure
from edgesft.models import resolve_model

ALLOW = "0.5"


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"fast": hidden 64 x 2 layers, "slow": hidden 512 x 6 layers}, both F16 with the SmolLM2 vocabulary."""
    tok = resolve_model(ModelConfig(base="tiny-llama")).path
    root = tmp_path_factory.mktemp("gate")
    shapes = {
        "fast": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2),
        "slow": dict(
            hidden_size=512,
            intermediate_size=1024,
            num_hidden_layers=6,
            num_attention_heads=8,
            num_key_value_heads=4,
        ),
    }
    out = {}
    for name, shape in shapes.items():
        src = make_model(root / name, tok, **shape)
        write_gguf(src, root / f"{name}.gguf", "f16")
        shutil.rmtree(src)
        out[name] = root / f"{name}.gguf"
    return out


def _facts(**changes: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "kind": "gguf",
        "status": "ok",
        "size_bytes": 1_000_000,
        "precision": "Q4_K_M",
        "fallback_tensors": 2,
        "params": 135_000_000,
        "verified": "passed",
        "quality": {
            "val_perplexity": 3.0,
            "kl_mean": 0.03,
            "test": {
                "n": 100,
                "exact_match": 0.80,
                "intent_accuracy": 0.95,
                "slot_f1": 0.90,
                "valid_json": 1.0,
            },
        },
    }
    for key, value in changes.items():
        if key in facts["quality"]["test"]:
            facts["quality"]["test"][key] = value
        elif key in facts["quality"]:
            facts["quality"][key] = value
        else:
            facts[key] = value
    return facts


def fake_run(root: Path, gguf: Path, name: str = "run", **changes: Any) -> Path:
    """A run folder with what check reads: bench/bench.json (one GGUF artifact, ``changes`` applied to its
    figures), the GGUF under gguf/, and an export manifest naming it the primary."""
    run = root / name
    (run / "gguf").mkdir(parents=True)
    os.link(gguf, run / "gguf" / "m.gguf")
    record = {**_facts(**changes), "path": "gguf/m.gguf", "runtime": "llama.cpp", "stage": "gguf"}
    record["size_bytes"] = changes.get("size_bytes", gguf.stat().st_size)
    bench = {"machine": {"cpu_model": "test cpu"}, "threads": 1, "artifacts": {"gguf/m.gguf": record}}
    (run / "bench").mkdir()
    (run / "bench" / "bench.json").write_text(json.dumps(bench))
    from edgesft.io import sha256_file

    # the manifests of the stages that made it: check verifies the file against its recorded sha256
    gguf_manifest = {
        "stage": "gguf",
        "status": "complete",
        "info": {"source_stage": "merge"},
        "metrics": {"artifacts": [{"file": "m.gguf", "precision": "Q4_K_M", "status": "ok"}]},
        "outputs": {"m.gguf": {"sha256": sha256_file(gguf), "size": gguf.stat().st_size}},
    }
    (run / "gguf" / "manifest.json").write_text(json.dumps(gguf_manifest))
    (run / "export").mkdir()
    (run / "export" / "manifest.json").write_text(
        json.dumps({"stage": "export", "status": "complete", "info": {"primary": "m.gguf"}})
    )
    return run


# --------------------------------------------------------------------------------------------------------
# Workers


@pytest.mark.slow
def test_worker_times_and_reports_failures_in_one_line(tmp_path: Path, ggufs: dict[str, Path]) -> None:
    with (
        TimingWorker.artifact(ggufs["fast"], threads=1) as fast,
        TimingWorker.artifact(ggufs["slow"], 1) as slow,
    ):
        f, s = interleave(fast, slow, rounds=4, tokens=16)
        assert len(f) == len(s) == 4 and all(t > 0 for t in f + s)
        ratio = sorted(b / a for a, b in zip(f, s, strict=True))[1]
        assert ratio > 2.0, f"slow/fast per-token time only {ratio:.2f}x: the tests below need a clear gap"
        # a hang: the request outlives its time limit; the worker is killed, the error names the file
        fast.timeout_s = 0.0001
        with pytest.raises(IsolatedFailure, match=r"fast\.gguf: timing worker timed out") as hang:
            fast.time(4096)
        assert hang.value.kind == "timeout" and fast._proc.poll() is not None
        # a crash between requests
        os.kill(slow._proc.pid, signal.SIGKILL)
        slow._proc.wait()
        with pytest.raises(IsolatedFailure, match=r"slow\.gguf: timing worker crashed \(SIGKILL\)"):
            slow.time(4)
    # both children are gone; closing still closed every pipe
    assert all(w._proc.stdin.closed and w._proc.stdout.closed for w in (fast, slow))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(EdgesftError, match=r"broken\.gguf: cannot open it") as err:
        TimingWorker.artifact(bad, 1)
    assert "\n" not in str(err.value)
    with TimingWorker.reference(1, reference_workload(5 << 20)) as ref:
        seconds = ref.time(1)  # no upper bound: the machine may be loaded
        assert seconds > 0 and math.isfinite(seconds)
        environ = Path(f"/proc/{ref._proc.pid}/environ")
        if environ.exists():  # an idle worker must sleep, not spin on the core the other one is timed on
            assert b"OMP_WAIT_POLICY=PASSIVE" in environ.read_bytes().split(b"\0")


# --------------------------------------------------------------------------------------------------------
# Latency gates


@pytest.mark.slow
def test_interleaved_gate_passes_itself_and_fails_a_slower_artifact(
    tmp_path: Path, ggufs: dict[str, Path]
) -> None:
    same = tmp_path / "same.gguf"
    os.link(ggufs["slow"], same)
    ok = check(ggufs["slow"], same, allowed_slowdown=0.5, rounds=10, threads=1)
    assert ok.passed and ok.mode == "interleaved" and [r.figure for r in ok.rows] == ["decode tok/s"]
    bad = check(ggufs["slow"], ggufs["fast"], allowed_slowdown=0.5, rounds=10, threads=1)
    assert not bad.passed and bad.rows[0].verdict == "FAIL"
    assert "REGRESSION" not in bad.rows[0].note and "time ratio" in bad.rows[0].note
    assert bad.rows[0].current < bad.rows[0].baseline  # decode tok/s dropped
    assert bad.summary().startswith("check FAILED: 1 of 1")


@pytest.mark.slow
def test_stored_baseline_and_cli_exit_codes(
    tmp_path: Path,
    ggufs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_run = fake_run(tmp_path, ggufs["slow"], "slow")
    fast_run = fake_run(tmp_path, ggufs["fast"], "fast")
    monkeypatch.chdir(tmp_path)
    # default path bench/baselines/<run name>.json under the working directory
    assert main(["bench", str(slow_run), "--save-baseline", "--rounds", "10"]) == 0
    out = capsys.readouterr().out
    saved = tmp_path / "bench" / "baselines" / "slow.json"
    assert str(Path("bench") / "baselines" / "slow.json") in out and "gguf/m.gguf" in out and "tok/s" in out
    base = load_baseline(saved)
    lat = base.latency()["gguf/m.gguf"]
    assert base.threads == 1 and len(lat.normalized_rounds) == lat.rounds == 10 and lat.decode_tok_s
    assert base.check.rounds == 10 and lat.reference.warm and lat.reference.name.startswith("torch-mv")
    # the workload is sized from the artifact's file: the same one a check of it will time against
    size = (slow_run / "gguf" / "m.gguf").stat().st_size
    assert lat.reference.model_dump() == {**reference_workload(size), "name": lat.reference.name}

    # the same artifact against its own baseline passes (rounds come from the baseline's stored settings)
    assert main(["check", str(slow_run), "--baseline", str(saved), "--allowed-slowdown", ALLOW]) == 0
    table = capsys.readouterr().out
    assert "decode tok/s" in table and "vs reference workload" in table
    assert table.strip().splitlines()[-1].startswith("check passed")

    # a slower artifact against a faster one's baseline: decode time and file size fail, exit 1, --json
    fast_base = tmp_path / "fast.json"
    record = save_baseline(fast_run, fast_base, rounds=10, log=lambda _m: None)
    assert record["artifacts"]["gguf/m.gguf"]["latency"]["decode_tok_s"] > lat.decode_tok_s
    code = main(["check", str(slow_run), "--baseline", str(fast_base), "--allowed-slowdown", ALLOW, "--json"])
    assert code == 1
    result = json.loads(capsys.readouterr().out)
    failed = {r["figure"] for r in result["rows"] if r["verdict"] == "FAIL"}
    assert failed == {"decode tok/s", "size bytes"} and not result["passed"] and result["mode"] == "reference"

    # bad input: exit 2 with one line naming the problem
    (tmp_path / "nobench").mkdir()
    assert main(["check", str(tmp_path / "nobench"), "--baseline", str(saved)]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        == f"error: CURRENT: no bench stage in {tmp_path / 'nobench'}; run the recipe with bench enabled"
    )
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert main(["check", str(slow_run), "--baseline", str(junk)]) == 2
    assert f"{junk}: unreadable baseline" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something/else"}))
    assert main(["check", str(slow_run), "--baseline", str(other)]) == 2
    assert "not an edgesft baseline" in capsys.readouterr().err
    assert main(["check", str(slow_run), "--baseline", str(saved), "--rounds", "9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: check settings: rounds:") and "10" in err and err.count("\n") == 1
    for flag in ("--rounds", "--threads"):
        with pytest.raises(SystemExit) as usage:  # argparse: not a positive whole number
            main(["check", str(slow_run), "--baseline", str(saved), flag, "0"])
        assert usage.value.code == 2
        assert f"argument {flag}: expected a positive whole number" in capsys.readouterr().err
    assert main(["check", str(slow_run), "--baseline", str(saved), "--artifact", "onnx/int4"]) == 2
    assert "no decode timing saved for onnx/int4" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "nobench"), "--save-baseline"]) == 2
    assert "RUN: no bench stage" in capsys.readouterr().err
    # without --save-baseline: the bench.json summary
    assert main(["bench", str(slow_run)]) == 0
    assert "gguf/m.gguf" in capsys.readouterr().out


@pytest.mark.slow
def test_run_folders_interleaved_and_deterministic_failure_exit_1(
    tmp_path: Path, ggufs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = fake_run(tmp_path, ggufs["slow"], "base")
    worse = fake_run(tmp_path, ggufs["slow"], "worse", exact_match=0.70)
    args = ["--allowed-slowdown", ALLOW, "--rounds", "10", "--threads", "1"]
    assert main(["check", str(worse), "--baseline", str(base), *args]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any("decode tok/s" in ln and "interleaved" in ln and " ok " in ln for ln in out)
    fail = [ln for ln in out if " FAIL " in ln]
    assert len(fail) == 1 and "test exact_match" in fail[0] and "-10.0 pts" in fail[0]
    assert out[-1] == "check FAILED: 1 of 12 figures regressed (test exact_match of gguf/m.gguf)"


@pytest.mark.slow
def test_an_untimed_or_crashing_current_artifact_fails_its_latency_row(
    tmp_path: Path, ggufs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--allowed-slowdown", ALLOW, "--threads", "1"]
    base = fake_run(tmp_path, ggufs["slow"], "base")
    # not benchmarked ok in CURRENT, also when the baseline run failed it too: a failing row, never none
    for name, base_run in (
        ("crashed", base),
        ("both", fake_run(tmp_path, ggufs["slow"], "bad", status="crashed")),
    ):
        cur = fake_run(tmp_path, ggufs["slow"], name, status="crashed")
        result = check(cur, base_run, threads=1)
        assert not result.passed
        [row] = [r for r in result.rows if r.figure == "decode tok/s"]
        assert not row.ok and row.current is None and row.note == "not timed: benchmark crashed"
    stored = tmp_path / "stored.json"
    stored.write_text(json.dumps(baseline_record()))
    result = check(tmp_path / "crashed", stored, threads=1)
    [row] = [r for r in result.rows if r.figure == "decode tok/s"]
    assert not row.ok and row.baseline == 100.0 and row.note == "not timed: benchmark crashed"

    # the current artifact's timing worker fails: a regression of that artifact (exit 1), one line
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    cur = fake_run(tmp_path, broken, "broken")
    for baseline in (base, stored):
        assert main(["check", str(cur), "--baseline", str(baseline), *args]) == 1
        [line] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("decode tok/s")]
        assert " FAIL " in line and f"timing failed: {cur / 'gguf' / 'm.gguf'}: cannot open it" in line
    # ... but a failing baseline artifact or reference workload is an error (exit 2)
    assert main(["check", str(base), "--baseline", str(cur), *args]) == 2
    assert f"error: {cur / 'gguf' / 'm.gguf'}: cannot open it" in capsys.readouterr().err
    with pytest.raises(TimingFailure, match="reference workload: timing worker timed out") as err:
        check(base, stored, threads=1, timeout_s=0.0001)
    assert err.value.role == "reference"


def baseline_record() -> dict[str, Any]:
    """A stored baseline as save_baseline writes it, with one gated GGUF."""
    latency = {
        "normalized_rounds": [2.0] * 10,
        "decode_tok_s": 100.0,
        "rounds": 10,
        "reference": reference_workload(4 << 20),
    }
    art = {**_facts(), "latency": latency}
    return {
        "schema": SCHEMA,
        "machine": {"cpu_model": "test cpu"},
        "threads": 1,
        "decode_tokens": 32,
        "check": CheckConfig().model_dump(),
        "artifacts": {"gguf/m.gguf": art},
    }


def _art(record: dict[str, Any]) -> dict[str, Any]:
    art: dict[str, Any] = record["artifacts"]["gguf/m.gguf"]
    return art


HAND_EDITED: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "machine": (lambda r: r.update(machine=None), "machine: expected an object, got null"),
    "check": (lambda r: r.update(check=[]), "check: expected an object, got []"),
    "reference": (
        lambda r: r.update(reference_workload="mv"),
        'reference_workload: expected an object, got "mv"',
    ),
    "reference n": (
        lambda r: _art(r)["latency"]["reference"].update(n="big"),
        'artifacts.gguf/m.gguf.latency.reference.n: expected a positive integer, got "big"',
    ),
    "reference warm": (
        lambda r: _art(r)["latency"]["reference"].update(warm="yes"),
        'artifacts.gguf/m.gguf.latency.reference.warm: expected true or false, got "yes"',
    ),
    "threads": (lambda r: r.update(threads="2"), 'threads: expected a positive integer or null, got "2"'),
    "no artifacts": (lambda r: r.pop("artifacts"), "artifacts: missing"),
    "artifacts": (lambda r: r.update(artifacts=[]), "artifacts: expected an object, got []"),
    "artifact": (
        lambda r: r["artifacts"].update({"gguf/m.gguf": 3}),
        "artifacts.gguf/m.gguf: expected an object",
    ),
    "size_bytes": (
        lambda r: _art(r).update(size_bytes="1 MB"),
        'artifacts.gguf/m.gguf.size_bytes: expected a number or null, got "1 MB"',
    ),
    "quality": (
        lambda r: _art(r).update(quality=[1]),
        "artifacts.gguf/m.gguf.quality: expected an object or null, got [1]",
    ),
    "kl_mean": (
        lambda r: _art(r)["quality"].update(kl_mean=True),
        "artifacts.gguf/m.gguf.quality.kl_mean: expected a number or null, got true",
    ),
    "test metric": (
        lambda r: _art(r)["quality"]["test"].update(exact_match="80%"),
        "artifacts.gguf/m.gguf.quality.test.exact_match: expected a number or null",
    ),
    "latency": (
        lambda r: _art(r).update(latency=12),
        "artifacts.gguf/m.gguf.latency: expected an object or null",
    ),
    "rounds missing": (
        lambda r: _art(r)["latency"].pop("normalized_rounds"),
        "artifacts.gguf/m.gguf.latency.normalized_rounds: missing",
    ),
    "rounds": (
        lambda r: _art(r)["latency"].update(normalized_rounds=[1.0, -1.0]),
        "artifacts.gguf/m.gguf.latency.normalized_rounds: expected a non-empty array of positive numbers, "
        "got [1.0, -1.0]",
    ),
    "tok/s": (
        lambda r: _art(r)["latency"].update(decode_tok_s={}),
        "artifacts.gguf/m.gguf.latency.decode_tok_s: expected a positive number or null, got {}",
    ),
    "check value": (
        lambda r: r["check"].update(rounds=5),
        "check.rounds: Input should be greater than or equal to 10",
    ),
}


@pytest.mark.parametrize("case", HAND_EDITED)
def test_hand_edited_baseline_is_one_line_naming_the_key(tmp_path: Path, case: str) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline_record()))
    assert load_baseline(path).facts() == {"gguf/m.gguf": _art(baseline_record())}
    record = baseline_record()
    change, message = HAND_EDITED[case]
    change(record)
    path.write_text(json.dumps(record))
    with pytest.raises(EdgesftError) as err:
        load_baseline(path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


def test_committed_baseline_loads_unchanged() -> None:
    path = Path(__file__).resolve().parents[1] / "bench" / "baselines" / "ci-smoke.json"
    raw = json.loads(path.read_text())
    base = load_baseline(path)
    assert base.facts() == raw["artifacts"] and base.machine == raw["machine"]
    assert list(base.latency()) == ["gguf/ci-smoke-Q4_K_M.gguf"]
    assert (base.threads, base.decode_tokens, base.check.rounds) == (1, 256, 12)
    assert base.check.model_dump() == raw["check"]


def test_a_schema_1_baseline_is_checked_against_its_own_fixed_workload(tmp_path: Path) -> None:
    record = baseline_record()
    record["schema"] = "edgesft.baseline/1"
    del _art(record)["latency"]["reference"]
    record["reference_workload"] = {"name": LEGACY_REFERENCE["name"]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record))
    saved = load_baseline(path).latency()["gguf/m.gguf"].reference
    assert (saved.n, saved.repeats, saved.warm) == (4096, 16, False)


def test_the_reference_matrix_streams_about_the_artifacts_bytes() -> None:
    for size in (5 << 20, 62 << 20, 300 << 20):
        w = reference_workload(size)
        assert w["n"] % 64 == 0 and abs(4 * w["n"] ** 2 / size - 1) < 0.06
        assert w["repeats"] * 4 * w["n"] ** 2 >= 1 << 30 and w["warm"] is True
    assert reference_workload(1)["n"] == 256 and reference_workload(1 << 40)["n"] == 16384
    assert reference_workload(5 << 20) == reference_workload(5 << 20)  # a baseline's workload is reproducible


# --------------------------------------------------------------------------------------------------------
# The runtime interface timing drives


def test_timed_runs_step_through_the_runtime_interface(ggufs: dict[str, Path]) -> None:
    from edgesft.runtimes.timing import filler_ids, open_for_timing, timed_run

    art = open_for_timing(ggufs["fast"], threads=1)
    try:
        ids = filler_ids(art, 5)
        assert len(ids) == 5 and filler_ids(art, 0) == ids[:1]
        greedy = art.generate(ids, 8)
        art.prefill(ids, len(greedy))
        picks = []
        for _ in greedy:
            picks.append(art.next_token())
            art.step(picks[-1])
        assert picks == greedy  # prefill, next_token and step are greedy decoding, one piece at a time
        run = timed_run(art, ids, 16)
        assert (run.prompt_tokens, run.steps) == (5, 16) and run.decode_tok_s > 0 and run.prefill_tok_s > 0
    finally:
        art.close()


# --------------------------------------------------------------------------------------------------------
# Deterministic figures and settings


def test_deterministic_figures_fail_with_the_right_row() -> None:
    cfg = CheckConfig()
    base = {"gguf/a.gguf": _facts(), "onnx/int4": _facts(kind="onnx", fallback_tensors=None)}
    same = compare_facts(base, copy.deepcopy(base), cfg)
    assert same and all(r.ok for r in same)
    figures = {r.figure for r in same}
    assert {
        "size bytes",
        "params",
        "fallback tensors",
        "verification",
        "kl_mean",
        "val_perplexity",
        "test rows",
    } <= figures
    assert {f"test {m}" for m in ("exact_match", "intent_accuracy", "slot_f1", "valid_json")} <= figures

    def failed(**changes: Any) -> list[tuple[str, str]]:
        cur = copy.deepcopy(base)
        cur["gguf/a.gguf"] = _facts(**changes)
        return [(r.figure, r.artifact) for r in compare_facts(base, cur, cfg) if not r.ok]

    a = "gguf/a.gguf"
    assert failed(size_bytes=1_010_000) == []  # exactly +1%: within
    assert failed(size_bytes=1_020_000) == [("size bytes", a)]
    assert failed(size_bytes=500_000) == []  # smaller is fine
    assert failed(params=135_000_001) == [("params", a)]
    assert failed(fallback_tensors=3) == [("fallback tensors", a)]
    assert failed(exact_match=0.78) == []  # a 2-point drop is the tolerance
    assert failed(exact_match=0.77) == [("test exact_match", a)]
    assert failed(slot_f1=0.99) == []
    assert failed(n=400) == [("test rows", a)]  # figures on other rows are not compared as if the same
    assert failed(kl_mean=0.06) == [("kl_mean", a)]
    assert failed(val_perplexity=3.2) == [("val_perplexity", a)]  # +6.7% > 5%
    assert failed(verified="failed") == [("verification", a)]
    # a figure the baseline has and the current run lost fails as "missing"
    assert failed(kl_mean=None) == [("kl_mean", a)]
    assert failed(params=None, val_perplexity=None) == [("params", a), ("val_perplexity", a)]
    lost = copy.deepcopy(base)
    lost[a]["quality"]["test"] = {}
    rows = [r for r in compare_facts(base, lost, cfg) if not r.ok]
    assert [r.figure for r in rows] == [
        "test rows",
        *(f"test {m}" for m in ("exact_match", "intent_accuracy", "slot_f1", "valid_json")),
    ]
    assert all(r.current is None and r.note == "missing" for r in rows)
    assert failed(status="crashed") == [("artifact", a)]
    missing = compare_facts(base, {"onnx/int4": base["onnx/int4"]}, cfg)
    assert [(r.figure, r.current, r.ok) for r in missing if not r.ok] == [("artifact", "missing", False)]
    # a new artifact is reported, not failed; a baseline artifact that had failed holds nothing
    extra = {**copy.deepcopy(base), "gguf/b.gguf": _facts()}
    assert all(r.ok for r in compare_facts(base, extra, cfg))
    assert compare_facts({a: _facts(status="crashed")}, {}, cfg) == []


def test_facts_from_manifests_and_primary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    gguf_art = {"kind": "gguf", "status": "ok", "size_bytes": 10, "params": None, "fallback_tensors": None}
    # the primary answered 400 rows, the others 100: the gate holds it to its figures on the first 100
    first = {"n": 100, "exact_match": 0.6}
    gguf_art["quality"] = {"kl_mean": 0.1, "test": {"n": 400, "exact_match": 0.5, "first_rows": first}}
    bench = {
        "artifacts": {
            "torch/merge": {"kind": "torch", "stage": "merge", "status": "ok"},
            "onnx/int4": {"kind": "onnx", "status": "ok"},
            "gguf/m-Q4_K_M.gguf": gguf_art,
        }
    }
    manifests = {
        "gguf": {
            "metrics": {
                "source_stage": "merge",
                "artifacts": [{"file": "m-Q4_K_M.gguf", "fallbacks": [{}, {}]}],
            }
        },
        "merge": {"metrics": {"params_total": 1234}},
        "verify": {"metrics": {"artifacts": {"gguf/m-Q4_K_M.gguf": {"status": "passed"}}}},
    }
    manifests["gguf"]["info"] = {"source_stage": "merge"}
    manifests["merge"]["info"] = {"model": "model"}
    for stage, m in manifests.items():
        (run / stage).mkdir(parents=True)
        (run / stage / "manifest.json").write_text(json.dumps({"status": "complete", **m}))
    facts = artifact_facts(run, bench)["gguf/m-Q4_K_M.gguf"]
    assert (facts["params"], facts["fallback_tensors"], facts["verified"]) == (1234, 2, "passed")
    assert facts["quality"]["test"] == first
    assert artifact_facts(run, bench)["torch/merge"]["params"] == 1234
    assert primary_key(run, bench) == "gguf/m-Q4_K_M.gguf"  # no export stage: the first GGUF
    (run / "export").mkdir()
    (run / "export" / "manifest.json").write_text(
        json.dumps({"status": "complete", "info": {"primary": "int4"}})
    )
    assert primary_key(run, bench) == "onnx/int4"


def test_settings_precedence(tmp_path: Path) -> None:
    from conftest import write_recipe

    recipe = write_recipe(tmp_path, bench={"check": {"rounds": 20, "kl_tolerance": 0.1}})
    stored = {"rounds": 16, "allowed_slowdown": 0.2, "decode_tokens": 16, "unknown_future_key": 1}
    cfg = check_settings(recipe, stored, allowed_slowdown=0.3, rounds=None)
    # flag > recipe (only the keys it sets) > stored > default
    assert (cfg.allowed_slowdown, cfg.rounds, cfg.kl_tolerance, cfg.decode_tokens) == (0.3, 20, 0.1, 16)
    assert cfg.size_tolerance == CheckConfig().size_tolerance
    with pytest.raises(EdgesftError, match="check settings: allowed_slowdown"):
        check_settings(None, None, allowed_slowdown=-1.0)
    assert check_settings(None, None, rounds=10).rounds == 10
    with pytest.raises(EdgesftError, match="check settings: rounds"):  # the issue asks for 10 at least
        check_settings(None, None, rounds=9)


def test_check_refuses_an_artifact_that_changed_after_its_stage_wrote_it(tmp_path: Path) -> None:
    import os

    from edgesft.io import sha256_file

    run = tmp_path / "run"
    (run / "gguf").mkdir(parents=True)
    f = run / "gguf" / "m-Q8_0.gguf"
    f.write_bytes(b"GGUF" + bytes(60))
    manifest = {
        "status": "complete",
        "info": {"source_stage": "merge"},
        "metrics": {"artifacts": [{"file": f.name, "precision": "Q8_0", "status": "ok"}]},
        "outputs": {f.name: {"sha256": sha256_file(f), "size": 64}},
    }
    (run / "gguf" / "manifest.json").write_text(json.dumps(manifest))
    bench = {"artifacts": {"gguf/m-Q8_0.gguf": {"status": "ok"}}}
    assert artifact_path(run, bench, "gguf/m-Q8_0.gguf") == f
    f.write_bytes(b"GGUF" + bytes(59) + b"\x01")  # one bit flipped, same size
    os.utime(f, ns=(1, 1))
    with pytest.raises(EdgesftError, match="m-Q8_0.gguf: sha256 differs from the gguf stage's manifest"):
        artifact_path(run, bench, "gguf/m-Q8_0.gguf")
