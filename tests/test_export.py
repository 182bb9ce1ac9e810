"""The export stages together on the tiny model: ONNX in the pipeline, a broken ONNX folder failing parity,
the verify gate, `edgesft chat`, prompt_tuning skipping export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICK_VERIFY, write_recipe

from edgesft.io import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def _cli(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgesft.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=900,
    )


@pytest.mark.slow
def test_onnx_pipeline_broken_artifact_gate_and_chat(tmp_path: Path) -> None:
    export = {
        "gguf": {"quants": ["Q8_0"]},
        "onnx": {"variants": [{"name": "int4"}, {"name": "int8", "precision": "int8"}]},
        "verify": QUICK_VERIFY,
    }
    recipe = write_recipe(tmp_path, export=export)
    first = _cli(["run", str(recipe)], tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = tmp_path / "runs" / "t"
    verify = json.loads((run / "verify" / "verify.json").read_text())["artifacts"]
    assert set(verify) == {"gguf/t-Q8_0.gguf", "onnx/int4", "onnx/int8"}
    assert all(r["status"] == "passed" for r in verify.values())
    for check in ("tokenizer", "eos", "chat_template", "logits", "generation"):
        assert verify["onnx/int4"]["checks"][check]["passed"]
    bundle = run / "export"
    assert (bundle / "int4" / "genai_config.json").is_file() and (bundle / "run_onnx.py").is_file()
    assert "python run_onnx.py int4" in (bundle / "README.md").read_text()
    entries = {
        a["file"]: a for a in json.loads((bundle / "manifest.json").read_text())["metrics"]["artifacts"]
    }
    gguf_file = run / "gguf" / "t-Q8_0.gguf"
    assert entries["t-Q8_0.gguf"]["size_bytes"] == gguf_file.stat().st_size
    assert entries["t-Q8_0.gguf"]["sha256"] == sha256_file(gguf_file)
    int4 = [f for f in (run / "onnx" / "int4").rglob("*") if f.is_file()]
    assert (
        entries["int4"]["size_bytes"] == sum(f.stat().st_size for f in int4)
        and entries["int4"]["sha256"] is None
    )

    # A wrong EOS id in genai_config.json fails the eos check; the run stops with exit 2 and one line.
    onnx_manifest = json.loads((run / "onnx" / "manifest.json").read_text())
    broken = run / "onnx" / "int8" / "genai_config.json"
    cfg = json.loads(broken.read_text())
    cfg["model"]["eos_token_id"] = 5
    broken.write_text(json.dumps(cfg))
    # keep the onnx stage's hashes valid so only verify re-runs: record the edited file's new hash
    meta = onnx_manifest["outputs"]["int8/genai_config.json"]
    meta.update(sha256=sha256_file(broken), size=broken.stat().st_size)
    (run / "onnx" / "manifest.json").write_text(json.dumps(onnx_manifest))
    second = _cli(["run", str(recipe)], tmp_path)
    assert second.returncode == 2, second.stdout[-2000:]
    err = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "onnx/int8 failed (eos)" in err[0] and "Traceback" not in second.stderr
    assert "[gguf] cache hit" in second.stdout and "[verify] running" in second.stdout
    record = json.loads((run / "verify" / "verify.json").read_text())["artifacts"]["onnx/int8"]
    assert record["checks"]["eos"]["declared"] == 5 and record["checks"]["logits"]["passed"]
    # allowing failures ships it, marked failed, without re-running verification
    third = _cli(["run", str(recipe), "export.verify.allow_failures=true"], tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "[verify] cache hit" in third.stdout
    arts = {a["file"]: a for a in json.loads((bundle / "manifest.json").read_text())["metrics"]["artifacts"]}
    assert arts["int8"]["verification"] == "failed" and arts["int8"]["failed_checks"] == ["eos"]

    # chat on the bundle (its primary GGUF) and on an ONNX folder, reading prompts from stdin
    for target in (bundle, bundle / "int4"):
        out = _cli(
            ["chat", str(target), "--max-new-tokens", "4"], tmp_path, stdin="Hi\n/reset\nWake me at 7\n"
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert len(out.stdout.splitlines()) == 2
    # a changed byte in the bundle's primary (a hard link of the gguf stage's file) is refused in one line
    data = bytearray(gguf_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gguf_file.write_bytes(bytes(data))
    out = _cli(["chat", str(bundle)], tmp_path, stdin="Hi\n")
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and "Traceback" not in out.stderr
    assert err[0].startswith(f"error: {bundle / 't-Q8_0.gguf'}: sha256 differs"), err


def test_prompt_tuning_skips_export_with_the_reason(tmp_path: Path) -> None:
    recipe = write_recipe(
        tmp_path,
        train={"method": "prompt_tuning", "max_steps": 2, "eval_steps": 2, "early_stopping_patience": None},
        export={"onnx": {"enabled": True}, "gguf": {"enabled": True}},
    )
    out = _cli(["validate", str(recipe)], tmp_path)
    assert out.returncode == 0 and "gguf" not in out.stdout.split("stages:")[1].split("model")[0]
    run = _cli(["run", str(recipe)], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "[gguf] skipped: train.method prompt_tuning: a soft prompt" in run.stdout
    assert "[export] skipped" in run.stdout


def test_chat_on_a_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    out = _cli(["chat", str(tmp_path / "nope.gguf")], tmp_path, stdin="")
    assert out.returncode == 2 and "no such file or folder" in out.stderr and "Traceback" not in out.stderr
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(ROOT / "README.md", folder / "README.md")
    out = _cli(["chat", str(folder)], tmp_path, stdin="")
    assert out.returncode == 2 and "not an artifact" in out.stderr


def test_the_size_budget_picks_the_primary_from_the_pareto_front() -> None:
    from edgesft.config import Recipe
    from edgesft.errors import EdgesftError
    from edgesft.runfolder import ArtifactRecord
    from edgesft.stages.export import _primary

    def rec(file: str, mib: float, kl: float) -> ArtifactRecord:
        kind = "gguf" if file.endswith(".gguf") else "onnx"
        return ArtifactRecord(
            key=f"{kind}/{file}", kind=kind, stage=kind, path=Path(file), file=file,
            size_bytes=int(mib * 2**20), kl_mean=kl, verified="passed",
        )  # fmt: skip

    made = [rec("m-Q4_K_M.gguf", 81.5, 0.03), rec("m-Q4_0.gguf", 60.0, 0.05), rec("int4", 70.0, 0.04)]
    chosen, how = _primary(Recipe.model_validate({"export": {"max_size_mib": 64}}), made)
    assert chosen.file == "m-Q4_0.gguf" and how["rule"] == "pareto"
    assert [f["file"] for f in how["front"]] == ["m-Q4_0.gguf", "int4", "m-Q4_K_M.gguf"]
    chosen, _ = _primary(Recipe.model_validate({"export": {"max_size_mib": 75}}), made)
    assert chosen.file == "int4"
    # no budget: the first quantized GGUF, as before; a name wins over the budget
    assert _primary(Recipe.model_validate({}), made)[0].file == "m-Q4_K_M.gguf"
    named = Recipe.model_validate({"export": {"max_size_mib": 64, "primary": "int4"}})
    assert _primary(named, made)[0].file == "int4"
    with pytest.raises(
        EdgesftError, match=r"export.max_size_mib: no artifact that passed verify is within 50 MiB"
    ):
        _primary(Recipe.model_validate({"export": {"max_size_mib": 50}}), made)
