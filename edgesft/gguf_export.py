"""Hugging Face model folder -> GGUF (F32/F16/BF16), importance matrix, and llama.cpp quantization.

Why this module writes GGUF itself: no pip package converts a Hugging Face folder to GGUF (llama.cpp's
converter is a script in its source tree, not part of the ``gguf`` package). The ``gguf`` package supplies
the file writer, the metadata key names, the HF -> GGUF tensor-name map and the special-token reader; what
is ours is the small amount of glue below, written from the GGUF spec and llama.cpp's docs.

Quantization is llama.cpp's own (``llama_model_quantize`` through llama-cpp-python) with an importance
matrix measured on the recipe's calibration rows from the PyTorch model's activations. It runs in a
subprocess (:func:`edgesft.isolate.call`) because native code can crash on a given CPU.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgesft.errors import EdgesftError
from edgesft.io import atomic_file
from edgesft.models import generation_eos_ids, head_dim, rope_parameters

# HF model_type -> (GGUF architecture, whether Q/K rows are permuted for llama.cpp's rotary layout).
# llama.cpp applies "normal" (adjacent-pair) rope to the llama architecture and NeoX (half-split) rope to
# qwen2; HF's Llama code uses the half-split layout, so Llama-family Q/K rows are interleaved on export.
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "llama": ("llama", True),
    "mistral": ("llama", True),
    "qwen2": ("qwen2", False),
}
# Rotary scalings the writer carries into the file: linear as a scaling factor, llama3 (Llama 3.1/3.2) as
# llama.cpp's per-frequency divisors (the rope_freqs tensor).
ROPE_TYPES = ("default", "linear", "llama3")
FLOAT_TYPES = {"f32": 0, "f16": 1, "bf16": 32}  # llama_ftype values (LLAMA_FTYPE_ALL_F32, MOSTLY_F16/BF16)

# llama.cpp quantization names -> llama_ftype (llama.h). Only the types the recipe offers.
QUANT_FTYPES: dict[str, int] = {
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ4_NL": 25,
    "IQ4_XS": 30,
}

# The GPT-2 splitting regex, and those of Llama-3 and Qwen2: used to name the pre-tokenizer for llama.cpp.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)


def _load_config(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgesftError(f"{model_dir / 'config.json'}: cannot read the model config ({e})") from None


def architecture(config: dict[str, Any]) -> tuple[str, bool]:
    """(GGUF architecture, permute Q/K) for a config, or a clear refusal."""
    mtype = config.get("model_type")
    if mtype not in ARCHITECTURES:
        raise EdgesftError(
            f"export.gguf: model_type {mtype!r} is not supported by the GGUF writer "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    rope_type = rope_parameters(config)["rope_type"]
    if rope_type not in ROPE_TYPES:
        raise EdgesftError(
            f"export.gguf: rope_scaling {rope_type!r} is not supported by the GGUF writer "
            f"(supported: {', '.join(ROPE_TYPES)})"
        )
    return ARCHITECTURES[mtype]


def _name_map(arch: str, n_layer: int) -> Any:
    """The gguf package's HF -> GGUF tensor-name map for one of :data:`ARCHITECTURES`."""
    import gguf

    return gguf.get_tensor_name_map(
        gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2, n_layer
    )


@contextmanager
def _gguf_file(dest: Path, arch: str) -> Iterator[Any]:
    """A GGUFWriter whose metadata and tensors the caller adds; written and renamed to ``dest`` on success."""
    import gguf

    with atomic_file(dest) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        try:
            yield writer
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K projection rows from HF's half-split rotary layout to llama.cpp's interleaved one."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------------------------------------
# Tokenizer


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer whose splitting equals this byte-level BPE tokenizer's."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex"):
        return "smollm"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern == _LLAMA3_SPLIT:
            return "llama-bpe"
        if pattern == _QWEN2_SPLIT:
            return "qwen2"
    raise EdgesftError(
        f"export.gguf: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) has no llama.cpp "
        "equivalent known to edgesft (known: GPT-2, SmolLM, Llama-3, Qwen2 byte-level BPE)"
    )


def vocab_entries(model_dir: Path, n_vocab: int) -> tuple[str, str | None, list[str], list[int], list[float]]:
    """(tokenizer model, pre-tokenizer, tokens, token types, scores) for a model folder's tokenizer.

    Token types follow llama.cpp: special added tokens are CONTROL (3), other added tokens USER_DEFINED (4),
    ids past the tokenizer but inside the embedding matrix are UNUSED (5) padding.
    """
    import gguf
    from transformers import AutoTokenizer

    try:
        tj = json.loads((model_dir / "tokenizer.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgesftError(f"{model_dir / 'tokenizer.json'}: cannot read the tokenizer ({e})") from None
    model = tj.get("model", {})
    if (
        model.get("type") == "BPE"
        and not model.get("byte_fallback")
        and (tj.get("decoder") or {}).get("type") == "ByteLevel"
    ):
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        added = tok.added_tokens_decoder
        size = max(len(tok), max(added, default=-1) + 1)
        if size > n_vocab:
            raise EdgesftError(
                f"export.gguf: tokenizer has {size} tokens but the embedding only {n_vocab} rows"
            )
        by_id = {i: t for t, i in tok.get_vocab().items()}
        tokens, types = [], []
        for i in range(n_vocab):
            if i in added:
                tokens.append(added[i].content)
                types.append(int(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED))
            elif i in by_id:
                tokens.append(by_id[i])
                types.append(int(gguf.TokenType.NORMAL))
            else:
                tokens.append(f"[PAD{i}]")
                types.append(int(gguf.TokenType.UNUSED))
        return "gpt2", pre_tokenizer_name(tj), tokens, types, [0.0] * n_vocab
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        # SentencePiece-style BPE saved by transformers (Llama 2, Mistral): the gguf package reads it.
        vocab = gguf.LlamaHfVocab(model_dir)
        tokens, types, scores = [], [], []
        for text, score, ttype in vocab.all_tokens():
            tokens.append(text.decode("utf-8") if isinstance(text, bytes) else text)
            scores.append(float(score))
            types.append(int(ttype))
        for i in range(len(tokens), n_vocab):
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(int(gguf.TokenType.UNUSED))
        return "llama", None, tokens, types, scores
    raise EdgesftError(
        f"export.gguf: tokenizer model {model.get('type')!r} in {model_dir / 'tokenizer.json'} is not supported "
        "(byte-level BPE and SentencePiece-style BPE are)"
    )


# --------------------------------------------------------------------------------------------------------
# Writing


def _tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise EdgesftError(f"{model_dir}: no .safetensors weights to export")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, st.get_tensor(name).float().numpy()


def write_gguf(
    model_dir: Path, dest: Path, float_type: str = "f16", name: str | None = None
) -> dict[str, Any]:
    """Write ``model_dir`` as a GGUF file at ``dest`` (atomically); return what was written."""
    import gguf

    config = _load_config(model_dir)
    arch, permute = architecture(config)
    n_layer = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hd = head_dim(config)
    n_vocab = int(config["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", False))
    name_map = _name_map(arch, n_layer)

    with _gguf_file(dest, arch) as writer:
        writer.add_type("model")
        writer.add_name(name or model_dir.name)
        writer.add_file_type(FLOAT_TYPES[float_type])
        writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
        writer.add_embedding_length(int(config["hidden_size"]))
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_key_length(hd)
        writer.add_value_length(hd)
        writer.add_rope_dimension_count(hd)
        rope = rope_parameters(config)
        writer.add_rope_freq_base(rope["rope_theta"])
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        writer.add_vocab_size(n_vocab)
        if rope["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))

        kind, pre, tokens, types, scores = vocab_entries(model_dir, n_vocab)
        writer.add_tokenizer_model(kind)
        if pre is not None:
            writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        if kind == "llama":
            writer.add_token_scores(scores)
        special = gguf.SpecialVocab(model_dir, load_merges=(kind == "gpt2"), n_vocab=n_vocab)
        special.add_to_gguf(writer, quiet=True)
        _add_generation_eos(writer, model_dir, special.special_token_ids)

        written: dict[str, list[int]] = {}
        if rope["rope_type"] == "llama3":
            factors = llama3_rope_factors(model_dir, hd, rope["rope_theta"])
            _add_tensor(writer, "rope_freqs.weight", factors, "f32")
            written["rope_freqs.weight"] = list(factors.shape)
        for hf_name, data in _tensors(model_dir):
            if tied and hf_name == "lm_head.weight":
                continue  # llama.cpp reuses token_embd for the output when output.weight is absent
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            gname = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise EdgesftError(f"export.gguf: no GGUF name for tensor {hf_name!r} ({arch})")
            # Biases are rows too: an attention bias (attention_bias: true) moves with its weight rows.
            if permute and re.search(r"self_attn\.q_proj\.(weight|bias)$", hf_name):
                data = permute_rows(data, n_head)
            elif permute and re.search(r"self_attn\.k_proj\.(weight|bias)$", hf_name):
                data = permute_rows(data, n_kv)
            _add_tensor(writer, gname, data, float_type)
            written[gname] = list(data.shape)
    return {
        "architecture": arch,
        "float_type": float_type,
        "tokenizer": kind,
        "pre_tokenizer": pre,
        "tensors": len(written),
        "tied_embeddings": tied,
        "bytes": dest.stat().st_size,
    }


def llama3_rope_factors(model_dir: Path, dim: int, theta: float) -> np.ndarray:
    """llama.cpp's ``rope_freqs``: per rotary frequency, the divisor that turns the plain frequency into
    the llama3-scaled one. Taken from transformers' own llama3 frequencies, so both runtimes rotate alike."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](AutoConfig.from_pretrained(model_dir), "cpu")
    plain = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factors = plain / scaled.double().numpy()
    if factors.shape != (dim // 2,) or not np.isfinite(factors).all():
        raise EdgesftError(
            f"export.gguf: llama3 rope factors of shape {factors.shape}, expected ({dim // 2},)"
        )
    return factors.astype(np.float32)


def _add_tensor(writer: Any, name: str, data: np.ndarray, float_type: str) -> None:
    import gguf

    if data.ndim == 1 or float_type == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif float_type == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        packed = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.BF16)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)


def _add_generation_eos(writer: Any, model_dir: Path, special_ids: dict[str, int]) -> None:
    """Extra end-of-generation ids from generation_config.json (a list there) as llama.cpp's EOT id."""
    extra = [i for i in generation_eos_ids(model_dir) if i != special_ids.get("eos")]
    if extra:
        writer.add_eot_token_id(extra[0])


# --------------------------------------------------------------------------------------------------------
# Importance matrix


def imatrix_from_model(
    model: Any, batches: Iterable[dict[str, Any]], config: dict[str, Any]
) -> dict[str, Any]:
    """Sum of squared inputs per column of every linear layer, over real (unpadded) tokens.

    Returns ``{gguf tensor name: (sums float32[in_features], token count)}``. With tied embeddings the LM
    head's inputs are recorded under ``token_embd.weight``, the tensor llama.cpp multiplies there.
    """
    import torch

    arch, _ = architecture(config)
    name_map = _name_map(arch, int(config["num_hidden_layers"]))
    tied = bool(config.get("tie_word_embeddings", False))
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    mask_holder: dict[str, Any] = {}
    hooks = []

    def hook_for(gname: str) -> Callable[..., None]:
        def hook(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            m = mask_holder.get("mask")
            x = x[m] if m is not None and m.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
            s = (x * x).sum(dim=0)
            sums[gname] = sums[gname] + s if gname in sums else s
            counts[gname] = counts.get(gname, 0) + int(x.shape[0])

        return hook

    for mod_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if mod_name == "lm_head":
            gname = "token_embd.weight" if tied else "output.weight"
        else:
            mapped = name_map.get_name(f"{mod_name}.weight", try_suffixes=(".weight",))
            if mapped is None:
                continue
            gname = mapped
        hooks.append(module.register_forward_pre_hook(hook_for(gname)))
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                mask_holder["mask"] = batch["attention_mask"].bool()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    return {k: (sums[k].numpy().astype(np.float32), counts[k]) for k in sums}


def write_imatrix(stats: dict[str, Any], dest: Path, dataset: str, chunk_size: int) -> None:
    """Save in llama.cpp's GGUF imatrix format (``<tensor>.in_sum2`` and ``<tensor>.counts``), so the file
    also works with ``llama-quantize --imatrix``."""
    with _gguf_file(dest, "imatrix") as writer:  # the arch key is not read for imatrix files
        writer.add_type("imatrix")
        writer.add_array("imatrix.datasets", [dataset])
        total = max((c for _, c in stats.values()), default=0)
        writer.add_uint32("imatrix.chunk_count", max(1, total // max(1, chunk_size)))
        writer.add_uint32("imatrix.chunk_size", chunk_size)
        for name in sorted(stats):
            s, c = stats[name]
            writer.add_tensor(f"{name}.in_sum2", s.reshape(1, -1).astype(np.float32))
            writer.add_tensor(f"{name}.counts", np.array([[float(c)]], dtype=np.float32))


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """Mean squared input per column, by tensor name, from a GGUF imatrix file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.array(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = float(np.array(t.data).reshape(-1)[0])
    return {k: sums[k] / max(counts.get(k, 1.0), 1.0) for k in sums}


# --------------------------------------------------------------------------------------------------------
# Quantization (runs inside a subprocess: see quantize_isolated)

_FALLBACK = re.compile(
    r"(?P<tensor>\S+)\s+-\s+ncols\s+(?P<ncols>\d+)\s+not divisible by\s+(?P<block>\d+)\s+\(required for type\s+"
    r"(?P<wanted>\S+)\)\s*(?:\(WARNING: must use F16 due to unusual shape\)\s*)?->\s*falling back to\s+"
    r"(?P<used>\S+)"
)


GGML_TYPES = {"Q4_0": 2, "Q5_0": 6, "Q8_0": 8, "Q6_K": 14}  # ggml_type values (ggml.h)


def quantize(
    src: str, dest: str, qtype: str, imatrix: str | None, threads: int | None, output_type: str | None = None
) -> dict[str, Any]:
    """Quantize a float GGUF with llama.cpp (``llama_model_quantize``); report tensor types and fallbacks.

    Call through :func:`edgesft.isolate.call` so that a native crash is an error, not a dead pipeline.
    """
    import ctypes

    import llama_cpp

    log: list[str] = []

    @llama_cpp.llama_log_callback
    def on_log(_level: int, text: bytes, _user: Any) -> None:
        log.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[qtype]
    params.nthread = int(threads or 0)
    if output_type:
        params.output_tensor_type = GGML_TYPES[output_type]
    keep: list[Any] = []
    n_imatrix = 0
    if imatrix:
        data = read_imatrix(Path(imatrix))
        n_imatrix = len(data)
        entries = (llama_cpp.llama_model_imatrix_data * (len(data) + 1))()
        for i, (name, values) in enumerate(sorted(data.items())):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(data)].name = None  # the list ends at a null name
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    with atomic_file(Path(dest)) as tmp:
        rc = llama_cpp.llama_model_quantize(src.encode(), str(tmp).encode(), ctypes.byref(params))
        text = "".join(log)
        if rc != 0:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            raise EdgesftError(
                f"llama.cpp quantization to {qtype} failed (rc {rc}): {lines[-1] if lines else ''}"
            )
    fallbacks = [
        {
            "tensor": m["tensor"],
            "ncols": int(m["ncols"]),
            "block": int(m["block"]),
            "wanted": m["wanted"],
            "used": m["used"],
            "reason": f"row length {m['ncols']} not divisible by {m['block']}",
        }
        for m in _FALLBACK.finditer(text)
    ]
    missing = re.findall(r"did not find weights for (\S+)", text)
    return {
        "type": qtype,
        "tensor_types": tensor_types(Path(dest)),
        "fallbacks": fallbacks,
        "imatrix_entries": n_imatrix,
        "imatrix_missing": missing,
        "bytes": Path(dest).stat().st_size,
    }


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type a GGUF holds."""
    from gguf import GGUFReader

    out: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        out[t.tensor_type.name] = out.get(t.tensor_type.name, 0) + 1
    return dict(sorted(out.items()))
