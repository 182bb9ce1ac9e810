"""llama.cpp's own Hugging Face -> GGUF converter, installed once from the llama-cpp-python source release.

Why this converter and not a writer of ours: llama.cpp's ``convert_hf_to_gguf.py`` knows every architecture
llama.cpp runs (Llama 3 rope scaling, attention biases, Qwen3 and Gemma q/k norms, Gemma's norm offsets and
soft-capping, Phi-3's fused projections, SmolLM3's no-RoPE layers, Granite's multipliers, ...), and it is
released together with the llama.cpp that quantizes and runs the file. Measured on a matrix of tiny models
(``tests/test_architectures.py``), its F32 files match transformers in llama.cpp where our own writer, which
knew three architectures, wrote a wrong file for one of them (unpermuted Q/K biases).

It is not a package: a script, a ``conversion/`` folder and the ``gguf-py`` it was written against (newer than
the ``gguf`` release on PyPI of the same version number). ``python -m edgesft.llama_convert install`` (run by
``scripts/install.sh``) takes them, with llama.cpp's tokenizer test vocabularies, from the source release of
the llama-cpp-python that is installed, into ``<prefix>/share/edgesft/llama.cpp``; nothing is fetched at run
time. The converter runs in a child process with its own ``gguf-py`` first on its path, so it never mixes
with the ``gguf`` package edgesft imports.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from edgesft.errors import EdgesftError
from edgesft.io import atomic_file, atomic_write_json, sha256_file

ENV_VAR = "EDGESFT_LLAMA_CPP"  # a folder laid out like the installed one, instead of the default
SOURCE_FILE = "SOURCE.json"
# llama.cpp's tokenizer test vocabularies for the families edgesft tests: a .gguf vocabulary and, for each,
# the test texts (.inp) and the token ids llama.cpp's own tokenizer gives them (.out).
VOCABS = ("llama-bpe", "llama-spm", "qwen2", "phi-3", "gemma-4", "gpt-2")
_KEEP = re.compile(
    r"^(convert_hf_to_gguf\.py|LICENSE|conversion/.*\.py|gguf-py/gguf/.*\.(py|json)|"
    r"models/ggml-vocab-(" + "|".join(map(re.escape, VOCABS)) + r")\.gguf(\.inp|\.out)?)$"
)


def default_dir() -> Path:
    return Path(sys.prefix) / "share" / "edgesft" / "llama.cpp"


def converter_dir() -> Path:
    """The installed converter folder, checked against the llama-cpp-python it must match."""
    folder = Path(os.environ.get(ENV_VAR) or default_dir())
    source = folder / SOURCE_FILE
    hint = "run `python -m edgesft.llama_convert install` (scripts/install.sh does it)"
    if not source.is_file() or not (folder / "convert_hf_to_gguf.py").is_file():
        raise EdgesftError(f"export.gguf: llama.cpp's converter is not installed in {folder}; {hint}")
    try:
        recorded = json.loads(source.read_text(encoding="utf-8"))["llama_cpp_python"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgesftError(f"{source}: unreadable ({e}); {hint}") from None
    installed = _installed_version()
    if installed is not None and recorded != installed:
        raise EdgesftError(
            f"export.gguf: the converter in {folder} comes from llama-cpp-python {recorded} but "
            f"{installed} is installed; {hint}"
        )
    return folder


def _installed_version() -> str | None:
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return None


def source_info() -> dict[str, Any] | None:
    """What SOURCE.json records about the installed converter, or None when it is not installed."""
    try:
        return json.loads((converter_dir() / SOURCE_FILE).read_text(encoding="utf-8"))
    except EdgesftError:
        return None


def vocab_file(name: str) -> Path:
    """One of llama.cpp's tokenizer test vocabularies (:data:`VOCABS`)."""
    path = converter_dir() / "models" / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        raise EdgesftError(f"{path}: not installed (known vocabularies: {', '.join(VOCABS)})")
    return path


# --------------------------------------------------------------------------------------------------------
# Installing


def install(sdist: Path | None = None, dest: Path | None = None) -> Path:
    """Extract the converter from the llama-cpp-python source release matching the installed version.

    Downloads that release with pip (the only network use; ``sdist`` skips it) and replaces ``dest`` whole.
    """
    version = _installed_version()
    if version is None:
        raise EdgesftError("llama-cpp-python is not installed; install it first (scripts/install.sh)")
    dest = dest or default_dir()
    with tempfile.TemporaryDirectory(prefix="edgesft-llama-sdist-") as tmp:
        if sdist is None:
            subprocess.run(
                [
                    sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    "--dest", tmp, f"llama-cpp-python=={version}",
                ],
                check=True,
            )  # fmt: skip
            found = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            if not found:
                raise EdgesftError(f"pip download gave no llama-cpp-python {version} source release")
            sdist = found[0]
        staged = Path(tmp) / "staged"
        files = _extract(sdist, staged)
        if not (staged / "convert_hf_to_gguf.py").is_file():
            raise EdgesftError(f"{sdist}: no vendor/llama.cpp/convert_hf_to_gguf.py inside")
        atomic_write_json(
            staged / SOURCE_FILE,
            {
                "llama_cpp_python": version,
                "sdist": sdist.name,
                "sdist_sha256": sha256_file(sdist),
                "files": len(files),
            },
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        shutil.move(str(staged), dest)
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _extract(sdist: Path, dest: Path) -> list[str]:
    """The converter's files from the release's ``vendor/llama.cpp``; member names are checked, so a
    hostile archive cannot write outside ``dest``."""
    names = []
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) != 2 or not parts[1].startswith("vendor/llama.cpp/") or not member.isfile():
                continue
            rel = parts[1][len("vendor/llama.cpp/") :]
            if ".." in rel.split("/") or rel.startswith("/") or not _KEEP.match(rel):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            if src is None:
                continue
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            names.append(rel)
    return names


# --------------------------------------------------------------------------------------------------------
# What it converts


@cache
def _text_model_map(folder: Path) -> dict[str, str]:
    """The converter's own registry: Hugging Face architecture class -> its conversion module.

    Read from ``conversion/__init__.py`` as data (``ast.literal_eval`` of the ``TEXT_MODEL_MAP`` literal), so
    that asking what is supported imports neither torch nor the converter."""
    tree = ast.parse((folder / "conversion" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
    raise EdgesftError(f"{folder / 'conversion' / '__init__.py'}: no TEXT_MODEL_MAP in the converter")


def converts(architectures: list[str]) -> bool:
    """Whether the installed converter has a text-model class for one of a config's ``architectures``."""
    table = _text_model_map(converter_dir())
    return any(a in table for a in architectures)


# Per-layer attention patterns llama.cpp derives from a period instead of reading from the file (Gemma 2: every
# 2nd layer global, Gemma 3: every 6th, SmolLM3: every 4th layer without RoPE). The converter writes only the
# period, so a model whose layers follow another pattern (as depth pruning can leave) would convert silently
# wrong: measured on a tiny Gemma 3 with one layer's type changed, top-1 agreement with transformers 0.81.
# model_type -> (per-layer list, config key of its period, period llama.cpp assumes, the every-nth value, other)
_PERIODIC_LAYERS = {
    "gemma2": ("layer_types", None, 2, "full_attention", "sliding_attention"),
    "gemma3_text": ("layer_types", None, 6, "full_attention", "sliding_attention"),
    "smollm3": ("no_rope_layers", "no_rope_layer_interval", 4, 0, 1),
}


def _check_convertible(config: dict[str, Any], where: Path) -> None:
    """Refusals for configs the converter would write wrong without an error (each one measured)."""
    mtype = config.get("model_type")
    if mtype in _PERIODIC_LAYERS:
        key, period_key, default_period, every_nth, other = _PERIODIC_LAYERS[mtype]
        period = int((config.get(period_key) if period_key else None) or default_period)
        values = config.get(key)
        if isinstance(values, list):
            expected = [every_nth if (i + 1) % period == 0 else other for i in range(len(values))]
            if values != expected:
                raise EdgesftError(
                    f"export.gguf: {where / 'config.json'}: {key} {values} is not the every-{period}th-layer "
                    f"pattern, the only one llama.cpp reads for {mtype} (a depth-pruned model can lose it)"
                )
    if mtype in ("gemma2", "gemma3_text"):
        # llama.cpp scales attention by 1/sqrt(head_dim) and ignores query_pre_attn_scalar (measured: a tiny
        # Gemma 3 with the default 256 and head_dim 32 gave top-1 0.25 against transformers)
        head_dim = config.get("head_dim")
        scalar = config.get("query_pre_attn_scalar")
        if head_dim is not None and scalar is not None and int(scalar) != int(head_dim):
            raise EdgesftError(
                f"export.gguf: {where / 'config.json'}: query_pre_attn_scalar {scalar} differs from head_dim "
                f"{head_dim}; llama.cpp scales attention by head_dim only"
            )


def gguf_model_name(name: str, model_dir: Path) -> str:
    """``general.name`` for the file. llama.cpp gives every special token right-stripping when the name
    contains "phi3" or "phi-3" (Phi-3's tokenizer strips them); so the name says phi3 exactly when the
    tokenizer does strip its special tokens, whatever the recipe or folder is called."""
    plain = re.sub(r"phi-?3", "", name, flags=re.IGNORECASE).strip(" -_") or "model"
    try:
        added = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
    except (OSError, ValueError):
        added = []
    strips = any(t.get("special") and t.get("rstrip") for t in added if isinstance(t, dict))
    return f"{plain}-phi3" if strips else plain


def convert(
    model_dir: Path, dest: Path, float_type: str = "f16", name: str = "model", timeout: float = 1800
) -> None:
    """Convert a Hugging Face folder (safetensors) to a float GGUF at ``dest``, atomically."""
    folder = converter_dir()
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EdgesftError(f"{model_dir / 'config.json'}: cannot read the model config ({e})") from None
    archs = config.get("architectures") or []
    if not converts(archs):
        raise EdgesftError(
            f"export.gguf: llama.cpp's converter (llama-cpp-python {source_info()['llama_cpp_python']}) has no "
            f"class for {', '.join(archs) or 'a config without architectures'}"
        )
    _check_convertible(config, model_dir)
    # offline: the converter may look up a tokenizer, and must find the local one or fail; and with its own
    # gguf-py (NO_LOCAL_GGUF unset), not the PyPI release edgesft imports
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    with atomic_file(dest) as tmp:
        # absolute: the converter runs in its own folder, where the caller's relative paths mean nothing
        cmd = [
            sys.executable, str(folder / "convert_hf_to_gguf.py"), str(model_dir.resolve()),
            "--outfile", str(tmp.resolve()), "--outtype", float_type,
            "--model-name", gguf_model_name(name, model_dir),
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=folder)
        except subprocess.TimeoutExpired:
            raise EdgesftError(f"export.gguf: llama.cpp's converter timed out after {timeout:.0f}s") from None
        if proc.returncode != 0 or not tmp.is_file():
            raise EdgesftError(f"export.gguf: llama.cpp's converter failed: {_last_error(proc.stderr)}")


def _last_error(stderr: str) -> str:
    lines = [
        ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("INFO:", "Writing"))
    ]
    for ln in reversed(lines):
        if re.match(r"^(\w+(Error|Exception)|ERROR:|NotImplementedError)", ln):
            return ln[:400]
    return lines[-1][:400] if lines else "no message"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgesft.llama_convert", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install", help="install the converter matching the installed llama-cpp-python")
    p.add_argument("--sdist", type=Path, help="a llama-cpp-python source release already downloaded")
    p.add_argument("--dest", type=Path, help=f"where to install (default {default_dir()})")
    sub.add_parser("where", help="print the installed converter's folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(f"llama.cpp converter installed in {install(args.sdist, args.dest)}")
        else:
            print(converter_dir())
    except (EdgesftError, subprocess.CalledProcessError, OSError, tarfile.TarError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
