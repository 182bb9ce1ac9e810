"""The stage contract: which stages re-run when one recipe field changes, stages that read what they did
not declare, partial stages, and cache keys that cover the base model's files and the bench machine."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from edgesft.config import Recipe, load_recipe
from edgesft.errors import EdgesftError
from edgesft.pipeline import (
    RecipeView,
    StageResult,
    StageSpec,
    UndeclaredRead,
    Upstream,
    run_pipeline,
    stage_key,
    stage_reads,
)
from edgesft.stages import STAGES
from tests.conftest import QUICK_LATENCY, write_recipe

ROOT = Path(__file__).resolve().parents[1]
ORDER = list(STAGES)

# The stages that read each part of the recipe directly (longest prefix wins). The re-run set of a change is
# these plus every stage that reads a re-run stage. Gate limits are checked on recorded figures: no re-run.
DIRECT: dict[str, set[str]] = {
    # a new name or run_root is a new run folder, where every stage runs; in one folder these are the keys
    "name": {"gguf", "export"},
    "run_root": set(),
    "seed": {"data", "train", "prune", "gguf", "onnx"},
    "model": {"data", "train"},
    "data": {"data", "train", "merge", "prune", "gguf", "onnx", "bench"},
    "train": {"train", "prune"},
    "train.threads": {"train", "prune", "verify"},
    "eval": {"train", "merge", "prune", "bench"},
    "merge": {"merge"},
    "merge.max_quality_drop": set(),
    "prune": {"prune"},
    "prune.max_quality_drop": set(),
    "export.gguf": {"gguf"},
    "export.onnx": {"onnx"},
    "export.verify": {"verify"},
    "export.verify.allow_failures": set(),
    "export.primary": {"export"},
    "export.max_size_mib": {"export"},
    "bench": {"bench"},
    "bench.check": set(),
}
# Fields no single change can move in these recipes and still validate (the test says so if this drifts).
UNCHANGEABLE: dict[str, set[str]] = {
    # adapters name files; target_fraction is set (target_params excludes it); without the MLP nothing fills
    # the target
    "recipes/ci-smoke.yaml": {"merge.adapters", "prune.target_params", "prune.width.mlp"},
    # and freeze tuning cannot take new tokens, nor start an adapter it does not train from LoftQ
    "recipes/phone.yaml": {
        "merge.adapters",
        "prune.target_params",
        "prune.width.mlp",
        "model.extra_special_tokens",
        "train.lora.init",
    },
}


def _direct(path: str) -> set[str]:
    best = max((p for p in DIRECT if path == p or path.startswith(f"{p}.")), key=len)
    return DIRECT[best]


def _fake_manifests(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Manifests of every stage that runs, in order; the same bytes for the same stage in every call."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in STAGES.items():
        if spec.skip and spec.skip(recipe, out):
            continue
        info = {"model": "model"} if name in ("train", "merge", "prune") else {}
        out[name] = {"outputs": {f"{name}.bin": {"sha256": name, "size": 1}}, "info": info}
    return out


def _keys(recipe: Recipe) -> dict[str, str]:
    """Each stage's cache key (external inputs left out: tested on real files below), or why it skipped."""
    manifests = _fake_manifests(recipe)
    keys = {}
    for i, (name, spec) in enumerate(STAGES.items()):
        before = {n: m for n, m in manifests.items() if ORDER.index(n) < i}
        if name not in manifests:
            keys[name] = "skipped"
            continue
        keys[name] = stage_key(recipe, dataclasses.replace(spec, external=None), before)[0]
    return keys


def _reruns(old: Recipe, new: Recipe, direct: set[str] | None = None) -> set[str]:
    k0, k1 = _keys(old), _keys(new)
    direct = {n for n in ORDER if k0[n] != k1[n]} if direct is None else direct
    runs = [_fake_manifests(old), _fake_manifests(new)]
    out: set[str] = set()
    for i, (name, spec) in enumerate(STAGES.items()):
        if name not in runs[1]:
            if k0[name] != k1[name]:
                out.add(name)  # it now skips
            continue
        # what it reads, before or after the change (a skipped stage changes which model stage is read)
        reads = {
            u
            for m in runs
            if name in m
            for u in stage_reads(spec, {n: v for n, v in m.items() if ORDER.index(n) < i})
        }
        if name in direct or reads & out:
            out.add(name)
    return out


def _annotation(path: str) -> Any:
    model: Any = Recipe
    ann: Any = None
    for part in path.split("."):
        ann = model.model_fields[part].annotation
        model = next(
            (a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
    return ann


# Values to try where the type alone does not give a valid one.
HINTS: dict[str, list[Any]] = {
    "data.train": ["data/ci_smoke/test.jsonl", "data/phone_commands/test.jsonl"],
    "data.val": ["data/ci_smoke/test.jsonl", "data/phone_commands/test.jsonl"],
    "model.extra_special_tokens": [["<|tool|>"]],
    "bench.check.artifacts": [["gguf/x-Q4_K_M.gguf"]],
    "train.lora.target_modules": [["q_proj", "v_proj"]],
    "prune.heal.lora.target_modules": [["q_proj", "v_proj"]],
    "export.gguf.output_types": [{}, {"Q4_K_M": "Q6_K"}],
}


def _candidates(path: str, value: Any) -> list[Any]:
    if path in HINTS:
        return HINTS[path]
    ann = _annotation(path)
    args = typing.get_args(ann)
    options = [x for a in (ann, *args) if typing.get_origin(a) is typing.Literal for x in typing.get_args(a)]
    for a in (ann, *args):  # list[Literal[...]]: the literal's options are the items to add
        if typing.get_origin(a) is list:
            options += [
                x
                for b in typing.get_args(a)
                if typing.get_origin(b) is typing.Literal
                for x in typing.get_args(b)
            ]
    if isinstance(value, dict):
        return [{}] if value else []
    if isinstance(value, list):
        out = [value[:-1], value[1:]] if len(value) > 1 else [[]]
        return out + [[*value, x] for x in options if x not in value][:3]
    if options:
        return [x for x in options if x != value] + ([None] if value is not None else [])
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2, 1, None]
    if isinstance(value, float):
        return [value * 0.5, value * 2, value + 0.1, None]
    if isinstance(value, str):
        return [f"{value}x", None]
    if value is None:
        kinds = set(args) or {ann}
        return [
            c
            for k in kinds
            for c in {int: [1, 2, 8, 16, 32, 64, 100], float: [0.5, 0.1, 1.0], str: ["x"]}.get(k, [])
        ]
    return []


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    # a mapping-valued field (export.gguf.output_types) is one leaf, not a section
    if isinstance(obj, dict) and not (prefix and typing.get_origin(_annotation(prefix[:-1])) is dict):
        return [leaf for k, v in obj.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [(prefix[:-1], obj)]


@pytest.mark.parametrize("recipe_path", ["recipes/ci-smoke.yaml", "recipes/phone.yaml"])
def test_changing_one_field_reruns_exactly_the_stages_that_read_it(recipe_path: str) -> None:
    base = load_recipe(ROOT / recipe_path, [])
    changed, unchangeable, wrong = 0, set(), []
    for path, value in _leaves(base.model_dump(mode="json")):
        for candidate in _candidates(path, value):
            try:
                new = load_recipe(ROOT / recipe_path, [f"{path}={json.dumps(candidate)}"])
            except EdgesftError:
                continue
            if new.model_dump(mode="json") == base.model_dump(mode="json"):
                continue
            break
        else:
            unchangeable.add(path)
            continue
        changed += 1
        got, want = _reruns(base, new), _reruns(base, new, _direct(path))
        if got != want:
            wrong.append(f"{path}={candidate!r}: re-runs {sorted(got)}, should re-run {sorted(want)}")
    assert not wrong, "\n".join(wrong)
    assert unchangeable == UNCHANGEABLE[recipe_path]
    assert changed > 80, changed


def test_the_registry_is_in_the_pipeline_order_readers_use() -> None:
    from edgesft.pipeline import STAGE_ORDER

    assert tuple(STAGES) == STAGE_ORDER


def test_a_stage_reading_an_undeclared_section_or_stage_is_stopped() -> None:
    recipe = load_recipe(ROOT / "recipes/ci-smoke.yaml", [])
    view = RecipeView(recipe, ("export.verify", "train.threads"), "verify")
    assert view.export.verify == recipe.export.verify
    assert view.train.threads == recipe.train.threads and view.run_dir == recipe.run_dir
    for read in (lambda: view.train.max_steps, lambda: view.data, lambda: view.export.gguf):
        with pytest.raises(UndeclaredRead, match="stage verify read recipe"):
            read()
    up = Upstream({"data": {}, "train": {}}, ("data", "gguf"), "merge")
    assert up["data"] == {} and up.get("data") == {}
    assert up.get("gguf") is None and "gguf" not in up  # declared, and skipped in this run
    with pytest.raises(UndeclaredRead, match="stage merge read the stage train"):
        up.get("train")


def _write(out: Path, name: str, text: str) -> None:
    (out / name).write_text(text)


def test_a_partial_stage_is_retried_and_cached_once_it_succeeds(tmp_path: Path) -> None:
    calls: list[str] = []
    flaky = tmp_path / "flaky"
    flaky.write_text("fail")

    def make(recipe: Any, inputs: Any, out: Path) -> StageResult:
        calls.append("make")
        _write(out, "good.bin", "g")
        failed = flaky.read_text() == "fail"
        if not failed:
            _write(out, "late.bin", "l")
        return StageResult(failures=["late.bin"] if failed else [])

    def use(recipe: Any, inputs: Any, out: Path) -> StageResult:
        calls.append("use")
        _write(out, "n.txt", str(len(list(inputs.stage_dir("make").iterdir()))))
        return StageResult()

    stages = {
        "make": StageSpec("make", make, sections=("data",)),
        "use": StageSpec("use", use, sections=("data",), reads=("make",)),
    }
    recipe = load_recipe(write_recipe(tmp_path), [])
    m = run_pipeline(recipe, stages, log=lambda _m: None)
    assert m["make"]["status"] == "partial" and m["make"]["failures"] == ["late.bin"]
    run_pipeline(recipe, stages, log=lambda _m: None)
    assert calls == ["make", "use", "make"]  # retried; its outputs did not change, so `use` stayed cached
    flaky.write_text("ok")
    m = run_pipeline(recipe, stages, log=lambda _m: None)
    assert m["make"]["status"] == "complete" and calls == ["make", "use", "make", "make", "use"]
    run_pipeline(recipe, stages, log=lambda _m: None)
    assert calls == ["make", "use", "make", "make", "use"]  # complete: a cache hit


def test_keys_follow_the_base_models_files_and_the_bench_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgesft import machine
    from edgesft.models import resolve_model
    from edgesft.stages import bench, data

    monkeypatch.setenv("EDGESFT_CACHE", str(tmp_path / "cache"))
    tiny = load_recipe(write_recipe(tmp_path), [])
    folder = tmp_path / "base"
    import shutil

    shutil.copytree(resolve_model(tiny.model).path, folder)
    recipe = load_recipe(write_recipe(tmp_path / "r", model={"base": str(folder)}), [])
    before = data.external_inputs(recipe)["base_model"]
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    assert data.external_inputs(recipe)["base_model"] != before  # data re-runs, and train reads its info

    first = bench.external_inputs(recipe)
    real = machine.fingerprint
    monkeypatch.setattr(bench, "fingerprint", lambda t: {**real(t), "cpu_model": "another CPU"})
    assert bench.external_inputs(recipe) != first


def _stage_runs(logs: list[str]) -> dict[str, str]:
    out = {}
    for line in logs:
        if line.startswith("[") and ("cache hit" in line or "running" in line):
            name = line[1 : line.index("]")]
            out[name] = "hit" if "cache hit" in line else "ran"
    return out


@pytest.mark.slow
def test_the_cache_contract_on_the_real_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the tiny model through every stage: a failed quant is retried and then cached, a new quant type
    leaves ONNX cached, a copied run folder on another machine re-measures bench only, and a base model
    edited in place re-runs train."""
    import shutil

    from edgesft import machine
    from edgesft.isolate import IsolatedFailure
    from edgesft.models import resolve_model
    from edgesft.stages import bench, gguf

    base = tmp_path / "base"
    shutil.copytree(resolve_model(load_recipe(write_recipe(tmp_path / "tiny"), []).model).path, base)
    sections: dict[str, Any] = {
        "model": {"base": str(base)},
        "export": {"gguf": {"enabled": True, "quants": ["Q8_0"]}, "onnx": {"enabled": True}},
        "bench": {
            "enabled": True,
            "latency": QUICK_LATENCY,
            "quality": {"test_rows": 4, "val_rows": 4, "primary_test_rows": 6},
        },
    }

    def run(folder: Path = tmp_path, until: str | None = None, **changes: Any) -> dict[str, str]:
        logs: list[str] = []
        merged = {**sections, **changes}
        run_pipeline(
            load_recipe(write_recipe(folder, **merged), []), STAGES, until_stage=until, log=logs.append
        )
        return _stage_runs(logs)

    assert set(run().values()) == {"ran"}
    # The primary (the bundle's Q8_0 file) answers 6 test rows, the others 4.
    measured = json.loads((tmp_path / "runs" / "t" / "bench" / "bench.json").read_text())
    assert measured["primary"] == "gguf/t-Q8_0.gguf" and measured["primary_test_rows"] == 6
    tests = {k: a["quality"]["test"] for k, a in measured["artifacts"].items()}
    assert {k: t["n"] for k, t in tests.items()} == {k: 6 if k == measured["primary"] else 4 for k in tests}
    assert tests["gguf/t-Q8_0.gguf"]["first_rows"]["n"] == 4

    real_call = gguf.call

    def failing_q4_0(target: str, request: dict[str, Any], **kw: Any) -> Any:
        if request.get("qtype") == "Q4_0":
            raise IsolatedFailure("planted failure", "crash")
        return real_call(target, request, **kw)

    two = {"export": {"gguf": {"enabled": True, "quants": ["Q8_0", "Q4_0"]}, "onnx": {"enabled": True}}}
    monkeypatch.setattr(gguf, "call", failing_q4_0)
    got = run(**two)
    assert got["gguf"] == "ran" and got["onnx"] == "hit" and got["train"] == "hit", got
    manifest = json.loads((tmp_path / "runs" / "t" / "gguf" / "manifest.json").read_text())
    assert manifest["status"] == "partial" and manifest["failures"] == ["t-Q4_0.gguf"]
    monkeypatch.setattr(gguf, "call", real_call)
    got = run(**two)
    assert got["gguf"] == "ran" and got["onnx"] == "hit", got
    assert set(run(**two).values()) == {"hit"}

    # The run folder copied to another machine: every stage is a hit except bench, which measures again.
    other = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "runs", other / "runs")
    real_fingerprint = machine.fingerprint
    monkeypatch.setattr(bench, "fingerprint", lambda t: {**real_fingerprint(t), "cpu_model": "another CPU"})
    got = run(other, **two)
    assert {k for k, v in got.items() if v == "ran"} == {"bench"}, got
    monkeypatch.setattr(bench, "fingerprint", real_fingerprint)

    weights = base / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    got = run(until="train", **two)
    assert got == {"data": "ran", "train": "ran"}, got
