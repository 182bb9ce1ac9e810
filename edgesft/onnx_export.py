"""ONNX export of a Hugging Face causal LM into folders that plain onnxruntime and onnxruntime-genai both run.

Two routes, picked per variant (:class:`edgesft.config.OnnxVariant`):

* ``optimum``: :func:`export_fp32` runs optimum's exporter once (task ``text-generation-with-past``, one
  graph with a KV cache); :func:`build_variant` then copies it (fp32) or converts it with onnxruntime's own
  tools (fp16 converter, dynamic int8 quantizer, MatMulNBits int4 quantizer) and writes ``genai_config.json``
  itself (:func:`write_genai_config`).
* ``genai_builder``: onnxruntime-genai's model builder, run in a subprocess, writes the whole folder; its
  ``genai_config.json`` is then aligned with the optimum route (context length, greedy search defaults).

Every variant folder ends with the ``.onnx`` file (plus its external data file where one was written),
``genai_config.json`` and the tokenizer files onnxruntime-genai reads (``tokenizer.json``,
``tokenizer_config.json`` with ``chat_template`` inside, ``special_tokens_map.json``). Folders are written
through :func:`edgesft.io.atomic_dir`, so a failure never leaves a half-written variant behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgesft.config import OnnxVariant
from edgesft.errors import EdgesftError
from edgesft.io import atomic_dir, atomic_write_json, link_or_copy, read_json
from edgesft.models import generation_eos_ids, head_dim

# Hugging Face ``model_type`` -> onnxruntime-genai ``model.type``. genai 0.13.2 runs these three as plain
# decoders over the standard input/output names that optimum's exporter writes.
GENAI_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ONNX_FILE = "model.onnx"
# Models larger than this are saved with their weights in one external data file (protobuf's limit is 2 GiB).
_EXTERNAL_DATA_BYTES = 1_800_000_000
_PAST_KEY = re.compile(r"^past_key_values\.(\d+)\.key$")


def export_fp32(model_dir: Path, out_dir: Path, opset: int | None = None) -> dict[str, Any]:
    """Export ``model_dir`` to an fp32 ONNX folder with optimum (one graph with a KV cache).

    The folder is the source of every ``optimum`` variant of :func:`build_variant`. optimum's validation
    against PyTorch is skipped: the verify stage compares every variant with the PyTorch model anyway.

    Returns:
        ``seconds``, ``files`` (name -> bytes), ``size_bytes`` and ``opset`` (the graph's ONNX opset).
    """
    from optimum.exporters.onnx import main_export

    model_type = _model_config(model_dir).get("model_type")
    if model_type not in GENAI_MODEL_TYPES:
        raise EdgesftError(
            f"export.onnx: model type {model_type!r} is not supported "
            f"(supported: {', '.join(sorted(GENAI_MODEL_TYPES))})"
        )
    start = time.perf_counter()
    with atomic_dir(out_dir) as tmp, warnings.catch_warnings():
        # The tracer warns about Python-side shape checks in transformers' masking code; the exported graph
        # is checked against PyTorch by the verify stage instead.
        warnings.simplefilter("ignore")
        main_export(
            str(model_dir),
            output=tmp,
            task="text-generation-with-past",
            opset=opset,
            device="cpu",
            do_validation=False,
            local_files_only=True,
            library_name="transformers",
        )
        onnx_path = tmp / ONNX_FILE
        if not onnx_path.is_file():
            raise EdgesftError(f"export.onnx: optimum wrote no {ONNX_FILE} (got {sorted(_listing(tmp))})")
        graph_opset = _default_opset(onnx_path)
    files = _listing(out_dir)
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "files": files,
        "size_bytes": sum(files.values()),
        "opset": graph_opset,
    }


def build_variant(
    fp32_dir: Path | None,
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
        fp32_dir: the :func:`export_fp32` folder (needed by the ``optimum`` exporter only).
        model_dir: the Hugging Face folder (config, generation config, tokenizer; weights for the builder).
        out_dir: the variant folder; replaced as a whole on success, untouched on failure.
        variant: exporter, precision and int4 settings.
        context_length: written to ``genai_config.json`` (``model.context_length``, ``search.max_length``).
        calibration: token id rows for GPTQ (``algorithm: gptq``); ignored otherwise.
        log: receives one line per step.

    Returns:
        ``precision``, ``exporter``, ``files`` (name -> bytes), ``size_bytes``, ``seconds``; for quantized
        variants also ``matmul_quantized``, ``matmul_float`` (node counts in the written graph) and
        ``not_quantized`` (float MatMul nodes with the reason).
    """
    where = f"export.onnx.variants[{variant.name}]"
    start = time.perf_counter()
    figures: dict[str, Any] = {"precision": variant.precision, "exporter": variant.exporter}
    with atomic_dir(out_dir) as tmp:
        if variant.exporter == "optimum":
            if fp32_dir is None or not (fp32_dir / ONNX_FILE).is_file():
                raise EdgesftError(f"{where}: the optimum exporter needs the fp32 export, got {fp32_dir}")
            figures.update(
                _optimum_variant(fp32_dir, tmp, variant, calibration, context_length, where=where, log=log)
            )
            copy_tokenizer(model_dir, tmp)
            write_genai_config(tmp, model_dir, ONNX_FILE, context_length)
        else:
            figures.update(_builder_variant(model_dir, tmp, variant, context_length, where=where, log=log))
        if variant.precision in ("int8", "int4"):
            figures.update(count_matmuls(tmp / ONNX_FILE))
    files = _listing(out_dir)
    figures.update(files=files, size_bytes=sum(files.values()), seconds=round(time.perf_counter() - start, 2))
    log(
        f"{where}: {variant.exporter} {variant.precision} {figures['size_bytes'] / 1e6:.1f} MB "
        f"in {figures['seconds']:.1f} s"
        + (
            f", {figures['matmul_quantized']} MatMul quantized, {figures['matmul_float']} float"
            if "matmul_quantized" in figures
            else ""
        )
    )
    return figures


# --------------------------------------------------------------------------------------------------------
# optimum route


def _optimum_variant(
    fp32_dir: Path,
    out: Path,
    variant: OnnxVariant,
    calibration: list[list[int]] | None,
    context_length: int,
    *,
    where: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    import onnx

    if variant.precision == "fp32":
        # The fp32 export is already the artifact: link its graph files instead of copying hundreds of MB.
        for src in fp32_dir.iterdir():
            if src.is_file() and (src.suffix == ".onnx" or src.name.startswith(ONNX_FILE)):
                link_or_copy(src, out / src.name)
        return {}

    model = onnx.load(str(fp32_dir / ONNX_FILE))  # external data, if any, is loaded too
    if variant.precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # keep_io_types: inputs, outputs and the KV cache stay fp32, so callers feed the same tensors.
        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=_is_large(model))
        _save(model, out / ONNX_FILE)
        return {}

    untied = untie_lm_head(model)
    if untied:
        log(f"{where}: gave {', '.join(untied)} its own weight (tied embedding) so it can be quantized")
    extra: dict[str, Any] = {"untied": untied}
    if variant.precision == "int8":
        _quantize_int8(model, out / ONNX_FILE)
    else:
        extra.update(
            _quantize_int4(model, out / ONNX_FILE, variant, calibration, context_length, where=where)
        )
    return extra


def untie_lm_head(model: Any) -> list[str]:
    """Give every MatMul whose weight is ``Transpose(initializer)`` a transposed copy of its own.

    optimum shares a tied embedding with the LM head through a Transpose node. onnxruntime's quantizers only
    quantize a MatMul whose weight is an initializer, so the shared form would leave the largest MatMul of a
    small model (hidden x vocab) in float. After untying, the LM head gets a quantized copy (an eighth of the
    embedding's size at int4, a quarter at int8); the embedding Gather stays float unless int4 RTN's
    ``quantize_embedding`` turns it into a GatherBlockQuantized.

    Returns:
        Names of the MatMul nodes that were untied.
    """
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    untied: list[str] = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        src = producers.get(node.input[1])
        if src is None or src.op_type != "Transpose" or src.input[0] not in inits:
            continue
        perm = next((list(a.ints) for a in src.attribute if a.name == "perm"), [1, 0])
        weight = numpy_helper.to_array(inits[src.input[0]])
        if weight.ndim != 2 or perm != [1, 0]:
            continue
        name = f"{node.input[1]}_untied"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name=name))
        node.input[1] = name
        untied.append(node.name)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Transpose" and n.output[0] not in used]:
        graph.node.remove(node)
    return untied


def _quantize_int8(model: Any, dest: Path) -> None:
    """Dynamic int8: QInt8 per-channel weights, uint8 activations quantized at run time.

    MatMul only: every linear layer of these models is a MatMul. The embedding Gather is left float (a
    quantized Gather dequantizes on every lookup and saves memory only), and MatMuls without a constant
    weight (attention scores and values, rotary angles) have nothing to quantize (``MatMulConstBOnly``).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic warns on the root logger that the graph was not "pre-processed" (shape inference and
    # graph optimisation for CNNs); onnxruntime optimises the graph at load time anyway.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            model,
            dest,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            use_external_data_format=_is_large(model),
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)


def _quantize_int4(
    model: Any,
    dest: Path,
    variant: OnnxVariant,
    calibration: list[list[int]] | None,
    context_length: int,
    *,
    where: str,
) -> dict[str, Any]:
    """int4 weight-only quantization of every MatMul with a constant weight (MatMulNBits)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
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
    op_types: tuple[str, ...] = ("MatMul",)
    axes: tuple[tuple[str, int], ...] | None = None
    if variant.algorithm == "rtn":
        if variant.quantize_embedding:
            # The embedding table becomes a GatherBlockQuantized (blocks along the hidden axis).
            op_types, axes = ("MatMul", "Gather"), (("MatMul", 0), ("Gather", 1))
        extra["embedding_quantized"] = variant.quantize_embedding
        # onnxruntime's built-in block quantizer: round-to-nearest with a per-block scale (and zero point
        # when asymmetric), the same quantizer the genai builder uses by default.
        algo = DefaultWeightOnlyQuantConfig(
            block_size=variant.block_size,
            is_symmetric=variant.symmetric,
            accuracy_level=variant.accuracy_level or None,
            op_types_to_quantize=op_types,
            quant_axes=axes,
        )
    elif variant.algorithm == "hqq":
        # HQQ always fits a float zero point per block: the variant's ``symmetric`` does not apply.
        algo = HQQWeightOnlyQuantConfig(block_size=variant.block_size, bits=4)
        extra["symmetric"] = False
    else:
        if not calibration:
            raise EdgesftError(f"{where}: algorithm gptq needs calibration rows, got none")
        reader = _CalibrationFeeds(model, calibration, max_len=context_length)
        algo = GPTQWeightOnlyQuantConfig(calibration_data_reader=reader, percdamp=0.01, actorder=False)
        extra["calibration_rows"] = len(reader.feeds)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=variant.block_size,
        is_symmetric=variant.symmetric,
        accuracy_level=variant.accuracy_level or None,
        op_types_to_quantize=op_types,
        quant_axes=axes,
        algo_config=algo,
    )
    _quiet_quantizer_logs()
    quantizer.process()
    result = quantizer.model.model
    if variant.algorithm == "hqq" and variant.accuracy_level:
        # The HQQ quantizer writes no accuracy_level; add it so the variant computes as configured.
        _set_accuracy_level(result, variant.accuracy_level)
    _save(result, dest)
    return extra


class _CalibrationFeeds:
    """GPTQ calibration data: one feed per token row, as the exported graph expects it from an empty cache.

    Feeds carry input_ids, an all-ones attention_mask, position_ids 0..n-1 (where the graph has that input)
    and zero-length past key/value tensors of the graph's dtype and head shape.
    """

    def __init__(self, model: Any, rows: list[list[int]], max_len: int) -> None:
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
                    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in ttype.shape.dim]
                    feed[name] = np.zeros((1, dims[1], 0, dims[3]), dtype=dtype)
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


# --------------------------------------------------------------------------------------------------------
# onnxruntime-genai model builder route


def _builder_variant(
    model_dir: Path,
    out: Path,
    variant: OnnxVariant,
    context_length: int,
    *,
    where: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    if variant.precision not in ("fp32", "int4"):
        raise EdgesftError(
            f"{where}: onnxruntime-genai's model builder makes fp32 or int4 models for CPU, "
            f"not {variant.precision}; use exporter: optimum"
        )
    if variant.precision == "int4" and variant.algorithm != "rtn":
        raise EdgesftError(
            f"{where}: algorithm {variant.algorithm} needs exporter: optimum (the builder quantizes with RTN)"
        )
    config = _model_config(model_dir)
    head_size = head_dim(config)
    if head_size % 16:
        # The builder always emits GroupQueryAttention, whose CPU kernel rejects such heads at run time.
        raise EdgesftError(
            f"{where}: onnxruntime-genai's model builder cannot export head_dim {head_size}: its "
            "GroupQueryAttention graphs need a multiple of 16 on CPU; use exporter: optimum"
        )
    max_positions = config.get("max_position_embeddings")
    if isinstance(max_positions, int) and context_length > max_positions:
        # The builder bakes rotary tables of max_position_embeddings rows into the graph.
        raise EdgesftError(
            f"{where}: context_length {context_length} exceeds the model's max_position_embeddings "
            f"{max_positions}, the longest the builder's graph can run"
        )
    extra = ["hf_token=false", "hf_remote=false", f"filename={ONNX_FILE}"]
    if variant.precision == "int4":
        extra += [
            f"int4_block_size={variant.block_size}",
            f"int4_is_symmetric={'true' if variant.symmetric else 'false'}",
        ]
        if variant.accuracy_level:
            extra.append(f"int4_accuracy_level={variant.accuracy_level}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
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
            variant.precision,
            "-e",
            "cpu",
            "-c",
            cache,
            "--extra_options",
            *extra,
        ]
        log(f"{where}: onnxruntime-genai model builder -p {variant.precision} -e cpu {' '.join(extra[3:])}")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cache)
    output = (proc.stdout or "") + "\n" + (proc.stderr or "")
    if proc.returncode != 0 or not (out / ONNX_FILE).is_file() or not (out / "genai_config.json").is_file():
        raise EdgesftError(
            f"{where}: onnxruntime-genai's model builder failed (exit {proc.returncode}): "
            f"{_last_error_line(output)}"
        )
    genai = read_json(out / "genai_config.json") or {}
    decoder = genai.get("model", {}).get("decoder", {})
    if decoder.get("head_size") != head_size or decoder.get("num_key_value_heads") != config.get(
        "num_key_value_heads", config.get("num_attention_heads")
    ):
        raise EdgesftError(
            f"{where}: onnxruntime-genai's model builder wrote head_size {decoder.get('head_size')} and "
            f"{decoder.get('num_key_value_heads')} KV heads, the model has head_dim {head_size} and "
            f"{config.get('num_key_value_heads')}: the builder cannot export this (pruned) shape"
        )
    # Align with the optimum route: the recipe's context length and greedy search defaults. The builder's
    # own past_present_share_buffer (true with its GroupQueryAttention graphs) is kept.
    genai["model"]["context_length"] = context_length
    share = genai.get("search", {}).get("past_present_share_buffer", False)
    genai["search"] = _search_defaults(context_length, share_buffer=share)
    eos = _eos_ids(model_dir, config)
    if eos:
        genai["model"]["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    atomic_write_json(out / "genai_config.json", genai)
    copy_tokenizer(model_dir, out)  # the builder's tokenizer_config.json has no chat_template
    if variant.precision == "fp32":
        return {}
    return {
        "block_size": variant.block_size,
        "symmetric": variant.symmetric,
        "accuracy_level": variant.accuracy_level,
    }


def _last_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception|error:)", line):
            return line[:500]
    return lines[-1][:500] if lines else "no output"


# --------------------------------------------------------------------------------------------------------
# genai_config.json and tokenizer files


def write_genai_config(folder: Path, model_dir: Path, onnx_file: str, context_length: int) -> dict[str, Any]:
    """Write ``folder/genai_config.json`` for the decoder graph ``onnx_file`` and return it.

    Input and output names come from the graph itself; shapes from ``config.json``; token ids from
    ``generation_config.json`` (EOS, may be a list), ``config.json`` and the tokenizer (BOS, pad).
    """
    import onnx

    graph = onnx.load(str(folder / onnx_file), load_external_data=False).graph
    in_names = [i.name for i in graph.input]
    out_names = [o.name for o in graph.output]
    config = _model_config(model_dir)
    model_type = config.get("model_type")
    if model_type not in GENAI_MODEL_TYPES:
        raise EdgesftError(
            f"genai_config: model type {model_type!r} is not one onnxruntime-genai runs from this graph "
            f"(supported: {', '.join(sorted(GENAI_MODEL_TYPES))})"
        )
    layers = int(config["num_hidden_layers"])
    past_layers = sorted(int(m.group(1)) for n in in_names if (m := _PAST_KEY.match(n)))
    missing = [n for n in ("input_ids", "attention_mask") if n not in in_names]
    missing += [n for n in ("logits",) if n not in out_names]
    for i in range(layers):
        missing += [n for n in (f"past_key_values.{i}.value",) if n not in in_names]
        missing += [n for n in (f"present.{i}.key", f"present.{i}.value") if n not in out_names]
    if missing or past_layers != list(range(layers)):
        raise EdgesftError(
            f"genai_config: {onnx_file} is not a decoder with a KV cache for {layers} layers "
            f"(missing {missing[:4] or 'past_key_values.N.key'}; inputs {in_names[:6]}...)"
        )
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if "position_ids" in in_names:
        inputs["position_ids"] = "position_ids"
    inputs.update(past_key_names="past_key_values.%d.key", past_value_names="past_key_values.%d.value")
    heads = int(config["num_attention_heads"])
    tok = _tokenizer_ids(model_dir)
    eos = _eos_ids(model_dir, config) or ([tok["eos"]] if tok["eos"] is not None else [])
    if not eos:
        raise EdgesftError(
            f"genai_config: {model_dir} names no EOS token (generation_config, config, tokenizer)"
        )
    bos = config.get("bos_token_id")
    bos = bos if isinstance(bos, int) else tok["bos"] if tok["bos"] is not None else eos[0]
    pad = tok["pad"] if tok["pad"] is not None else config.get("pad_token_id")
    pad = pad if isinstance(pad, int) else eos[0]
    genai: dict[str, Any] = {
        "model": {
            "bos_token_id": bos,
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": onnx_file,
                "head_size": head_dim(config),
                "hidden_size": int(config["hidden_size"]),
                "inputs": inputs,
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": heads,
                "num_hidden_layers": layers,
                "num_key_value_heads": int(config.get("num_key_value_heads") or heads),
            },
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": pad,
            "type": GENAI_MODEL_TYPES[model_type],
            "vocab_size": int(config["vocab_size"]),
        },
        # optimum's graph concatenates past and new keys, so genai must not share one buffer for both.
        "search": _search_defaults(context_length, share_buffer=False),
    }
    atomic_write_json(folder / "genai_config.json", genai)
    return genai


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

    transformers 4.57 saves the template as ``chat_template.jinja``; onnxruntime-genai reads it from
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


def _tokenizer_ids(model_dir: Path) -> dict[str, int | None]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}


def _default_opset(onnx_path: Path) -> int | None:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


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
