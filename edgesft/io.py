"""Atomic file and folder writes, hashing and JSON helpers shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes.

    Remembered for the process by (path, size, mtime): a run hashes the same base model for its cache key
    and again when its stage resolves it, and large models take seconds to hash. A rewritten file has a new
    size or mtime and is hashed again.
    """
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key in _HASHES:
        return _HASHES[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def sha256_json(obj: Any) -> str:
    """Hex sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Hard-link ``src`` to ``dst`` (no copy of large weights; stage outputs are never modified in place),
    copying where links are not possible (another filesystem)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_tree(src: Path, dst: Path) -> None:
    """:func:`link_or_copy` for a whole folder; ``dst`` must not exist yet."""
    shutil.copytree(src, dst, copy_function=link_or_copy)


def path_size(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def read_json(path: Path) -> Any | None:
    """Parsed JSON, or None when the file is missing or not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside ``dest`` for a writer that takes a file name (a native library, a file
    format writer); on success it replaces ``dest`` in one rename, on failure it is removed."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)


def save_npy(path: Path, array: Any) -> None:
    """``np.save`` through a temp file and a rename: a kill or a full disk never leaves a torn ``.npy``."""
    import numpy as np

    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def load_npy(path: Path) -> Any | None:
    """The array in ``path``; None when it is missing or unreadable (torn, empty, junk), so a reused file
    that does not check out is recomputed, never an error."""
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``dest``; on success it replaces ``dest`` in one rename.

    A crash leaves only a ``.tmp`` folder that is never read, so a half-written artifact is never trusted.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale_temps(folder: Path, stages: list[str]) -> None:
    """Remove leftovers of killed stage writes in a run folder: ``.<stage>.<key16>.tmp`` and
    ``.<stage>.old-<pid>`` entries of these stages.

    Only names the pipeline itself makes are touched, so a file of the user's that merely looks temporary
    (``.notes.tmp``) stays.
    """
    if not folder.is_dir():
        return
    own = re.compile(rf"^\.(?:{'|'.join(map(re.escape, stages))})\.(?:[0-9a-f]{{16}}\.tmp|old-\d+)$")
    for p in folder.iterdir():
        if own.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


def check_gguf(path: Path, where: str) -> None:
    """Refuse a file that is not a complete GGUF (wrong magic, empty, truncated tensor data) before a
    converter or a native runtime reads it; ``where`` names the setting or command for the error.

    Raises:
        EdgesftError: one line naming the file and what is wrong.
    """
    from edgesft.errors import EdgesftError

    try:
        size = path.stat().st_size
    except OSError as e:
        raise EdgesftError(f"{where}: {path}: cannot read ({e.strerror})") from None
    if size == 0:
        raise EdgesftError(f"{where}: {path}: empty file, not a GGUF model")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise EdgesftError(f"{where}: {path}: not a GGUF file (no GGUF magic at the start)")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        # Every tensor's data must lie inside the file: a truncated download or copy ends early.
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # the reader's errors for malformed headers (ValueError, struct/reshape errors)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgesftError(f"{where}: {path}: damaged or truncated GGUF ({reason[:200]})") from None
    if end > size or not reader.tensors:
        raise EdgesftError(
            f"{where}: {path}: truncated GGUF ({size} bytes, its tensors need {end})"
            if reader.tensors
            else f"{where}: {path}: GGUF file without tensors"
        )


def check_safetensors(path: Path, where: str) -> None:
    """Refuse a ``.safetensors`` file whose header is unreadable or whose tensors run past its end
    (safetensors' own header validation, without reading the weights)."""
    from safetensors import safe_open

    from edgesft.errors import EdgesftError

    try:
        with safe_open(str(path), framework="np") as f:
            f.keys()
    except Exception as e:  # SafetensorError, OSError: a truncated, empty or junk file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgesftError(
            f"{where}: {path}: damaged or truncated safetensors file ({reason[:200]})"
        ) from None


def check_model_folder(folder: Path, where: str) -> None:
    """:func:`check_safetensors` on every weight file of a Hugging Face model folder."""
    for f in sorted(Path(folder).glob("*.safetensors")):
        check_safetensors(f, where)
