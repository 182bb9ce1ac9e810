"""GGUF export on tiny random models: writer, llama.cpp and transformers read-back, quantization, imatrix,
fallback report, parity checks (and that broken artifacts fail them), crash isolation, the bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import QUICK_VERIFY, write_recipe
from families import LLAMA3_ROPE

from edgesft.config import ModelConfig, VerifyConfig
from edgesft.data import load_rows
from edgesft.errors import EdgesftError
from edgesft.gguf_export import imatrix_from_model, read_imatrix, write_gguf, write_imatrix
from edgesft.isolate import IsolatedFailure, call
from edgesft.models import copy_tokenizer_files, resolve_model
from edgesft.runtimes.torch_rt import TorchArtifact
from edgesft.verify import build_request, verify_artifact

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok_dir() -> Path:
    return resolve_model(ModelConfig(base="tiny-llama")).path


def make_model(
    folder: Path,
    tok_dir: Path,
    kind: str = "llama",
    sharpen: float = 1.0,
    bias_std: float = 0.0,
    **shape: Any,
) -> Path:
    """A random model folder with the SmolLM2 tokenizer (other architectures, with their own families'
    tokenizers, are in test_architectures.py); ``sharpen`` scales the final norm so the logits
    are peaked like a trained model's (random models give near-uniform logits that hide errors);
    ``bias_std`` gives the attention biases random values (they start at zero, which hides a wrong layout)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = dict(
        vocab_size=49152,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    base.update(shape)
    torch.manual_seed(0)
    assert kind == "llama"
    model = LlamaForCausalLM(LlamaConfig(**base))
    with torch.no_grad():
        model.model.norm.weight.mul_(sharpen)
        for name, p in model.named_parameters():
            if bias_std and name.endswith("_proj.bias"):
                p.normal_(0, bias_std)
    model.save_pretrained(folder, safe_serialization=True)
    copy_tokenizer_files(tok_dir, folder)
    return folder


def probe_logits(gguf: Path, ids: list[int], tmp: Path) -> np.ndarray:
    req = tmp / "req.json"
    req.write_text(json.dumps({"texts": [], "chats": [], "sequences": [ids], "prompts": []}))
    call(
        "edgesft.verify:probe",
        {"artifact": str(gguf), "request": str(req), "out_dir": str(tmp), "threads": 2, "max_new_tokens": 1},
    )
    return np.load(tmp / "logits_0.npy")


IDS = [1, 4093, 198, 26843, 216, 33, 34, 35, 665, 216, 10907, 2, 198, 9690, 42, 7]


def torch_logits(folder: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize(
    "kind,shape",
    [
        ("llama", {}),
        # SmolLM2's rotary base: transformers 5 keeps it under rope_parameters, not rope_theta
        ("llama", {"rope_theta": 100000.0}),
        # Q/K biases move with their permuted rows (they were written unpermuted: top-1 0.91 in llama.cpp)
        ("llama", {"attention_bias": True, "bias_std": 0.5}),
        # Llama 3.1/3.2 rope scaling, as llama.cpp's rope_freqs (refused before)
        (
            "llama",
            {
                "max_position_embeddings": 16384,
                "rope_parameters": LLAMA3_ROPE,
            },
        ),
        # pruned shapes: fewer heads with an explicit head_dim, a narrower MLP
        (
            "llama",
            {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64, "intermediate_size": 384},
        ),
    ],
)
def test_f32_gguf_matches_torch_in_llama_cpp_and_transformers(
    tmp_path: Path, tok_dir: Path, kind: str, shape: dict
) -> None:
    src = make_model(tmp_path / "m", tok_dir, kind, sharpen=8.0, **shape)
    out = tmp_path / "g" / "m-F32.gguf"
    out.parent.mkdir()
    info = write_gguf(src, out, "f32")
    assert info["architecture"] == kind and info["pre_tokenizer"] == "smollm"
    from gguf import GGUFReader

    theta = GGUFReader(str(out)).fields[f"{kind}.rope.freq_base"].contents()
    assert theta == pytest.approx(shape.get("rope_parameters", shape).get("rope_theta", 10000.0))
    ref = torch_logits(src, IDS)
    got = probe_logits(out, IDS, tmp_path)
    assert got.shape == ref.shape
    # F32 weights; llama.cpp keeps its KV cache in f16 by default, hence ~1e-3 relative error
    np.testing.assert_allclose(got, ref, atol=1e-3 * np.abs(ref).max(), rtol=0)
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    if "bias_std" in shape or "rope_parameters" in shape:
        # transformers' GGUF reader (5.24) un-permutes Q/K weights but not their biases, and ignores
        # llama.cpp's rope_freqs: it cannot read these files back; llama.cpp, which runs them, matches above.
        return
    # transformers' own GGUF reader gives the same weights back
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name, dtype=torch.float32)
    with torch.no_grad():
        again = back(torch.tensor([IDS])).logits[0].numpy()
    np.testing.assert_allclose(again, ref, atol=1e-4, rtol=0)


def test_unsupported_architecture_is_refused(tmp_path: Path, tok_dir: Path) -> None:
    src = make_model(tmp_path / "m", tok_dir)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgesftError, match="converter .* has no class for NoSuchModelForCausalLM"):
        write_gguf(src, tmp_path / "x.gguf", "f16")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))


@pytest.fixture(scope="module")
def float_gguf(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("quant")
    src = make_model(tmp / "m", tok_dir, sharpen=8.0)
    out = tmp / "m-F16.gguf"
    write_gguf(src, out, "f16")
    return src, out


def test_imatrix_file_and_every_quant_type_loads(tmp_path: Path, float_gguf: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM

    src, f16 = float_gguf
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    batch = {
        "input_ids": torch.tensor([IDS, IDS[::-1]]),
        "attention_mask": torch.ones(2, len(IDS), dtype=torch.long),
    }
    batch["attention_mask"][1, -4:] = 0  # padding is not counted
    stats = imatrix_from_model(model, [batch], "llama")
    assert stats["token_embd.weight"][1] == 2 * len(IDS) - 4  # tied: the LM head's inputs
    assert {f"blk.{i}.{t}.weight" for i in range(2) for t in ("attn_q", "attn_k", "ffn_down")} <= set(stats)
    imat = tmp_path / "imatrix.gguf"
    write_imatrix(stats, imat, "test", 16)
    means = read_imatrix(imat)
    np.testing.assert_allclose(
        means["blk.0.ffn_down.weight"],
        stats["blk.0.ffn_down.weight"][0] / stats["blk.0.ffn_down.weight"][1],
        rtol=1e-6,
    )
    ref = torch_logits(src, IDS)
    errors = {}
    for q in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"):
        dest = tmp_path / f"m-{q}.gguf"
        r = call(
            "edgesft.gguf_export:quantize",
            {"src": str(f16), "dest": str(dest), "qtype": q, "imatrix": str(imat), "threads": 2},
        )
        assert r["fallbacks"] == [], q  # every row length here is a multiple of 256
        assert r["imatrix_entries"] == len(stats) and r["imatrix_missing"] == []
        got = probe_logits(dest, IDS, tmp_path)
        # random weights have no structure to keep, so compare the logits as a whole
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.95, q
        errors[q] = float(np.abs(got - ref).mean())
        assert r["bytes"] < f16.stat().st_size
    assert errors["Q8_0"] < errors["Q6_K"] < errors["Q4_0"], errors


def test_fallback_report_names_tensors_and_reason(tmp_path: Path, tok_dir: Path) -> None:
    src = make_model(tmp_path / "m", tok_dir, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    f16 = tmp_path / "m-F16.gguf"
    write_gguf(src, f16, "f16")
    r = call(
        "edgesft.gguf_export:quantize",
        {"src": str(f16), "dest": str(tmp_path / "q.gguf"), "qtype": "Q4_K_M", "imatrix": None, "threads": 2},
    )
    fb = {f["tensor"]: f for f in r["fallbacks"]}
    assert fb["blk.0.attn_q.weight"]["reason"] == "row length 64 not divisible by 256"
    assert fb["blk.0.attn_q.weight"]["wanted"] == "q4_K" and fb["blk.0.attn_q.weight"]["used"] == "q5_0"
    assert fb["blk.1.ffn_down.weight"]["ncols"] == 128
    # the report agrees with the file's tensor types
    assert r["tensor_types"].get("Q4_K", 0) == 0 and r["tensor_types"]["Q5_0"] >= len(
        [f for f in r["fallbacks"] if f["used"] == "q5_0"]
    )


def test_relative_paths_convert_from_any_working_directory(
    tmp_path: Path, tok_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The converter runs in its own folder: a caller's relative model and output paths (bench/qat.py's
    ``--root runs``) must still name the caller's files (they failed with "is not a directory")."""
    make_model(tmp_path / "m", tok_dir)
    monkeypatch.chdir(tmp_path)
    info = write_gguf(Path("m"), Path("m-F16.gguf"), "f16")
    assert (tmp_path / "m-F16.gguf").is_file() and info["tensors"] > 0


def test_isolated_crash_is_reported_not_fatal() -> None:
    with pytest.raises(IsolatedFailure, match="crashed \\(SIGABRT\\)") as e:
        call("os:abort", {})
    assert e.value.kind == "crash"
    with pytest.raises(IsolatedFailure, match="timed out") as e:
        call("subprocess:call", {"args": ["sleep", "8"]}, timeout=2)
    assert e.value.kind == "timeout"


def _verify(gguf: Path, src: Path, tmp: Path, precision: str = "F32") -> dict[str, Any]:
    ref = TorchArtifact(src)
    rows = load_rows(ROOT / "recipes" / "data" / "ci_smoke" / "test.jsonl")
    cfg = VerifyConfig(prompts=3, generate_prompts=1, generate_tokens=6)
    return verify_artifact(gguf, precision, ref, build_request(ref.tok, rows, cfg), cfg, tmp / "probe", 2)


def test_parity_passes_for_a_good_file_and_fails_for_broken_ones(tmp_path: Path, tok_dir: Path) -> None:
    from gguf import GGUFReader

    src = make_model(tmp_path / "m", tok_dir, sharpen=8.0)
    good = tmp_path / "good.gguf"
    write_gguf(src, good, "f32")
    rec = _verify(good, src, tmp_path)
    assert rec["status"] == "passed", rec
    assert rec["checks"]["logits"]["top1_agreement"] == 1.0 and rec["checks"]["tokenizer"]["texts"] >= 12

    # wrong EOS id in the metadata
    bad_eos = tmp_path / "bad_eos.gguf"
    shutil.copy(good, bad_eos)
    reader = GGUFReader(str(bad_eos), "r+")
    field = reader.fields["tokenizer.ggml.eos_token_id"]
    field.parts[field.data[0]][0] = 5
    del reader
    rec = _verify(bad_eos, src, tmp_path)
    assert rec["status"] == "failed" and "eos" in rec["failed_checks"], rec["failed_checks"]

    # a shuffled weight: the embedding rows (tied, so input and output) permuted
    shuffled = make_model(tmp_path / "s", tok_dir, sharpen=8.0)
    from safetensors.torch import load_file, save_file

    weights = load_file(shuffled / "model.safetensors")
    key = "model.embed_tokens.weight"
    weights[key] = weights[key][
        torch.randperm(weights[key].shape[0], generator=torch.Generator().manual_seed(1))
    ]
    save_file(weights, shuffled / "model.safetensors", metadata={"format": "pt"})
    bad_w = tmp_path / "bad_w.gguf"
    write_gguf(shuffled, bad_w, "f32")
    rec = _verify(bad_w, src, tmp_path)
    assert rec["status"] == "failed" and "logits" in rec["failed_checks"]
    assert rec["checks"]["logits"]["kl_mean"] > 0.1

    # a file llama.cpp cannot open is that artifact's failure, not an exception
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(good.read_bytes()[: 1 << 16])
    rec = _verify(broken, src, tmp_path)
    assert rec["status"] in ("failed", "crashed") and rec["error"]


def test_pipeline_gguf_verify_export_bundle(tmp_path: Path) -> None:
    from edgesft.bundle import check_modelfile

    recipe = write_recipe(
        tmp_path,
        export={
            "onnx": {"enabled": False},
            "gguf": {"quants": ["Q8_0", "Q4_K_M"]},
            "verify": QUICK_VERIFY,
        },
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edgesft.cli", "run", str(recipe)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "runs" / "t"
    bundle = run / "export"
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = manifest["outputs"]
    assert {"t-Q8_0.gguf", "t-Q4_K_M.gguf", "Modelfile", "README.md", "run_gguf.py"} <= set(files)
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in files.values())
    arts = {a["file"]: a for a in manifest["metrics"]["artifacts"]}
    assert arts["t-Q4_K_M.gguf"]["verification"] == "passed" and arts["t-Q4_K_M.gguf"]["fallback_tensors"] > 0
    assert manifest["metrics"]["primary"] == "t-Q8_0.gguf"
    modelfile = (bundle / "Modelfile").read_text()
    assert check_modelfile(modelfile, bundle) == []
    assert "FROM ./t-Q8_0.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    readme = (bundle / "README.md").read_text()
    assert "llama-cli -m t-Q8_0.gguf" in readme and "| `t-Q4_K_M.gguf` | llama.cpp | Q4_K_M |" in readme
    gguf_metrics = json.loads((run / "gguf" / "manifest.json").read_text())["metrics"]
    assert gguf_metrics["imatrix"]["tensors"] > 0 and (run / "gguf" / "imatrix.gguf").is_file()
    assert "verify" in proc.stdout and "PASSED" in proc.stdout


def test_check_modelfile_catches_errors(tmp_path: Path) -> None:
    from edgesft.bundle import check_modelfile

    (tmp_path / "m.gguf").write_bytes(b"x")
    assert check_modelfile('FROM ./m.gguf\nPARAMETER stop "<|im_end|>"\n', tmp_path) == []
    bad = 'FROM ./missing.gguf\nPARAMETR temperature 0\nPARAMETER temp 1\nTEMPLATE """{{ if .System }}x\n'
    problems = check_modelfile(bad, tmp_path)
    assert any("does not exist" in p for p in problems)
    assert any("unknown instruction" in p for p in problems)
    assert any("unknown parameter 'temp'" in p for p in problems)
    assert any("unterminated" in p for p in problems)


def test_gguf_name_says_phi3_exactly_when_the_tokenizer_strips_special_tokens(tmp_path: Path) -> None:
    from edgesft.llama_convert import gguf_model_name

    def folder(rstrip: bool) -> Path:
        d = tmp_path / f"phi3-run-{rstrip}"  # llama.cpp would read "phi3" in a folder name
        d.mkdir(exist_ok=True)
        added = [{"id": 5, "content": "<|end|>", "special": True, "rstrip": rstrip}]
        (d / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))
        return d

    assert gguf_model_name("Phi3-phone", folder(False)) == "phone"
    assert gguf_model_name("phone", folder(True)) == "phone-phi3"
    assert gguf_model_name("phi-3", folder(False)) == "model"


def test_converter_refuses_what_llama_cpp_would_run_wrong(tmp_path: Path) -> None:
    from edgesft.llama_convert import _check_convertible

    gemma3 = {"model_type": "gemma3_text", "head_dim": 32, "query_pre_attn_scalar": 32}
    _check_convertible({**gemma3, "layer_types": ["sliding_attention"] * 5 + ["full_attention"]}, tmp_path)
    with pytest.raises(EdgesftError, match="not the every-6th-layer pattern"):
        _check_convertible({**gemma3, "layer_types": ["sliding_attention", "full_attention"]}, tmp_path)
    with pytest.raises(EdgesftError, match="query_pre_attn_scalar 256 differs from head_dim 32"):
        _check_convertible({**gemma3, "query_pre_attn_scalar": 256}, tmp_path)
    with pytest.raises(EdgesftError, match="no_rope_layers"):
        _check_convertible({"model_type": "smollm3", "no_rope_layers": [1, 1, 0, 1]}, tmp_path)
    _check_convertible({"model_type": "smollm3", "no_rope_layers": [1, 1, 1, 0, 1]}, tmp_path)
