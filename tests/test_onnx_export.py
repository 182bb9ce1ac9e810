"""ONNX export (onnxruntime-genai's model builder) on tiny random models: every precision runs in plain
onnxruntime (teacher-forced logits) and in onnxruntime-genai (generation), with parity against PyTorch,
genai_config.json and tokenizer files, pruned shapes, and one-line failures."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgesft.config import ModelConfig, OnnxVariant
from edgesft.errors import EdgesftError
from edgesft.models import copy_tokenizer_files, resolve_model
from edgesft.onnx_export import build_variant
from edgesft.runtimes.onnx_rt import OnnxArtifact

pytest.importorskip("onnxruntime_genai")

CONTEXT = 256
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def make_model(folder: Path, arch: str = "llama", **overrides: Any) -> Path:
    """A tiny random model with the real SmolLM2 tokenizer (from the cached ``tiny-llama`` folder).

    Blocks initialised wider (0.1) than the tied embedding (0.02): with equal widths the embedding dominates
    and greedy decoding just repeats the last prompt token, so a generation mismatch would not show.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok_dir = resolve_model(ModelConfig(base="tiny-llama")).path
    tok = AutoTokenizer.from_pretrained(tok_dir)
    settings: dict[str, Any] = {
        "vocab_size": len(tok),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "initializer_range": 0.1,
        "tie_word_embeddings": True,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    settings.update(overrides)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **settings)).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 0.02)
        for name, param in model.named_parameters():  # random biases, so a dropped bias shows in the logits
            if name.endswith("_proj.bias"):
                param.normal_(0, 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    copy_tokenizer_files(tok_dir, folder)
    return folder


def make_variant(
    model_dir: Path, out: Path, calibration: list[list[int]] | None = None, **fields: Any
) -> dict[str, Any]:
    """``build_variant`` at the test context length, quietly; ``fields`` make the OnnxVariant."""
    return build_variant(
        model_dir, out, OnnxVariant(**fields), context_length=CONTEXT, calibration=calibration,
        log=lambda _: None,
    )  # fmt: skip


def torch_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def mean_kl(ref: np.ndarray, other: np.ndarray) -> float:
    p = torch.log_softmax(torch.from_numpy(ref).double(), -1)
    q = torch.log_softmax(torch.from_numpy(np.asarray(other)).double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("onnx")
    model_dir = make_model(root / "hf")
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(PROMPT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
        )
    return {
        "root": root,
        "model_dir": model_dir,
        "tok": tok,
        "ids": ids,
        "logits": logits,
        "greedy": out[0, len(ids) :].tolist(),
    }


@pytest.fixture(scope="module")
def variant(tiny: dict[str, Any]) -> Callable[..., tuple[Path, dict[str, Any]]]:
    """Build a variant once per module: ``variant(name, **fields)`` -> (folder, figures)."""
    built: dict[str, tuple[Path, dict[str, Any]]] = {}

    def build(name: str, **fields: Any) -> tuple[Path, dict[str, Any]]:
        if name not in built:
            out = tiny["root"] / "variants" / name
            calibration = [tiny["ids"], tiny["tok"]("Hello world, 1 2 3")["input_ids"]]
            figures = make_variant(tiny["model_dir"], out, calibration, name=name, **fields)
            built[name] = (out, figures)
        return built[name]

    return build


def onnx_ops(folder: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node]


# --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fp32_matches_torch(tiny: dict[str, Any], variant: Callable[..., Any]) -> None:
    folder, figures = variant("fp32", precision="fp32")
    assert "GroupQueryAttention" in onnx_ops(folder)  # the builder's fused CPU graph
    assert {"model.onnx", "genai_config.json", *("tokenizer.json", "tokenizer_config.json")} <= set(
        figures["files"]
    )
    art = OnnxArtifact(folder, threads=2)
    try:
        np.testing.assert_allclose(art.logits(tiny["ids"]), tiny["logits"], atol=1e-4, rtol=0)
        assert len(set(tiny["greedy"])) > 1  # the model does not just repeat one token
        assert art.generate(tiny["ids"], 8) == tiny["greedy"]
        # onnxruntime-genai's step-by-step logits (used for graphs with last-token logits only) agree too.
        np.testing.assert_allclose(
            art._logits_stepwise(tiny["ids"][:6]), tiny["logits"][:6], atol=1e-4, rtol=0
        )
    finally:
        art.close()


@pytest.mark.slow
def test_generate_stops_after_eos(tiny: dict[str, Any], variant: Callable[..., Any]) -> None:
    folder, _ = variant("fp32", precision="fp32")
    copy = tiny["root"] / "fp32-eos"
    shutil.copytree(folder, copy, copy_function=os.link, dirs_exist_ok=True)
    config = json.loads((copy / "genai_config.json").read_text())
    stop = tiny["greedy"][2]
    config["model"]["eos_token_id"] = [stop, 0]
    (copy / "genai_config.json").unlink()  # a hard link: write a new file, not into the shared one
    (copy / "genai_config.json").write_text(json.dumps(config))
    art = OnnxArtifact(copy)
    try:
        assert art.eos_ids() == [stop, 0]
        assert art.generate(tiny["ids"], 8) == tiny["greedy"][:3]
    finally:
        art.close()


@pytest.mark.parametrize(
    "name,fields,max_kl,embedding",
    [
        ("int8", {"precision": "int8"}, 5e-4, "Gather"),  # the builder quantizes embeddings at int4 only
        ("int4-rtn", {"precision": "int4", "block_size": 32}, 5e-3, "GatherBlockQuantized"),
        ("int4-rtn-16-asym", {"precision": "int4", "block_size": 16, "symmetric": False,
                              "quantize_embedding": False}, 5e-3, "Gather"),
        ("int4-float-emb", {"precision": "int4", "quantize_embedding": False}, 5e-3, "Gather"),
        ("int4-kquant", {"precision": "int4", "algorithm": "k_quant"}, 5e-3, "GatherBlockQuantized"),
        ("int4-hqq", {"precision": "int4", "algorithm": "hqq", "block_size": 32}, 5e-3, "Gather"),
        ("int4-gptq", {"precision": "int4", "algorithm": "gptq", "block_size": 32}, 5e-3, "Gather"),
        ("fp16", {"precision": "fp16"}, 1e-5, None),
    ],
)  # fmt: skip
@pytest.mark.slow
def test_quantized_variants(
    tiny: dict[str, Any],
    variant: Callable[..., Any],
    name: str,
    fields: dict[str, Any],
    max_kl: float,
    embedding: str | None,
) -> None:
    folder, figures = variant(name, **fields)
    ops = onnx_ops(folder)
    if fields["precision"] in ("int4", "int8"):
        # 2 blocks of (fused qkv, o, gate, up, down) + lm_head, unless the quantized embedding serves as
        # the LM head too (shared, tied model).
        assert figures["matmul_quantized"] == ops.count("MatMulNBits") >= 10
        assert figures["matmul_float"] == ops.count("MatMul")
        assert all("no constant weight" in item["reason"] for item in figures["not_quantized"])
        assert figures["embedding_op"] == embedding
        assert figures["block_size"] == fields.get("block_size", 32)
    art = OnnxArtifact(folder, threads=2)
    try:
        kl = mean_kl(tiny["logits"], art.logits(tiny["ids"]))  # plain onnxruntime
        # Above zero: the weights really changed; below the limit: they still compute the same model.
        assert np.isfinite(kl) and 0 < kl < max_kl, kl
        new = art.generate(tiny["ids"], 8)  # onnxruntime-genai
        assert len(new) == 8 and all(0 <= t < len(tiny["tok"]) for t in new)
    finally:
        art.close()


@pytest.mark.slow
def test_genai_config_and_tokenizer_parity(tiny: dict[str, Any], variant: Callable[..., Any]) -> None:
    folder, _ = variant("fp32", precision="fp32")
    tok = tiny["tok"]
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["eos_token_id"] == tok.eos_token_id
    assert config["model"]["pad_token_id"] == tok.pad_token_id
    assert config["model"]["type"] == "llama" and config["model"]["context_length"] == CONTEXT
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    art = OnnxArtifact(folder)
    try:
        assert art.eos_ids() == [tok.eos_token_id]
        for text in [
            "<|im_start|>user\nHi 123<|im_end|>\n",
            "Grüße, naïve café — 東京 🙂",
            "a    b  \t c",
            "line one\n\n\nline two\r\n",
            " leading space and 2025 digits",
        ]:
            ids = tok(text)["input_ids"]
            assert art.tokenize(text) == ids, text
            # onnxruntime-genai's decode drops special tokens.
            assert art.detokenize(ids) == tok.decode(ids, skip_special_tokens=True), text
    finally:
        art.close()


@pytest.mark.slow
def test_render_chat_matches_transformers(tiny: dict[str, Any], variant: Callable[..., Any]) -> None:
    folder, _ = variant("fp32", precision="fp32")
    art = OnnxArtifact(folder)
    try:
        for messages in (
            [{"role": "user", "content": "Hi there"}],
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "Und 3+3? — ünïcode"},
            ],
        ):
            expected = tiny["tok"].apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert art.render_chat(messages, add_generation_prompt=True) == expected
    finally:
        art.close()


@pytest.mark.parametrize(
    "arch,overrides",
    [
        # Pruned shape: 1 KV head, head_dim 32 while hidden / heads = 16, narrower MLP.
        ("llama", {"num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 96}),
        ("qwen2", {"num_attention_heads": 4, "num_key_value_heads": 2}),
        # Other architectures the builder exports (measured with onnxruntime-genai 0.18 on transformers 5:
        # gemma3_text, phi3 and smollm3 fail inside the builder; gemma2's sliding-window graph needs a
        # preallocated cache the teacher-forced pass does not give it).
        ("qwen3", {"head_dim": 16}),
        ("granite", {}),
        ("llama", {"attention_bias": True}),
        ("mistral", {"tie_word_embeddings": False}),
    ],
)
@pytest.mark.slow
def test_other_shapes_match_torch(tmp_path: Path, arch: str, overrides: dict[str, Any]) -> None:
    model_dir = make_model(tmp_path / "hf", arch=arch, **overrides)
    out = tmp_path / "v"
    make_variant(model_dir, out, name="v", precision="fp32")
    config = json.loads((out / "genai_config.json").read_text())
    assert config["model"]["decoder"]["head_size"] == overrides.get("head_dim", 16)
    assert config["model"]["decoder"]["num_key_value_heads"] == overrides.get("num_key_value_heads", 2)
    assert config["model"]["type"] == arch
    ids = list(range(100, 120))
    art = OnnxArtifact(out)
    try:
        np.testing.assert_allclose(art.logits(ids), torch_logits(model_dir, ids), atol=1e-4, rtol=0)
        assert len(art.generate(ids, 4)) == 4  # onnxruntime-genai runs this shape too
    finally:
        art.close()


@pytest.mark.slow
def test_genai_builder_int4(tiny: dict[str, Any], variant: Callable[..., Any]) -> None:
    folder, figures = variant("int4-rtn", precision="int4", block_size=32)
    ops = onnx_ops(folder)
    assert "GroupQueryAttention" in ops
    assert figures["matmul_quantized"] == ops.count("MatMulNBits") > 0
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["context_length"] == CONTEXT and config["search"]["max_length"] == CONTEXT
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    art = OnnxArtifact(folder, threads=2)
    try:
        logits = art.logits(tiny["ids"])  # builder graph: no position_ids, GroupQueryAttention
        assert logits.shape == tiny["logits"].shape
        assert 0 < mean_kl(tiny["logits"], logits) < 5e-3
        new = art.generate(tiny["ids"], 8)
        assert len(new) == 8
    finally:
        art.close()


@pytest.mark.slow
def test_genai_builder_pruned_head_dim(tmp_path: Path) -> None:
    # Pruned from 4 heads / 2 KV heads to 2 / 1: head_dim 16 stays, hidden / heads would say 32.
    model_dir = make_model(
        tmp_path / "hf", num_attention_heads=2, num_key_value_heads=1, head_dim=16, intermediate_size=96
    )
    out = tmp_path / "b"
    make_variant(model_dir, out, name="b", precision="fp32")
    ids = list(range(100, 120))
    art = OnnxArtifact(out)
    try:
        decoder = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]
        assert (decoder["head_size"], decoder["num_attention_heads"], decoder["num_key_value_heads"]) == (
            16,
            2,
            1,
        )
        np.testing.assert_allclose(art.logits(ids), torch_logits(model_dir, ids), atol=1e-4, rtol=0)
        assert len(art.generate(ids, 4)) == 4
    finally:
        art.close()
    # GroupQueryAttention on CPU needs head_dim % 16 == 0: refused before the builder runs.
    odd = make_model(tmp_path / "odd", num_key_value_heads=1, head_dim=24)
    with pytest.raises(EdgesftError, match="head_dim 24"):
        make_variant(odd, tmp_path / "o", name="o", precision="int4")


@pytest.mark.slow
def test_builder_failure_is_one_line_and_leaves_nothing(tmp_path: Path, tiny: dict[str, Any]) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny["model_dir"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["NoSuchForCausalLM"]
    (broken / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    with pytest.raises(EdgesftError, match=r"export\.onnx\.variants\[b\]: .*builder failed") as err:
        make_variant(broken, out, name="b", precision="int4")
    assert "\n" not in str(err.value) and "not currently supported" in str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_rejects_what_cannot_be_made(tmp_path: Path, tiny: dict[str, Any]) -> None:
    for fields, message in (
        ({"precision": "int8", "block_size": 16}, "int8 needs block_size >= 32"),
        ({"precision": "fp32", "algorithm": "k_quant"}, "k_quant is an int4 method"),
        ({"precision": "int4", "algorithm": "gptq"}, "gptq needs calibration"),
        ({"precision": "int4", "symmetric": False}, "symmetric: false needs quantize_embedding: false"),
    ):
        with pytest.raises(EdgesftError, match=rf"export\.onnx\.variants\[b\]: .*{message}"):
            make_variant(tiny["model_dir"], tmp_path / "b", name="b", **fields)
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_relative_model_path_never_reaches_the_hub(
    tmp_path: Path, tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The builder runs in its own working directory: a relative input path must still be the local folder.
    shutil.copytree(tiny["model_dir"], tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    make_variant(Path("hf"), Path("out"), name="rel", precision="int4")
    assert (tmp_path / "out" / "model.onnx").is_file()
