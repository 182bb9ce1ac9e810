"""ONNX export of a Hugging Face causal LM into folders that plain onnxruntime and onnxruntime-genai both run.

onnxruntime-genai's model builder makes every variant (:class:`edgesft.config.OnnxVariant`). It writes a
CPU graph with fused operators (GroupQueryAttention, SkipSimplifiedLayerNormalization, RotaryEmbedding,
MatMulNBits), which decoded ~2x faster than optimum's unfused export at equal quality
(``bench/results/peers-2026-11-21.json``), and it runs on transformers 5, which optimum-onnx does not.

* fp32, int8 and int4 with ``rtn`` or ``k_quant``: the builder writes the folder itself (``-p fp32|int8|int4
  -e cpu``); int4/int8 weights are MatMulNBits blocks, and the token embedding can be quantized and shared
  with a tied LM head (GatherBlockQuantized).
* fp16: the builder's fp32 graph converted by onnxruntime's float16 converter with fp32 inputs and outputs
  (the builder's own fp16 targets GPU execution providers only).
* int4 with ``hqq`` or ``gptq``: the builder's fp32 graph quantized by onnxruntime's MatMulNBits quantizer
  with that algorithm (the builder has neither).

The builder's ``genai_config.json`` is then aligned with the recipe (context length, greedy search, every
EOS id) and the tokenizer files are copied with the chat template inside ``tokenizer_config.json``. Folders
are written through :func:`edgesft.io.atomic_dir`, so a failure never leaves a half-written variant behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgesft.config import OnnxVariant
from edgesft.errors import EdgesftError
from edgesft.io import atomic_dir, atomic_write_json, read_json
from edgesft.models import generation_eos_ids, head_dim

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ONNX_FILE = "model.onnx"
# Models larger than this are saved with their weights in one external data file (protobuf's limit is 2 GiB).
_EXTERNAL_DATA_BYTES = 1_800_000_000


def build_variant(
    model_dir: Path,
    out_dir: Path,
    variant: OnnxVariant,
    *,
    context_length: int,
    calibration: list[list[int]] | None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write one variant folder ``out_dir``.

    Args:
        model_dir: the Hugging Face folder (config, generation config, tokenizer, safetensors weights).
        out_dir: the variant folder; replaced as a whole on success, untouched on failure.
        variant: precision and quantization settings.
        context_length: written to ``genai_config.json`` (``model.context_length``, ``search.max_length``).
        calibration: token id rows for GPTQ (``algorithm: gptq``); ignored otherwise.
        log: receives one line per step.

    Returns:
        ``precision``, ``exporter``, ``files`` (name -> bytes), ``size_bytes``, ``seconds``; for quantized
        variants also their settings, ``matmul_quantized``, ``matmul_float`` (node counts in the written
        graph), ``not_quantized`` (float MatMul nodes with the reason) and ``embedding_op``.

    Raises:
        EdgesftError: the variant cannot be made (the builder's own error, one line), or its graph does not
            match the model's shape.
    """
    where = f"export.onnx.variants[{variant.name}]"
    _check_variant(variant, where)
    model_dir = Path(model_dir).resolve()  # the builder runs in another working directory
    start = time.perf_counter()
    figures: dict[str, Any] = {"precision": variant.precision, "exporter": variant.exporter}
    with atomic_dir(out_dir) as tmp:
        if variant.precision == "fp16" or (variant.precision == "int4" and variant.algorithm in _ORT_ALGOS):
            with tempfile.TemporaryDirectory(prefix=".fp32-", suffix=".tmp", dir=tmp.parent) as fp32:
                fp32_dir = Path(fp32) / "model"
                _run_builder(model_dir, fp32_dir, "fp32", [], where=where, log=log)
                model = _load(fp32_dir / ONNX_FILE)
                if variant.precision == "fp16":
                    from onnxruntime.transformers.float16 import convert_float_to_float16

                    # keep_io_types: inputs, outputs and the KV cache stay fp32, so callers feed the same
                    # tensors; the builder's genai_config (fp32 cache) stays right.
                    model = convert_float_to_float16(
                        model, keep_io_types=True, disable_shape_infer=_is_large(model)
                    )
                else:
                    decoder = (read_json(fp32_dir / "genai_config.json") or {})["model"]["decoder"]
                    kv_shape = (int(decoder["num_key_value_heads"]), int(decoder["head_size"]))
                    figures.update(
                        _quantize_int4(model, variant, calibration, context_length, kv_shape, where=where)
                    )
                _save(model, tmp / ONNX_FILE)
                shutil.copy2(fp32_dir / "genai_config.json", tmp / "genai_config.json")
        else:
            options = _builder_options(model_dir, variant)
            _run_builder(model_dir, tmp, variant.precision, options, where=where, log=log)
            if variant.precision != "fp32":
                figures.update(
                    block_size=variant.block_size,
                    symmetric=variant.symmetric,
                    accuracy_level=variant.accuracy_level,
                    algorithm=variant.algorithm,
                )
        _align_genai_config(tmp, model_dir, context_length, where=where)
        copy_tokenizer(model_dir, tmp)  # the builder's tokenizer_config.json has no chat_template
        if variant.precision in ("int8", "int4"):
            figures.update(count_matmuls(tmp / ONNX_FILE))
            # From the graph, not the request: the builder quantizes the embedding at int4 only.
            figures["embedding_quantized"] = figures["embedding_op"] == "GatherBlockQuantized"
    files = _listing(out_dir)
    figures.update(files=files, size_bytes=sum(files.values()), seconds=round(time.perf_counter() - start, 2))
    log(
        f"{where}: {variant.precision} {figures['size_bytes'] / 1e6:.1f} MB in {figures['seconds']:.1f} s"
        + (
            f", {figures['matmul_quantized']} MatMul quantized, {figures['matmul_float']} float"
            if "matmul_quantized" in figures
            else ""
        )
    )
    return figures


# int4 algorithms the builder lacks: onnxruntime's MatMulNBits quantizer applies them to its fp32 graph.
_ORT_ALGOS = ("hqq", "gptq")


def _check_variant(variant: OnnxVariant, where: str) -> None:
    if variant.algorithm != "rtn" and variant.precision != "int4":
        raise EdgesftError(
            f"{where}: algorithm {variant.algorithm} is an int4 method, not {variant.precision}"
        )
    if (
        variant.precision == "int4"
        and variant.algorithm in ("rtn", "k_quant")
        and variant.quantize_embedding
        and not variant.symmetric
    ):
        # Measured with onnxruntime-genai 0.18: the builder's asymmetric GatherBlockQuantized embedding
        # (uint8 zero points) is a graph onnxruntime refuses to load.
        raise EdgesftError(
            f"{where}: symmetric: false needs quantize_embedding: false (onnxruntime-genai's builder writes "
            "an asymmetric quantized embedding that onnxruntime cannot load)"
        )
    if variant.precision == "int8" and variant.block_size < 32:
        # Measured with onnxruntime 1.32: 8-bit MatMulNBits blocks under 32 fail to load on CPU.
        raise EdgesftError(f"{where}: int8 needs block_size >= 32, got {variant.block_size}")


def _builder_options(model_dir: Path, variant: OnnxVariant) -> list[str]:
    """The builder's ``--extra_options`` for a variant it makes itself (fp32, int8, int4 rtn/k_quant)."""
    options: list[str] = []
    tied = bool(_model_config(model_dir).get("tie_word_embeddings"))
    if variant.precision in ("int8", "int4"):
        options += [
            f"block_size={variant.block_size}",
            f"is_symmetric={'true' if variant.symmetric else 'false'}",
            # "default" is the builder's name for plain round-to-nearest.
            f"algo_config={'k_quant' if variant.algorithm == 'k_quant' else 'default'}",
        ]
        if variant.accuracy_level:
            options.append(f"accuracy_level={variant.accuracy_level}")
        quantize_embedding = variant.quantize_embedding and variant.precision == "int4"
        # The builder shares a tied embedding with the LM head unless told not to, and a shared table is
        # quantized like the LM head: both are stated explicitly.
        options.append(f"op_types_to_quantize={'MatMul/Gather' if quantize_embedding else 'MatMul'}")
        options.append(f"shared_embeddings={'true' if tied and quantize_embedding else 'false'}")
    elif tied:
        options.append("shared_embeddings=true")  # fp32: the LM head reads the embedding table
    return options


def _run_builder(
    model_dir: Path,
    out: Path,
    precision: str,
    options: list[str],
    *,
    where: str,
    log: Callable[[str], None],
) -> None:
    """Run onnxruntime-genai's model builder in a child process, offline, on absolute paths."""
    config = _model_config(model_dir)
    head_size = head_dim(config)
    if head_size % 16:
        # The builder always emits GroupQueryAttention, whose CPU kernel rejects such heads at run time.
        raise EdgesftError(
            f"{where}: onnxruntime-genai's model builder cannot export head_dim {head_size}: its "
            "GroupQueryAttention graphs need a multiple of 16 on CPU"
        )
    extra = ["hf_token=false", "hf_remote=false", f"filename={ONNX_FILE}", *options]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix=".builder-cache-", suffix=".tmp", dir=out.parent) as cache:
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(model_dir),
            "-o",
            str(out),
            "-p",
            precision,
            "-e",
            "cpu",
            "-c",
            cache,
            "--extra_options",
            *extra,
        ]
        log(f"{where}: onnxruntime-genai model builder -p {precision} -e cpu {' '.join(options)}".rstrip())
        # The cache folder as working directory keeps stray files out of the run; every path is absolute,
        # so none of them can be mistaken for a hub id.
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cache)
    output = (proc.stdout or "") + "\n" + (proc.stderr or "")
    if proc.returncode != 0 or not (out / ONNX_FILE).is_file() or not (out / "genai_config.json").is_file():
        raise EdgesftError(
            f"{where}: onnxruntime-genai's model builder failed (exit {proc.returncode}): "
            f"{_last_error_line(output)}"
        )
    decoder = (read_json(out / "genai_config.json") or {}).get("model", {}).get("decoder", {})
    kv_heads = config.get("num_key_value_heads", config.get("num_attention_heads"))
    if decoder.get("head_size") != head_size or decoder.get("num_key_value_heads") != kv_heads:
        raise EdgesftError(
            f"{where}: onnxruntime-genai's model builder wrote head_size {decoder.get('head_size')} and "
            f"{decoder.get('num_key_value_heads')} KV heads, the model has head_dim {head_size} and "
            f"{kv_heads}: the builder cannot export this (pruned) shape"
        )


def _align_genai_config(folder: Path, model_dir: Path, context_length: int, *, where: str) -> None:
    """The recipe's context length, greedy search defaults and every EOS id in the builder's genai_config."""
    config = _model_config(model_dir)
    max_positions = config.get("max_position_embeddings")
    if isinstance(max_positions, int) and context_length > max_positions:
        # The builder bakes rotary tables of max_position_embeddings rows into the graph.
        raise EdgesftError(
            f"{where}: context_length {context_length} exceeds the model's max_position_embeddings "
            f"{max_positions}, the longest the builder's graph can run"
        )
    genai = read_json(folder / "genai_config.json") or {}
    genai["model"]["context_length"] = context_length
    # The builder's own past_present_share_buffer (true with its GroupQueryAttention graphs) is kept.
    share = genai.get("search", {}).get("past_present_share_buffer", False)
    genai["search"] = _search_defaults(context_length, share_buffer=share)
    eos = _eos_ids(model_dir, config)
    if eos:
        genai["model"]["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    atomic_write_json(folder / "genai_config.json", genai)


def _quantize_int4(
    model: Any,
    variant: OnnxVariant,
    calibration: list[list[int]] | None,
    context_length: int,
    kv_shape: tuple[int, int],
    *,
    where: str,
) -> dict[str, Any]:
    """int4 weight-only quantization (MatMulNBits) of every MatMul with a constant weight, in place, with
    onnxruntime's HQQ or GPTQ quantizer (the algorithms the builder does not have)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        GPTQWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
        WeightOnlyQuantConfig,
    )

    extra: dict[str, Any] = {
        "algorithm": variant.algorithm,
        "block_size": variant.block_size,
        "symmetric": variant.symmetric,
        "accuracy_level": variant.accuracy_level,
    }
    algo: WeightOnlyQuantConfig
    if variant.algorithm == "hqq":
        # HQQ always fits a float zero point per block: the variant's ``symmetric`` does not apply.
        algo = HQQWeightOnlyQuantConfig(block_size=variant.block_size, bits=4)
        extra["symmetric"] = False
    else:
        if not calibration:
            raise EdgesftError(f"{where}: algorithm gptq needs calibration rows, got none")
        reader = _CalibrationFeeds(model, calibration, max_len=context_length, kv_shape=kv_shape)
        algo = GPTQWeightOnlyQuantConfig(calibration_data_reader=reader, percdamp=0.01, actorder=False)
        extra["calibration_rows"] = len(reader.feeds)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=variant.block_size,
        is_symmetric=variant.symmetric,
        accuracy_level=variant.accuracy_level or None,
        op_types_to_quantize=("MatMul",),
        algo_config=algo,
    )
    _quiet_quantizer_logs()
    quantizer.process()
    result = quantizer.model.model
    if result is not model:
        model.CopyFrom(result)
    if variant.accuracy_level:
        # The HQQ and GPTQ quantizers write no accuracy_level; add it so the variant computes as configured.
        _set_accuracy_level(model, variant.accuracy_level)
    return extra


class _CalibrationFeeds:
    """GPTQ calibration data: one feed per token row, as the exported graph expects it from an empty cache.

    Feeds carry input_ids, an all-ones attention_mask, position_ids 0..n-1 (where the graph has that input)
    and zero-length past key/value tensors of the graph's dtype and head shape.
    """

    def __init__(self, model: Any, rows: list[list[int]], max_len: int, kv_shape: tuple[int, int]) -> None:
        import numpy as np
        from onnx import helper

        self.feeds: list[dict[str, Any]] = []
        inputs = {i.name: i for i in model.graph.input}
        for row in rows:
            ids = [int(t) for t in row[:max_len]]
            if not ids:
                continue
            feed: dict[str, Any] = {}
            n = len(ids)
            for name, value in inputs.items():
                ttype = value.type.tensor_type
                dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
                if name == "input_ids":
                    feed[name] = np.array([ids], dtype=dtype)
                elif name == "attention_mask":
                    feed[name] = np.ones((1, n), dtype=dtype)
                elif name == "position_ids":
                    feed[name] = np.arange(n, dtype=dtype)[None, :]
                elif name.startswith("past_key_values."):
                    # (batch, KV heads, past length 0, head size): the graph's shape may be symbolic.
                    feed[name] = np.zeros((1, kv_shape[0], 0, kv_shape[1]), dtype=dtype)
                else:
                    raise EdgesftError(f"calibration: the graph has an input {name!r} edgesft cannot feed")
            self.feeds.append(feed)
        self._pos = 0

    def get_next(self) -> dict[str, Any] | None:
        if self._pos >= len(self.feeds):
            return None
        self._pos += 1
        return self.feeds[self._pos - 1]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)


def count_matmuls(onnx_path: Path) -> dict[str, Any]:
    """Count quantized and float MatMul nodes in a graph; say why each float one stayed float.

    Quantized: MatMulNBits (int4), MatMulInteger / DynamicQuantizeMatMul (int8). A float MatMul whose
    weight is not a constant (attention, rotary angles) has nothing to quantize.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    consts = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    quantized = [
        n for n in graph.node if n.op_type in ("MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul")
    ]
    floats = [n for n in graph.node if n.op_type == "MatMul"]
    not_quantized = []
    for node in floats:
        if node.input[1] in consts:
            reason = "constant weight left float (excluded, or a shape the quantizer does not handle)"
        elif node.input[0] in consts:
            reason = "the constant is the left operand (rotary frequencies), not a weight"
        else:
            reason = "no constant weight (activation x activation)"
        not_quantized.append({"name": node.name, "reason": reason})
    embedding = next(
        (n.op_type for n in graph.node if n.op_type.startswith("Gather") and "input_ids" in n.input), None
    )
    return {
        "matmul_quantized": len(quantized),
        "matmul_float": len(floats),
        "not_quantized": not_quantized,
        # Gather: float embedding; GatherBlockQuantized: int4 embedding (the builder shares it with lm_head).
        "embedding_op": embedding,
    }


def _last_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception|error:)", line):
            return line[:500]
    return lines[-1][:500] if lines else "no output"


# --------------------------------------------------------------------------------------------------------
# genai_config.json and tokenizer files


def _search_defaults(context_length: int, *, share_buffer: bool) -> dict[str, Any]:
    """Greedy decoding: what edgesft verifies and benchmarks."""
    return {
        "diversity_penalty": 0.0,
        "do_sample": False,
        "early_stopping": True,
        "length_penalty": 1.0,
        "max_length": context_length,
        "min_length": 0,
        "no_repeat_ngram_size": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "past_present_share_buffer": share_buffer,
        "repetition_penalty": 1.0,
        "temperature": 1.0,
        "top_k": 1,
        "top_p": 1.0,
    }


def copy_tokenizer(model_dir: Path, dest: Path) -> None:
    """Copy the tokenizer files onnxruntime-genai reads; put the chat template into tokenizer_config.json.

    transformers saves the template as ``chat_template.jinja``; onnxruntime-genai reads it from
    ``tokenizer_config.json`` only, so it is written into both.
    """
    for name in (*TOKENIZER_FILES, "chat_template.jinja"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, dest / name)
    missing = [n for n in ("tokenizer.json", "tokenizer_config.json") if not (dest / n).is_file()]
    if missing:
        raise EdgesftError(
            f"export.onnx: {model_dir} has no {', '.join(missing)} (a fast tokenizer is needed)"
        )
    tok_config = read_json(dest / "tokenizer_config.json")
    if not isinstance(tok_config, dict):
        raise EdgesftError(f"export.onnx: {model_dir / 'tokenizer_config.json'} is not a JSON object")
    template = dest / "chat_template.jinja"
    if not tok_config.get("chat_template") and template.is_file():
        tok_config["chat_template"] = template.read_text(encoding="utf-8")
        atomic_write_json(dest / "tokenizer_config.json", tok_config)
    if not (dest / "special_tokens_map.json").is_file():
        special = {
            k: tok_config[k]
            for k in ("bos_token", "eos_token", "pad_token", "unk_token")
            if tok_config.get(k)
        }
        atomic_write_json(dest / "special_tokens_map.json", special)


# --------------------------------------------------------------------------------------------------------
# helpers


def _model_config(model_dir: Path) -> dict[str, Any]:
    config = read_json(model_dir / "config.json")
    if not isinstance(config, dict):
        raise EdgesftError(f"export.onnx: {model_dir} has no readable config.json")
    return config


def _eos_ids(model_dir: Path, config: dict[str, Any]) -> list[int]:
    """generation_config.json's EOS ids, else config.json's."""
    eos = config.get("eos_token_id")
    fallback = [int(e) for e in eos] if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
    return generation_eos_ids(model_dir) or fallback


def _load(onnx_path: Path) -> Any:
    import onnx

    return onnx.load(str(onnx_path))  # external data, if any, is loaded too


def _is_large(model: Any) -> bool:
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) or 4 * len(t.float_data) or 0
    return total > _EXTERNAL_DATA_BYTES


def _save(model: Any, dest: Path) -> None:
    import onnx

    if _is_large(model):
        onnx.save_model(
            model,
            str(dest),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=dest.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(dest))


def _set_accuracy_level(model: Any, level: int) -> None:
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(helper.make_attribute("accuracy_level", level))


def _quiet_quantizer_logs() -> None:
    # The int4 quantizer logs one INFO line per node at import; the stage prints its own summary instead.
    import logging

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
