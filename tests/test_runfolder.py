"""RunFolder on a built run folder (manifests as the pipeline writes them, small files standing in for the
weights): every artifact with its size and figures, the one primary rule, and the integrity check that a
changed byte in a run's artifact is one line (exit 2) in `edgesft eval`, `chat` and `bench`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from test_hostile import _one_error_line

from edgesft.cli import main
from edgesft.errors import EdgesftError
from edgesft.pipeline import StageInputs, Upstream, hash_outputs
from edgesft.runfolder import ArtifactRecord, RunFolder, choose_primary, pareto_primary, resolve_artifact
from edgesft.stages import STAGES, bench, verify


def _write(path: Path, size: int, fill: int = 7) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes([fill]) * size)


def _stage(
    run: Path, stage: str, metrics: dict[str, Any], info: dict[str, Any], status: str = "complete"
) -> None:
    folder = run / stage
    manifest = {
        "schema": 2,
        "stage": stage,
        "status": status,
        "failures": [],
        "outputs": hash_outputs(folder),
        "started": "2026-12-01T10:00:00+00:00",
        "metrics": metrics,
        "info": info,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def make_run(root: Path, export: bool = True) -> Path:
    """merge (model + tokenizer), gguf (F16 kept, Q4_K_M, Q2_K failed: partial), onnx (int4), verify, export."""
    run = root / "runs" / "r"
    _write(run / "merge" / "model" / "model.safetensors", 4000)
    _write(run / "merge" / "model" / "config.json", 50)
    _write(run / "merge" / "tokenizer" / "tokenizer.json", 300)
    _write(run / "merge" / "eval_samples.jsonl", 20)
    _stage(run, "merge", {"params_total": 1234}, {"model": "model", "tokenizer": "tokenizer"})
    _write(run / "gguf" / "m-F16.gguf", 2000, 1)
    _write(run / "gguf" / "m-Q4_K_M.gguf", 700, 2)
    _write(run / "gguf" / "imatrix.gguf", 30)
    gguf = [
        {"file": "m-F16.gguf", "format": "gguf", "precision": "F16", "status": "ok", "bytes": 2000},
        {
            "file": "m-Q4_K_M.gguf",
            "format": "gguf",
            "precision": "Q4_K_M",
            "status": "ok",
            "fallbacks": [{}, {}],
        },
        {"file": "m-Q2_K.gguf", "format": "gguf", "precision": "Q2_K", "status": "failed", "error": "boom"},
    ]
    _stage(run, "gguf", {"source_stage": "merge", "artifacts": gguf}, {}, status="partial")
    _write(run / "onnx" / "int4" / "model.onnx", 500)
    _write(run / "onnx" / "int4" / "genai_config.json", 40)
    onnx = [{"file": "int4", "format": "onnx", "precision": "int4", "status": "ok", "exporter": "builder"}]
    _stage(run, "onnx", {"source_stage": "merge", "artifacts": onnx}, {})
    logits = {"kl_mean": 0.01, "kl_p99": 0.05, "top1_agreement": 0.97}
    verdicts = {
        "gguf/m-Q4_K_M.gguf": {"status": "passed", "failed_checks": [], "checks": {"logits": logits}},
        "onnx/int4": {"status": "failed", "failed_checks": ["eos"], "checks": {"logits": logits}},
    }
    _write(run / "verify" / "verify.json", 10)
    _stage(run, "verify", {"artifacts": verdicts}, {})
    if export:
        (run / "export").mkdir()
        os.link(run / "gguf" / "m-Q4_K_M.gguf", run / "export" / "m-Q4_K_M.gguf")
        _stage(run, "export", {"primary": "m-Q4_K_M.gguf"}, {"primary": "m-Q4_K_M.gguf"})
    (run / "train").mkdir()
    (run / "train" / "manifest.json").write_text(json.dumps({"stage": "train", "status": "running"}))
    return run


def _flip(path: Path, at: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifests_and_artifacts(tmp_path: Path) -> None:
    run = RunFolder(make_run(tmp_path))
    # partial counts (gguf), unfinished does not (train); pipeline order
    assert list(run.manifests()) == ["merge", "gguf", "onnx", "verify", "export"]
    arts = run.artifacts()
    assert list(arts) == [
        "torch/merge",
        "gguf/m-F16.gguf",
        "gguf/m-Q4_K_M.gguf",
        "gguf/m-Q2_K.gguf",
        "onnx/int4",
    ]
    torch = arts["torch/merge"]
    assert (torch.kind, torch.stage, torch.relpath, torch.precision) == ("torch", "merge", "merge", "fp32")
    assert torch.size_bytes == 4000 and torch.params == 1234  # the safetensors only
    assert {f.rel for f in torch.files} == {
        "model/model.safetensors",
        "model/config.json",
        "tokenizer/tokenizer.json",
    }
    q4 = arts["gguf/m-Q4_K_M.gguf"]
    assert (q4.size_bytes, q4.params, q4.source_stage, q4.fallback_tensors) == (700, 1234, "merge", 2)
    assert (q4.verified, q4.kl_mean, q4.top1_agreement, q4.exporter) == (
        "passed",
        0.01,
        0.97,
        "edgesft + llama.cpp quantizer",
    )
    assert q4.path == run.run_dir / "gguf" / "m-Q4_K_M.gguf" and q4.sha256 is not None
    assert arts["gguf/m-F16.gguf"].verified is None and arts["gguf/m-F16.gguf"].fallback_tensors is None
    failed = arts["gguf/m-Q2_K.gguf"]
    assert (failed.status, failed.error, failed.size_bytes, failed.files) == ("failed", "boom", None, ())
    onnx = arts["onnx/int4"]
    assert onnx.size_bytes == 540 and onnx.sha256 is None and onnx.failed_checks == ("eos",)


def test_one_primary_rule(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    assert RunFolder(run_dir).primary().key == "gguf/m-Q4_K_M.gguf"  # the bundle's choice
    export = json.loads((run_dir / "export" / "manifest.json").read_text())
    export["info"]["primary"] = "int4"
    (run_dir / "export" / "manifest.json").write_text(json.dumps(export))
    assert RunFolder(run_dir).primary().key == "onnx/int4"
    (run_dir / "export" / "manifest.json").unlink()
    arts = RunFolder(run_dir).artifacts()
    # no bundle: the first quantized GGUF, though the float one comes first
    assert choose_primary(arts.values()).key == "gguf/m-Q4_K_M.gguf"
    assert choose_primary([arts["gguf/m-F16.gguf"], arts["onnx/int4"]]).key == "gguf/m-F16.gguf"
    assert choose_primary([arts["onnx/int4"], arts["torch/merge"]]).key == "onnx/int4"
    assert choose_primary([arts["torch/merge"]]).key == "torch/merge"
    # a name picks its artifact whatever its status (by file, else precision); an unknown one falls through
    assert choose_primary(arts.values(), "m-Q2_K.gguf").key == "gguf/m-Q2_K.gguf"
    assert choose_primary(arts.values(), "F16").key == "gguf/m-F16.gguf"
    assert choose_primary(arts.values(), "gone.gguf").key == "gguf/m-Q4_K_M.gguf"
    assert choose_primary([arts["gguf/m-Q2_K.gguf"]]) is None


def _rec(file: str, mib: float, kl: float | None, verified: str | None = "passed") -> ArtifactRecord:
    kind = "onnx" if "." not in file else "gguf"
    return ArtifactRecord(
        key=f"{kind}/{file}", kind=kind, stage=kind, path=Path(file), file=file,
        size_bytes=int(mib * 2**20), kl_mean=kl, verified=verified,
    )  # fmt: skip


def test_pareto_primary_is_the_best_quality_within_the_size_budget() -> None:
    q8, q4km, q40, int4 = (
        _rec("Q8_0.gguf", 108, 0.002),
        _rec("Q4_K_M.gguf", 81, 0.03),
        _rec("Q4_0.gguf", 60, 0.05),
        _rec("int4", 70, 0.08),
    )
    failed, unmeasured = _rec("Q2_K.gguf", 40, 0.01, "failed"), _rec("Q3_K.gguf", 45, None)
    records = [q8, q4km, q40, int4, failed, unmeasured]
    pick = pareto_primary(records, 64 * 2**20)
    assert pick is not None and pick.chosen is q40
    # int4 is beaten on both axes by Q4_0; failed and unmeasured artifacts never enter the front
    assert [r.file for r in pick.front] == ["Q4_0.gguf", "Q4_K_M.gguf", "Q8_0.gguf"]
    assert pareto_primary(records, 90 * 2**20).chosen is q4km
    assert pareto_primary(records, None).chosen is q8
    assert pareto_primary(records, 50 * 2**20) is None
    # equal KL: the smaller file
    same = _rec("Q4_0b.gguf", 58, 0.05)
    assert pareto_primary([q40, same], 64 * 2**20).chosen is same


def test_verify_catches_a_changed_byte_missing_file_and_failed_artifact(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    run = RunFolder(run_dir)
    assert run.verified_path("gguf/m-Q4_K_M.gguf") == run_dir / "gguf" / "m-Q4_K_M.gguf"
    assert run.verify(run.artifacts()["torch/merge"]) == run_dir / "merge"
    cases = {
        "flipped": (run_dir / "onnx" / "int4" / "model.onnx", _flip, "sha256 differs from the onnx stage's manifest"),
        "truncated": (run_dir / "gguf" / "m-F16.gguf", lambda p: p.write_bytes(b"x"), "1 bytes, the gguf stage's manifest records 2000"),
        "removed": (run_dir / "merge" / "model" / "model.safetensors", Path.unlink, "missing"),
    }  # fmt: skip
    for name, (path, damage, message) in cases.items():
        damage(path)
        fresh = RunFolder(run_dir)
        key = {"flipped": "onnx/int4", "truncated": "gguf/m-F16.gguf", "removed": "torch/merge"}[name]
        with pytest.raises(EdgesftError) as e:
            fresh.verified_path(key)
        (line,) = e.value.problems
        assert line.startswith(f"{path}: ") and message in line, (name, line)
    with pytest.raises(EdgesftError, match="did not make it \\(boom\\)"):
        run.verified_path("gguf/m-Q2_K.gguf")
    with pytest.raises(EdgesftError, match="no artifact gguf/nope.gguf"):
        run.verified_path("gguf/nope.gguf")


def test_stages_read_artifacts_through_runfolder(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    manifests = RunFolder(run_dir).manifests()

    def inputs(stage: str) -> StageInputs:
        reads = (*STAGES[stage].reads, "merge")
        return StageInputs(None, Upstream(manifests, reads, stage), run_dir, tmp_path / "work")

    # only what each stage declares it reads (Upstream refuses any other), failed artifacts included
    keys = [r.key for r in verify.artifacts(inputs("verify").upstream, run_dir)]
    assert keys == ["gguf/m-F16.gguf", "gguf/m-Q4_K_M.gguf", "gguf/m-Q2_K.gguf", "onnx/int4"]
    measured = {r.key: r for r in bench.targets(inputs("bench"), with_torch=True)}
    assert measured["torch/merge"].size_bytes == 4000 and measured["gguf/m-Q4_K_M.gguf"].verified == "passed"
    assert measured["gguf/m-Q2_K.gguf"].size_bytes is None  # not made: no size, never 0
    assert "torch/merge" not in {r.key for r in bench.targets(inputs("bench"), with_torch=False)}


def test_figures_of_a_bench_entry() -> None:
    rec = ArtifactRecord.from_figures("gguf/a.gguf", {"kind": "gguf", "status": "crashed", "size_bytes": 9})
    assert (rec.file, rec.stage, rec.status, rec.size_bytes, rec.relpath) == (
        "a.gguf",
        "gguf",
        "crashed",
        9,
        "gguf/a.gguf",
    )
    torch = ArtifactRecord.from_figures("torch/prune", {"kind": "torch", "status": "ok"})
    assert (torch.file, torch.stage, torch.relpath) == (None, "prune", "prune")


def test_resolve_artifact(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    gguf = run_dir / "gguf" / "m-Q4_K_M.gguf"
    assert resolve_artifact(gguf) == gguf
    assert resolve_artifact(run_dir / "export") == run_dir / "export" / "m-Q4_K_M.gguf"
    assert resolve_artifact(run_dir) == gguf  # a run folder: its primary
    assert resolve_artifact(run_dir / "merge") == run_dir / "merge"
    loose = tmp_path / "loose.gguf"
    loose.write_bytes(b"GGUF")
    assert resolve_artifact(loose) == loose  # outside any run: nothing to check against
    _write(run_dir / "onnx" / "int4" / "extra.txt", 3)  # not among the outputs: not checked
    assert resolve_artifact(run_dir / "onnx" / "int4") == run_dir / "onnx" / "int4"


def test_a_changed_byte_is_one_line_in_eval_chat_and_bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run(tmp_path)
    gguf = run_dir / "gguf" / "m-Q4_K_M.gguf"  # the bundle's copy is a hard link: both change
    bench_json = {"artifacts": {"gguf/m-Q4_K_M.gguf": {"kind": "gguf", "status": "ok", "size_bytes": 700}}}
    (run_dir / "bench").mkdir()
    (run_dir / "bench" / "bench.json").write_text(json.dumps(bench_json))
    _flip(gguf)
    data = tmp_path / "rows.jsonl"
    for argv in (
        ["eval", str(gguf), "--data", str(data)],
        ["chat", str(gguf)],
        ["eval", str(run_dir / "export"), "--data", str(data)],
        ["chat", str(run_dir / "export")],
        ["chat", str(run_dir)],
        ["bench", str(run_dir)],
    ):
        assert main(argv) == 2, argv
        line = _one_error_line(capsys)
        assert line.startswith("error: ") and "sha256 differs" in line and "m-Q4_K_M.gguf" in line, (
            argv,
            line,
        )
    (run_dir / "onnx" / "int4" / "genai_config.json").write_text("{}")
    assert main(["chat", str(run_dir / "onnx" / "int4")]) == 2
    assert "genai_config.json: 2 bytes, the onnx stage's manifest records 40" in _one_error_line(capsys)
