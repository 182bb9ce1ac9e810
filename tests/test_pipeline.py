"""Stage cache: hits, misses, invalidation downstream only, --force/--from/--until, corrupt folders, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesft.config import load_recipe
from edgesft.errors import EdgesftError
from edgesft.pipeline import StageInputs, StageResult, StageSpec, run_pipeline
from tests.conftest import write_recipe

CALLS: list[str] = []


def _first(recipe, inputs: StageInputs, out: Path) -> StageResult:
    CALLS.append("data")
    (out / "rows.txt").write_text(f"lr={recipe.data.max_length}\n")
    return StageResult(metrics={"n": 1}, info={"file": "rows.txt"})


def _second(recipe, inputs: StageInputs, out: Path) -> StageResult:
    CALLS.append("train")
    upstream = (inputs.stage_dir("data") / inputs.info("data")["file"]).read_text()
    (out / "model.bin").write_text(upstream + f"steps={recipe.train.max_steps}\n")
    if recipe.train.logging_steps == 99:
        raise RuntimeError("boom")
    return StageResult(metrics={"ok": True})


STAGES = {
    "data": StageSpec("data", _first, sections=("data",)),
    "train": StageSpec("train", _second, sections=("train",), reads=("data",)),
}


@pytest.fixture
def recipe(tmp_path: Path):
    CALLS.clear()
    return lambda *o: load_recipe(write_recipe(tmp_path), list(o))


def _run(r, **kw):
    return run_pipeline(r, STAGES, log=lambda _m: None, **kw)


def test_second_run_is_all_cache_hits(recipe) -> None:
    m1 = _run(recipe())
    assert CALLS == ["data", "train"]
    m2 = _run(recipe())
    assert CALLS == ["data", "train"]  # nothing re-ran
    assert m1["train"]["cache_key"] == m2["train"]["cache_key"]
    manifest = json.loads((recipe().run_dir / "train" / "manifest.json").read_text())
    assert manifest["outputs"]["model.bin"]["sha256"] and manifest["versions"]["edgesft"]
    assert manifest["config"]["train"]["max_steps"] == 6 and manifest["started"] and manifest["finished"]


def test_changing_a_stage_reruns_it_and_later_stages_only(recipe) -> None:
    _run(recipe())
    _run(recipe("train.max_steps=7"))
    assert CALLS == ["data", "train", "train"]
    _run(recipe("train.max_steps=7", "data.max_length=64"))
    assert CALLS == ["data", "train", "train", "data", "train"]
    out = (recipe().run_dir / "train" / "model.bin").read_text()
    assert "lr=64" in out and "steps=7" in out


def test_force_from_until(recipe) -> None:
    _run(recipe())
    _run(recipe(), force=True)
    assert CALLS == ["data", "train", "data", "train"]
    CALLS.clear()
    _run(recipe(), from_stage="train")
    assert CALLS == ["train"]
    CALLS.clear()
    _run(recipe("data.max_length=32"), until_stage="data")
    assert CALLS == ["data"]
    with pytest.raises(EdgesftError, match="--from nope: unknown stage"):
        _run(recipe(), from_stage="nope")


def test_corrupt_or_incomplete_stage_is_rebuilt(recipe) -> None:
    _run(recipe())
    run_dir = recipe().run_dir
    (run_dir / "train" / "model.bin").write_text("tampered")
    _run(recipe())
    assert CALLS[-1] == "train"
    (run_dir / "data" / "manifest.json").write_text("{ truncated")
    CALLS.clear()
    _run(recipe())
    # data is rebuilt; its outputs come out byte-identical, so train's content-addressed key still matches
    assert CALLS == ["data"]
    (run_dir / "train" / "manifest.json").unlink()
    CALLS.clear()
    _run(recipe())
    assert CALLS == ["train"]


def test_failed_stage_leaves_previous_output_intact(recipe) -> None:
    _run(recipe())
    run_dir = recipe().run_dir
    before = (run_dir / "train" / "model.bin").read_text()
    with pytest.raises(RuntimeError, match="boom"):
        _run(recipe("train.logging_steps=99"))
    assert (run_dir / "train" / "model.bin").read_text() == before
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    CALLS.clear()
    _run(recipe())
    assert CALLS == []  # the intact old folder is still a valid cache entry for the old config


def test_stale_temp_folders_are_ignored_and_cleaned(recipe) -> None:
    r = recipe()
    stale = r.run_dir / ".train.deadbeefdeadbeef.tmp"  # the pipeline's own name: .<stage>.<key16>.tmp
    stale.mkdir(parents=True)
    (stale / "model.bin").write_text("half")
    theirs = r.run_dir / ".train.deadbeef.tmp"  # not a name the pipeline makes: left alone
    theirs.mkdir()
    _run(r)
    assert not stale.exists() and theirs.is_dir()
    assert (r.run_dir / "train" / "model.bin").read_text().startswith("lr=")


def test_run_root_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    r = load_recipe(write_recipe(tmp_path), [f"run_root={tmp_path / 'blocker'}"])
    with pytest.raises(EdgesftError, match="run_root: cannot create the run folder"):
        _run(r)
