"""What a run ran on: library versions, CUDA, the llama.cpp build, for stage manifests and ``edgesft doctor``.

Every stage manifest records :func:`library_versions` of the process that ran the stage, so a report rebuilt
later (or on another machine) shows what produced its figures, not what is installed when it is rebuilt.
"""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata
from typing import Any

from edgesft import __version__

# Distribution names (as pip lists them) of the libraries whose version changes edgesft's results.
LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "tokenizers",
    "datasets",
    "safetensors",
    "gguf",
    "onnx",
    "onnxruntime",
    "onnxruntime-genai",
    "llama-cpp-python",
    "numpy",
)


def library_versions() -> dict[str, str]:
    """Python, edgesft and the installed version of every library in :data:`LIBRARIES` (absent: left out)."""
    out = {"python": platform.python_version(), "platform": platform.platform(), "edgesft": __version__}
    for lib in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[lib] = metadata.version(lib)
    return out


def cuda_info() -> dict[str, Any]:
    """Whether torch sees a CUDA device, and which (the QLoRA path uses bitsandbytes' CUDA kernels there)."""
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": "torch is not installed"}
    info: dict[str, Any] = {"available": bool(torch.cuda.is_available()), "torch_cuda": torch.version.cuda}
    if info["available"]:
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def onnxruntime_providers() -> list[str] | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return list(onnxruntime.get_available_providers())


def llama_cpp_build(timeout: float = 60) -> dict[str, Any]:
    """llama.cpp's compiled-in CPU features and backends (``llama_print_system_info``).

    Read in a child process: the native library is only ever loaded there (see :mod:`edgesft.runtimes`).
    """
    from edgesft.errors import EdgesftError
    from edgesft.isolate import call

    try:
        return call("edgesft.environment:_llama_cpp_system_info", {}, timeout=timeout)
    except EdgesftError as e:
        return {"error": str(e)}


def _llama_cpp_system_info() -> dict[str, Any]:
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return {"version": getattr(llama_cpp, "__version__", None), "system_info": text.strip()}


def doctor() -> dict[str, Any]:
    """Everything :func:`format_doctor` prints: what a user pastes into a bug report."""
    from edgesft.errors import EdgesftError
    from edgesft.llama_convert import converter_dir, source_info
    from edgesft.models import embedded_gguf

    try:
        embedded = str(embedded_gguf())
    except EdgesftError as e:  # reported, not raised: doctor describes a broken install too
        embedded = f"not found ({e})"
    try:
        converter: dict[str, Any] = {"folder": str(converter_dir()), **(source_info() or {})}
    except EdgesftError as e:
        converter = {"error": str(e)}
    return {
        "gguf_converter": converter,
        "versions": library_versions(),
        "cuda": cuda_info(),
        "onnxruntime_providers": onnxruntime_providers(),
        "llama_cpp": llama_cpp_build(),
        "embedded_model": embedded,
    }


def format_doctor(report: dict[str, Any]) -> str:
    versions = report["versions"]
    lines = [
        f"edgesft {versions['edgesft']}",
        f"python {versions['python']} on {versions['platform']}",
        "",
        "libraries:",
    ]
    for lib in LIBRARIES:
        lines.append(f"  {lib:<18} {versions.get(lib, 'not installed')}")
    cuda = report["cuda"]
    if cuda.get("available"):
        where = ", ".join(cuda.get("devices", []))
        lines += ["", f"CUDA: available (torch built for CUDA {cuda.get('torch_cuda')}): {where}"]
    else:
        built = cuda.get("torch_cuda")
        lines += [
            "",
            f"CUDA: not available ({'torch built for CUDA ' + built if built else 'CPU-only torch'})",
        ]
    providers = report["onnxruntime_providers"]
    lines.append(
        f"onnxruntime providers: {', '.join(providers) if providers else 'onnxruntime not installed'}"
    )
    llama = report["llama_cpp"]
    if "error" in llama:
        lines.append(f"llama.cpp: cannot load ({llama['error']})")
    else:
        lines.append(f"llama.cpp build: {llama['system_info']}")
    conv = report["gguf_converter"]
    if "error" in conv:
        lines.append(f"GGUF converter: {conv['error']}")
    else:
        lines.append(
            f"GGUF converter: llama.cpp's, from llama-cpp-python {conv['llama_cpp_python']} ({conv['folder']})"
        )
    lines.append(f"embedded model: {report['embedded_model']}")
    return "\n".join(lines)
