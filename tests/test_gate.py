"""`edgesft check` and baselines on two tiny GGUFs, one about ten times slower to decode than the other.

Timing tests use one thread (a loaded 2-core runner makes multi-threaded llama.cpp erratic) and a 50%
allowance against a ~10x slowdown, so their verdicts do not depend on the machine's load; the false-alarm
rate at the real 10% allowance is what bench/gate_calibration.py measures.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from test_gguf import make_model

from edgesft.cli import main
from edgesft.config import CheckConfig, ModelConfig
from edgesft.errors import EdgesftError
from edgesft.gate import (
    TimingWorker,
    artifact_facts,
    check,
    check_settings,
    compare_facts,
    interleave,
    load_baseline,
    primary_key,
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
        "file_bytes": 1_000_000,
        "precision": "Q4_K_M",
        "fallback_tensors": 2,
        "params": 135_000_000,
        "verified": "passed",
        "quality": {
            "val_perplexity": 3.0,
            "kl_mean": 0.03,
            "test": {"exact_match": 0.80, "intent_accuracy": 0.95, "slot_f1": 0.90, "valid_json": 1.0},
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
    record["file_bytes"] = changes.get("file_bytes", gguf.stat().st_size)
    bench = {"machine": {"cpu_model": "test cpu"}, "threads": 1, "artifacts": {"gguf/m.gguf": record}}
    (run / "bench").mkdir()
    (run / "bench" / "bench.json").write_text(json.dumps(bench))
    (run / "export").mkdir()
    (run / "export" / "manifest.json").write_text(
        json.dumps({"stage": "export", "info": {"primary": "m.gguf"}})
    )
    return run


# --------------------------------------------------------------------------------------------------------
# Workers


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
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(EdgesftError, match=r"broken\.gguf: cannot open it") as err:
        TimingWorker.artifact(bad, 1)
    assert "\n" not in str(err.value)
    with TimingWorker.reference(threads=1) as ref:
        assert 0 < ref.time(1) < 1.0


# --------------------------------------------------------------------------------------------------------
# Latency gates


def test_interleaved_gate_passes_itself_and_fails_a_slower_artifact(
    tmp_path: Path, ggufs: dict[str, Path]
) -> None:
    same = tmp_path / "same.gguf"
    os.link(ggufs["slow"], same)
    ok = check(ggufs["slow"], same, allowed_slowdown=0.5, rounds=6, threads=1)
    assert ok.passed and ok.mode == "interleaved" and [r.figure for r in ok.rows] == ["decode tok/s"]
    bad = check(ggufs["slow"], ggufs["fast"], allowed_slowdown=0.5, rounds=4, threads=1)
    assert not bad.passed and bad.rows[0].verdict == "FAIL"
    assert "REGRESSION" not in bad.rows[0].note and "time ratio" in bad.rows[0].note
    assert bad.rows[0].current < bad.rows[0].baseline  # decode tok/s dropped
    assert bad.summary().startswith("check FAILED: 1 of 1")


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
    assert main(["bench", str(slow_run), "--save-baseline", "--rounds", "6"]) == 0
    out = capsys.readouterr().out
    saved = tmp_path / "bench" / "baselines" / "slow.json"
    assert str(Path("bench") / "baselines" / "slow.json") in out and "gguf/m.gguf" in out and "tok/s" in out
    base = load_baseline(saved)
    lat = base["artifacts"]["gguf/m.gguf"]["latency"]
    assert base["threads"] == 1 and len(lat["normalized_rounds"]) == lat["rounds"] == 6
    assert base["check"]["rounds"] == 6 and base["reference_workload"]["name"].startswith("torch-mv")

    # the same artifact against its own baseline passes (rounds come from the baseline's stored settings)
    assert main(["check", str(slow_run), "--baseline", str(saved), "--allowed-slowdown", ALLOW]) == 0
    table = capsys.readouterr().out
    assert "decode tok/s" in table and "vs reference workload" in table
    assert table.strip().splitlines()[-1].startswith("check passed")

    # a slower artifact against a faster one's baseline: decode time and file size fail, exit 1, --json
    fast_base = tmp_path / "fast.json"
    record = save_baseline(fast_run, fast_base, rounds=4, log=lambda _m: None)
    assert record["artifacts"]["gguf/m.gguf"]["latency"]["decode_tok_s"] > lat["decode_tok_s"]
    code = main(["check", str(slow_run), "--baseline", str(fast_base), "--allowed-slowdown", ALLOW, "--json"])
    assert code == 1
    result = json.loads(capsys.readouterr().out)
    failed = {r["figure"] for r in result["rows"] if r["verdict"] == "FAIL"}
    assert failed == {"decode tok/s", "file bytes"} and not result["passed"] and result["mode"] == "reference"

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
    assert main(["check", str(slow_run), "--baseline", str(saved), "--rounds", "2"]) == 2
    assert "check settings: rounds" in capsys.readouterr().err
    assert main(["check", str(slow_run), "--baseline", str(saved), "--artifact", "onnx/int4"]) == 2
    assert "no decode timing saved for onnx/int4" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "nobench"), "--save-baseline"]) == 2
    assert "RUN: no bench stage" in capsys.readouterr().err
    # without --save-baseline: the bench.json summary
    assert main(["bench", str(slow_run)]) == 0
    assert "gguf/m.gguf" in capsys.readouterr().out


def test_run_folders_interleaved_and_deterministic_failure_exit_1(
    tmp_path: Path, ggufs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = fake_run(tmp_path, ggufs["slow"], "base")
    worse = fake_run(tmp_path, ggufs["slow"], "worse", exact_match=0.70)
    args = ["--allowed-slowdown", ALLOW, "--rounds", "6", "--threads", "1"]
    assert main(["check", str(worse), "--baseline", str(base), *args]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any("decode tok/s" in ln and "interleaved" in ln and " ok " in ln for ln in out)
    fail = [ln for ln in out if " FAIL " in ln]
    assert len(fail) == 1 and "test exact_match" in fail[0] and "-10.0 pts" in fail[0]
    assert out[-1] == "check FAILED: 1 of 11 figures regressed (test exact_match of gguf/m.gguf)"


# --------------------------------------------------------------------------------------------------------
# Deterministic figures and settings


def test_deterministic_figures_fail_with_the_right_row() -> None:
    cfg = CheckConfig()
    base = {"gguf/a.gguf": _facts(), "onnx/int4": _facts(kind="onnx", fallback_tensors=None)}
    same = compare_facts(base, copy.deepcopy(base), cfg)
    assert same and all(r.ok for r in same)
    figures = {r.figure for r in same}
    assert {
        "file bytes",
        "params",
        "fallback tensors",
        "verification",
        "kl_mean",
        "val_perplexity",
    } <= figures
    assert {f"test {m}" for m in ("exact_match", "intent_accuracy", "slot_f1", "valid_json")} <= figures

    def failed(**changes: Any) -> list[tuple[str, str]]:
        cur = copy.deepcopy(base)
        cur["gguf/a.gguf"] = _facts(**changes)
        return [(r.figure, r.artifact) for r in compare_facts(base, cur, cfg) if not r.ok]

    a = "gguf/a.gguf"
    assert failed(file_bytes=1_010_000) == []  # exactly +1%: within
    assert failed(file_bytes=1_020_000) == [("file bytes", a)]
    assert failed(file_bytes=500_000) == []  # smaller is fine
    assert failed(params=135_000_001) == [("params", a)]
    assert failed(fallback_tensors=3) == [("fallback tensors", a)]
    assert failed(exact_match=0.78) == []  # a 2-point drop is the tolerance
    assert failed(exact_match=0.77) == [("test exact_match", a)]
    assert failed(slot_f1=0.99) == []
    assert failed(kl_mean=0.06) == [("kl_mean", a)]
    assert failed(val_perplexity=3.2) == [("val_perplexity", a)]  # +6.7% > 5%
    assert failed(verified="failed") == [("verification", a)]
    assert failed(status="crashed") == [("artifact", a)]
    missing = compare_facts(base, {"onnx/int4": base["onnx/int4"]}, cfg)
    assert [(r.figure, r.current, r.ok) for r in missing if not r.ok] == [("artifact", "missing", False)]
    # a new artifact is reported, not failed; a baseline artifact that had failed holds nothing
    extra = {**copy.deepcopy(base), "gguf/b.gguf": _facts()}
    assert all(r.ok for r in compare_facts(base, extra, cfg))
    assert compare_facts({a: _facts(status="crashed")}, {}, cfg) == []


def test_facts_from_manifests_and_primary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    gguf_art = {"kind": "gguf", "status": "ok", "file_bytes": 10, "params": None, "fallback_tensors": None}
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
    for stage, m in manifests.items():
        (run / stage).mkdir(parents=True)
        (run / stage / "manifest.json").write_text(json.dumps(m))
    facts = artifact_facts(run, bench)["gguf/m-Q4_K_M.gguf"]
    assert (facts["params"], facts["fallback_tensors"], facts["verified"]) == (1234, 2, "passed")
    assert artifact_facts(run, bench)["torch/merge"]["params"] == 1234
    assert primary_key(run, bench) == "gguf/m-Q4_K_M.gguf"  # no export stage: the first GGUF
    (run / "export").mkdir()
    (run / "export" / "manifest.json").write_text(json.dumps({"info": {"primary": "int4"}}))
    assert primary_key(run, bench) == "onnx/int4"


def test_settings_precedence(tmp_path: Path) -> None:
    from conftest import write_recipe

    recipe = write_recipe(tmp_path, bench={"check": {"rounds": 20, "kl_tolerance": 0.1}})
    stored = {"rounds": 8, "allowed_slowdown": 0.2, "decode_tokens": 16, "unknown_future_key": 1}
    cfg = check_settings(recipe, stored, allowed_slowdown=0.3, rounds=None)
    # flag > recipe (only the keys it sets) > stored > default
    assert (cfg.allowed_slowdown, cfg.rounds, cfg.kl_tolerance, cfg.decode_tokens) == (0.3, 20, 0.1, 16)
    assert cfg.size_tolerance == CheckConfig().size_tolerance
    with pytest.raises(EdgesftError, match="check settings: allowed_slowdown"):
        check_settings(None, None, allowed_slowdown=-1.0)
