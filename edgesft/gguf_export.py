"""Hugging Face model folder -> GGUF (F32/F16/BF16), importance matrix, and llama.cpp quantization.

The float file is written by llama.cpp's own converter (:mod:`edgesft.llama_convert`: why that one, and how
it is installed). The ``gguf`` package supplies the reader, the HF -> GGUF tensor-name map the importance
matrix is keyed by, and the writer of the imatrix file.

Quantization is llama.cpp's own (``llama_model_quantize`` through llama-cpp-python) with an importance
matrix measured on the recipe's calibration rows from the PyTorch model's activations. It runs in a
subprocess (:func:`edgesft.isolate.call`) because native code can crash on a given CPU.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgesft.errors import EdgesftError
from edgesft.io import atomic_file
from edgesft.llama_convert import convert

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


# --------------------------------------------------------------------------------------------------------
# Writing


def write_gguf(
    model_dir: Path, dest: Path, float_type: str = "f16", name: str | None = None
) -> dict[str, Any]:
    """Write ``model_dir`` as a float GGUF file at ``dest`` (atomically) with llama.cpp's converter; return
    what was written, read back from the file."""
    if float_type not in FLOAT_TYPES:
        raise EdgesftError(f"export.gguf.float_type: {float_type!r} is not one of {', '.join(FLOAT_TYPES)}")
    convert(model_dir, dest, float_type, name or model_dir.name)
    return describe(dest) | {"float_type": float_type}


def describe(path: Path) -> dict[str, Any]:
    """Architecture, tokenizer and tensor count of a GGUF file, from its own metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    names = {t.name for t in reader.tensors}
    return {
        "architecture": field("general.architecture"),
        "tokenizer": field("tokenizer.ggml.model"),
        "pre_tokenizer": field("tokenizer.ggml.pre"),
        "tensors": len(names),
        "tied_embeddings": "output.weight" not in names,
        "bytes": path.stat().st_size,
    }


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file."""
    arch = describe(path)["architecture"]
    if not isinstance(arch, str):
        raise EdgesftError(f"{path}: no general.architecture")
    return arch


def _name_map(arch: str, n_layer: int) -> Any:
    """The gguf package's HF -> GGUF tensor-name map for a GGUF architecture name."""
    import gguf

    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in by_name:
        raise EdgesftError(f"export.gguf: the gguf package has no tensor names for architecture {arch!r}")
    return gguf.get_tensor_name_map(by_name[arch], n_layer)


# --------------------------------------------------------------------------------------------------------
# Importance matrix


def imatrix_from_model(model: Any, batches: Iterable[dict[str, Any]], arch: str) -> dict[str, Any]:
    """Sum of squared inputs per column of every linear layer, over real (unpadded) tokens.

    ``arch`` is the GGUF architecture the converter wrote (:func:`gguf_architecture`). Returns ``{gguf tensor
    name: (sums float32[in_features], token count)}``. With tied embeddings the LM head's inputs are recorded
    under ``token_embd.weight``, the tensor llama.cpp multiplies there.
    """
    import torch

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    name_map = _name_map(arch, int(config.num_hidden_layers))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    keys: dict[str, str] = {}
    for mod_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if mod_name == "lm_head":
            keys[mod_name] = "token_embd.weight" if tied else "output.weight"
        else:
            mapped = name_map.get_name(f"{mod_name}.weight", try_suffixes=(".weight",))
            if mapped is not None:
                keys[mod_name] = mapped
    sums = squared_input_sums(model, batches, keys)
    return {k: (s.numpy().astype(np.float32), n) for k, (s, n) in sums.items()}


def squared_input_sums(
    model: Any, batches: Iterable[dict[str, Any]], keys: dict[str, str]
) -> dict[str, tuple[Any, int]]:
    """For each module named in ``keys`` (module name -> key), the sum of its squared inputs per column and
    the token count, over the batches' real (unpadded) tokens, under its key: the statistics of llama.cpp's
    importance matrix. The model runs in eval mode without gradients and gets its training mode back."""
    import torch

    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    mask_holder: dict[str, Any] = {}
    hooks = []

    def hook_for(key: str) -> Callable[..., None]:
        def hook(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            m = mask_holder.get("mask")
            x = x[m] if m is not None and m.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
            s = (x * x).sum(dim=0)
            sums[key] = sums[key] + s if key in sums else s
            counts[key] = counts.get(key, 0) + int(x.shape[0])

        return hook

    for name, module in model.named_modules():
        if name in keys:
            hooks.append(module.register_forward_pre_hook(hook_for(keys[name])))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                mask_holder["mask"] = batch["attention_mask"].bool()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {k: (sums[k], counts[k]) for k in sums}


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
