"""Quantization-aware healing: every simulated format against the quantizer it imitates (llama.cpp's ggml,
gguf-py's reference, onnxruntime's MLAS and numpy paths), llama.cpp's per-tensor types and values against a
file our exporter wrote, and a planted case where healing with fake quantization lowers the exported Q4_0
file's KL against the teacher."""

from __future__ import annotations

import ctypes
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SMOKE_DATA, write_recipe

from edgesft.config import ModelConfig, Recipe, VerifyConfig, load_recipe
from edgesft.data import load_rows
from edgesft.errors import RecipeError
from edgesft.models import copy_tokenizer_files, resolve_model
from edgesft.qat import FakeQuant, ggml_quantize, gguf_tensor_type, int4_quantize, plan


@pytest.fixture
def one_thread() -> Any:
    """Torch on one thread: deterministic, and on a shared 2-core runner several times faster for the many
    small elementwise kernels of the scale searches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _hostile(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Gaussian weights through fp16 with what trips a quantizer: one large weight in some blocks, a zero
    block, a constant block, an all-positive block and a block whose largest magnitudes tie (+a and -a)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    r, c = rng.integers(0, rows, rows), rng.integers(0, cols, rows)
    w[r, c] *= 15
    w[0, :32] = 0
    w[1, 32:64] = 0.01
    w[2, :32] = np.abs(w[2, :32])
    w[3, :32] = 0.001
    w[3, 5], w[3, 9] = 0.05, -0.05
    return w.astype(np.float16).astype(np.float32)


def _llama_cpp_quantize(w: np.ndarray, qtype: str, imatrix: np.ndarray | None) -> np.ndarray:
    """``w`` quantized by llama.cpp's own ``ggml_quantize_chunk`` (the library llama-cpp-python ships, the
    one ``llama_model_quantize`` calls per tensor), dequantized by gguf-py."""
    import llama_cpp
    from gguf import GGMLQuantizationType, quants
    from llama_cpp._ctypes_extensions import load_shared_library

    lib = load_shared_library("ggml-base", Path(llama_cpp.__file__).parent / "lib")
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    pointer, int64 = ctypes.c_void_p, ctypes.c_int64
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, pointer, pointer, int64, int64, int64, pointer]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    gtype = GGMLQuantizationType[qtype]
    rows, n = w.shape
    dst = np.zeros(lib.ggml_row_size(int(gtype), n) * rows, np.uint8)
    src = np.ascontiguousarray(w, np.float32)
    imat = None if imatrix is None else np.ascontiguousarray(imatrix, np.float32)
    lib.ggml_quantize_chunk(
        int(gtype), src.ctypes.data, dst.ctypes.data, 0, rows, n, None if imat is None else imat.ctypes.data
    )
    return quants.dequantize(dst.reshape(rows, -1), gtype)


@pytest.mark.parametrize("slice_rows", [None, 5], ids=["whole", "5-row-slices"])
@pytest.mark.parametrize("imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"])
def test_ggml_types_equal_llama_cpp_quantizer(
    qtype: str, imatrix: bool, slice_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgesft import qat

    if slice_rows:  # 48 rows quantized 5 at a time, the last slice short: choices split and joined by row
        monkeypatch.setattr(qat, "SLICE_WEIGHTS", 768 * slice_rows)
    w = _hostile(48, 768)
    im = np.random.default_rng(1).gamma(1.0, 1.0, 768).astype(np.float32) if imatrix else None
    ref = _llama_cpp_quantize(w, qtype, im)
    got, choice = ggml_quantize(torch.from_numpy(w), qtype, None if im is None else torch.from_numpy(im))
    np.testing.assert_array_equal(got.numpy(), ref)  # bit for bit, searches included
    if choice is not None:
        # the search's choice given back (the per-step path) reproduces it: fp16 scales of other summation
        # orders may round apart on a boundary, and Q4_K's 6-bit scale search sees those
        again, _ = ggml_quantize(
            torch.from_numpy(w), qtype, None if im is None else torch.from_numpy(im), choice
        )
        same = (again.numpy() == ref).reshape(48, -1, 32).all(-1)
        assert same.mean() > 0.98, same.mean()


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_0", "Q8_0"])
def test_reference_types_equal_gguf_py(qtype: str) -> None:
    from gguf import GGMLQuantizationType, quants

    w = _hostile(32, 256, seed=3)
    gtype = GGMLQuantizationType[qtype]
    ref = quants.dequantize(quants.quantize(w, gtype), gtype)
    got, _ = ggml_quantize(torch.from_numpy(w), qtype)
    np.testing.assert_array_equal(got.numpy(), ref)
    # and the rounding is really 4-bit for Q4_0: 16 levels of one fp16 step per block
    if qtype == "Q4_0":
        blocks = got.numpy().reshape(-1, 32)
        assert max(len(np.unique(b)) for b in blocks) <= 16


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("block", [16, 32, 128])
def test_int4_equals_onnxruntime_matmulnbits(block: int, symmetric: bool) -> None:
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    n, k = 40, 200  # k not a multiple of the block: the last block is zero-padded
    w = _hostile(n, 256, seed=5)[:, :k].copy()
    w[4, :16] = np.arange(16, dtype=np.float32) * 0.5 - 4  # exact halves: roundf's ties go away from zero
    kb = -(-k // block)
    packed = np.zeros((n, kb, block // 2), np.uint8)
    zp = np.zeros((n, (kb + 1) // 2), np.uint8)
    scales = np.zeros((n, kb), np.float32)
    quantize_matmul_4bits(packed, np.ascontiguousarray(w.T), scales, zp, block, n, k, symmetric)
    q = np.stack([packed & 0xF, packed >> 4], -1).reshape(n, kb, block).astype(np.float32)
    zero = (
        np.stack([zp & 0xF, zp >> 4], -1).reshape(n, -1)[:, :kb].astype(np.float32) if not symmetric else 8.0
    )
    ref = ((q - np.broadcast_to(zero, (n, kb))[..., None]) * scales[..., None]).reshape(n, -1)[:, :k]
    got = int4_quantize(torch.from_numpy(w), block, symmetric)
    np.testing.assert_array_equal(got.numpy(), ref)


def test_int4_gather_equals_onnxruntime_embedding_quantizer() -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer

    w = _hostile(64, 96, seed=6)
    w[5, :32] = np.arange(32, dtype=np.float32) * 0.25 - 4  # ties: numpy rounds them to even
    data, scales, _ = DefaultWeightOnlyQuantizer.quantize_ndarray(w, 1, 32, True)
    q = np.stack([data & 0xF, data >> 4], -1).reshape(64, 96).astype(np.int8)
    q = np.where(q > 7, q - 16, q).astype(np.float32)
    ref = (q.reshape(64, 3, 32) * scales.reshape(64, 3, 1)).reshape(64, 96)
    got = int4_quantize(torch.from_numpy(w), 32, True, gather=True)
    np.testing.assert_array_equal(got.numpy(), ref)


def test_llama_cpp_type_rules() -> None:
    # SmolLM2's 576-wide rows: Q4_K falls back to Q5_0 and Q6_K to Q8_0; ffn_down rows of 1024 keep k-quants
    assert gguf_tensor_type("q4_k_m", "attn_q", 5, 29, 576, True) == "Q5_0"
    assert gguf_tensor_type("q4_k_m", "attn_v", 0, 29, 576, True) == "Q8_0"
    assert gguf_tensor_type("q4_k_m", "ffn_down", 0, 29, 1024, True) == "Q6_K"
    assert gguf_tensor_type("q4_k_m", "ffn_down", 4, 29, 1024, True) == "Q4_K"
    assert gguf_tensor_type("q4_k_m", "output", 0, 29, 576, True) == "Q8_0"
    assert gguf_tensor_type("q4_0", "output", 0, 29, 576, True) == "Q8_0"
    assert gguf_tensor_type("q4_0", "output", 0, 29, 512, True) == "Q6_K"
    assert gguf_tensor_type("q4_0", "ffn_down", 2, 29, 1024, True) == "Q4_1"  # first eighth, with imatrix
    assert gguf_tensor_type("q4_0", "ffn_down", 2, 29, 1024, False) == "Q4_0"
    assert gguf_tensor_type("q4_0", "attn_q", 2, 29, 40, True) == "F16"  # no 32-block fits


def _model_folder(folder: Path, seed: int = 0, **shape: Any) -> Path:
    """A random Llama with the SmolLM2 tokenizer (the converter needs a real one), its final norm sharpened
    so that the logits are peaked as a trained model's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok_dir = resolve_model(ModelConfig(base="tiny-llama")).path
    config = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**config, **shape}))
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    model.save_pretrained(folder, safe_serialization=True)
    copy_tokenizer_files(tok_dir, folder)
    return folder


def _export(model_dir: Path, qtype: str, rows: list[Any], tmp: Path) -> tuple[Path, Path, Path]:
    """The gguf stage's path: llama.cpp's converter to F16, an importance matrix of the float model on
    training rows (batches of 8), llama.cpp's quantizer; returns (quantized file, F16 file, imatrix)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgesft.gguf_export import gguf_architecture, imatrix_from_model, write_gguf, write_imatrix
    from edgesft.isolate import call
    from edgesft.training import calibration_batches

    f16, imat = tmp / f"{model_dir.name}-F16.gguf", tmp / f"{model_dir.name}-imatrix.gguf"
    if not f16.exists():
        write_gguf(model_dir, f16, "f16")
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        stats = imatrix_from_model(
            model, calibration_batches(tok, rows, 128, batch_size=8), gguf_architecture(f16)
        )
        write_imatrix(stats, imat, "test", 128)
    dest = tmp / f"{model_dir.name}-{qtype}.gguf"
    call(
        "edgesft.gguf_export:quantize",
        {"src": str(f16), "dest": str(dest), "qtype": qtype, "imatrix": str(imat), "threads": 2},
    )
    return dest, f16, imat


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """8 blocks (Q4_K_M's more-bits layers vary, Q4_0 has a first eighth), rows of 320 (which fall back)
    and of 512 (which do not); converted to F16 once, with its importance matrix."""
    tmp = tmp_path_factory.mktemp("wide")
    src = _model_folder(tmp / "m", hidden_size=320, intermediate_size=512, num_hidden_layers=8, head_dim=80)
    rows = load_rows(SMOKE_DATA / "train.jsonl")[:16]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _export(src, "Q8_0", rows, tmp)
    finally:
        torch.set_num_threads(threads)
    return src, tmp


@pytest.mark.parametrize("fmt,qtype", [("q4_0", "Q4_0"), ("q4_k_m", "Q4_K_M")])
def test_plan_and_values_match_the_file_llama_cpp_writes(
    wide_model: tuple[Path, Path], one_thread: None, fmt: str, qtype: str
) -> None:
    """Every tensor of a file our exporter wrote has the type :func:`plan` predicts and holds exactly what
    :func:`ggml_quantize` makes of the F16 file's tensor with the importance matrix's entry."""
    from gguf import GGUFReader, quants
    from transformers import AutoModelForCausalLM

    from edgesft.gguf_export import read_imatrix

    src, tmp = wide_model
    gguf, f16, imat = _export(src, qtype, [], tmp)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    predicted = {u.tensor: u.qtype for u in plan(model, fmt)}
    floats = {t.name: t for t in GGUFReader(str(f16)).tensors}
    importance = read_imatrix(imat)
    types = set()
    for t in GGUFReader(str(gguf)).tensors:
        if len(t.shape) < 2:
            continue
        assert predicted.pop(t.name) == t.tensor_type.name, t.name
        types.add(t.tensor_type.name)
        got = quants.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))
        x = torch.from_numpy(np.array(floats[t.name].data, dtype=np.float32).reshape(got.shape))
        imatrix = torch.from_numpy(importance[t.name]) if t.name in importance else None
        ours, _ = ggml_quantize(x, t.tensor_type.name, imatrix)
        np.testing.assert_array_equal(ours.numpy(), got, err_msg=t.name)
    assert not predicted  # nothing planned that the file lacks
    assert types == ({"Q4_0", "Q4_1", "Q8_0"} if fmt == "q4_0" else {"Q5_0", "Q8_0", "Q4_K", "Q6_K"})


def _tiny_tied() -> tuple[Any, Any, list[dict[str, Any]]]:
    """A 2-block Llama with a tied embedding, a batch of ids and it as one calibration batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    )  # fmt: skip
    ids = torch.randint(0, 256, (2, 12))
    return model, ids, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]


def test_fake_quant_forward_and_straight_through_gradient() -> None:
    model, ids, batches = _tiny_tied()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = model(ids).logits.detach()
    qat = FakeQuant(model, plan(model, "q4_0"), batches, refresh_steps=2)
    qat.attach()
    q_proj = model.model.layers[0].self_attn.q_proj
    seen: list[Any] = []
    handle = q_proj.register_forward_hook(lambda m, a, out: seen.append((a[0].detach(), out.detach())))
    out = model(ids).logits
    handle.remove()
    # the forward pass read the Q4_0 grid (what llama.cpp stores), not the float weight
    want, _ = ggml_quantize(q_proj.weight, "Q4_0", qat._importance["model.layers.0.self_attn.q_proj"])
    x, y = seen[0]
    assert torch.equal(y, torch.nn.functional.linear(x, want))
    assert not torch.allclose(y, torch.nn.functional.linear(x, q_proj.weight.detach()))
    assert not torch.allclose(out, ref)
    out.float().pow(2).mean().backward()
    assert q_proj.weight.grad is not None and q_proj.weight.grad.abs().sum() > 0
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0  # the tied table, through both reads
    qat.detach()
    assert torch.equal(model(ids).logits.detach(), ref)  # detached: the float model, untouched weights
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert qat.summary()["tensor_types"] == {"Q4_0": 14, "Q8_0": 1}


def test_snap_puts_the_weights_on_the_grid_the_export_keeps() -> None:
    model, ids, batches = _tiny_tied()
    uses = plan(model, "q4_0", output_type="Q4_0")
    qat = FakeQuant(model, uses, batches, refresh_steps=2)
    qat.attach()
    fake = model(ids).logits.detach()
    assert qat.snap() == len({u.tensor for u in uses})
    qat.detach()
    # the float model now computes what the fake-quantized one did, and quantizing it again changes nothing
    assert torch.allclose(model(ids).logits.detach(), fake, atol=1e-5)
    modules = dict(model.named_modules())
    for use in uses:
        w = modules[use.module].weight
        again, _ = ggml_quantize(
            w, use.qtype, qat._importance.get(use.importance) if use.importance else None
        )
        assert torch.equal(again, w), use.tensor


def test_qat_recipe_fields(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, prune={"enabled": True, "target_fraction": 0.2, "heal": {"qat": "q4_0"}})
    assert load_recipe(path).prune.heal.qat.format == "q4_0"  # short for {format: q4_0}
    qat = load_recipe(path, ["prune.heal.qat={format: int4, block_size: 16}"]).prune.heal.qat
    assert (qat.format, qat.block_size, qat.symmetric) == ("int4", 16, True)
    assert Recipe().prune.heal.qat.format == "none"
    with pytest.raises(RecipeError, match="prune.heal: qat needs params full or freeze"):
        load_recipe(path, ["prune.heal.params=lora"])
    with pytest.raises(RecipeError, match="prune.heal: qat needs healing"):
        load_recipe(path, ["prune.heal.method=none"])
    with pytest.raises(RecipeError, match="prune.heal.qat.format: must be"):
        load_recipe(path, ["prune.heal.qat=q3_k"])


def _hostile_teacher(folder: Path) -> Path:
    """The planted case: a tiny model whose MLP and value/output projections have one weight 20x the others
    in every 32-weight block, so Q4_0's 16 levels per block, spaced by that weight, crush the rest. (q/k
    keep plain weights: outliers there saturate the attention, and then llama.cpp's f16 intermediates and
    PyTorch's fp32 ones part ways for reasons of their own.)"""
    from safetensors.torch import load_file, save_file

    src = _model_folder(folder)
    weights = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(1)
    for name, w in weights.items():
        if name.endswith("proj.weight") and not name.endswith(("q_proj.weight", "k_proj.weight")):
            blocks = w.view(w.shape[0], -1, 32)
            at = torch.randint(0, 32, (*blocks.shape[:2], 1), generator=g)
            blocks.scatter_(-1, at, blocks.gather(-1, at) * 20)
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    return src


def test_qat_heal_lowers_the_exported_q4_0_kl(tmp_path: Path, one_thread: None) -> None:
    """The issue's "done when": the same pruned model healed by distillation with and without `qat: q4_0`,
    both exported to Q4_0 by our exporter (importance matrix included); the QAT file is much closer to the
    teacher (KL from verify's parity code, llama.cpp logits against the PyTorch teacher)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgesft import prune as surgery
    from edgesft.runtimes.torch_rt import TorchArtifact
    from edgesft.stages.prune import heal
    from edgesft.training import calibration_batches
    from edgesft.verify import build_request, verify_artifact

    teacher = _hostile_teacher(tmp_path / "teacher")
    tok = AutoTokenizer.from_pretrained(teacher)
    rows = load_rows(SMOKE_DATA / "train.jsonl")
    train_rows, val_rows = rows[:200], rows[200:208]
    calib = calibration_batches(tok, random.Random(7).sample(train_rows, 32), 128)
    verify = VerifyConfig(prompts=8, generate_prompts=1, generate_tokens=2)
    request = build_request(tok, rows[208:216], verify)
    kl: dict[str, float] = {}
    for fmt in ("none", "q4_0"):
        recipe = Recipe.model_validate(
            {
                "seed": 7,
                "data": {"train": ["unused.jsonl"], "max_length": 128},
                "train": {"dtype": "float32"},
                "prune": {
                    "heal": {
                        "method": "distill",
                        "alpha": 1.0,
                        "learning_rate": 5e-4,
                        "warmup_ratio": 0.0,
                        "max_steps": 30,
                        "eval_steps": 15,
                        "batch_size": 8,
                        "early_stopping_patience": None,
                        "qat": {"format": fmt, "importance_rows": 32},
                    }
                },
            }
        )
        student = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
        surgery.prune_mlp(student, 96, surgery.mlp_importance(student, calib))  # 128 -> 96 neurons
        healed, metrics = heal(
            recipe, student, tok, teacher, train_rows, val_rows, tmp_path / f"work-{fmt}", tmp_path / fmt
        )
        assert ("qat" in metrics) == (fmt != "none")
        out = tmp_path / f"healed-{fmt}"
        healed.save_pretrained(out, safe_serialization=True)
        copy_tokenizer_files(teacher, out)
        # the importance matrix on the rows the QAT heal measured it on, as the gguf stage does
        q4_0, _, _ = _export(out, "Q4_0", random.Random(7).sample(train_rows, 32), tmp_path)
        record = verify_artifact(
            q4_0, "Q4_0", TorchArtifact(teacher), request, verify, tmp_path / f"p-{fmt}", 1
        )
        kl[fmt] = record["checks"]["logits"]["kl_mean"]
    assert metrics["qat"]["tensor_types"] == {"Q4_0": 14, "Q8_0": 1}  # the tied embedding: Q6_K -> Q8_0
    assert kl["q4_0"] < 0.6 * kl["none"], kl
