"""Run a function in a child Python process, so that a native crash or hang is an error, not a dead pipeline.

Native runtimes (llama.cpp, onnxruntime, onnxruntime-genai) can crash on a given CPU: llama.cpp's native
build segfaults on some machines on any multi-token batch. ``call("pkg.mod:func", kwargs)`` runs the
function in ``python -m edgesft.isolate`` with JSON arguments and returns its JSON result; a signal, a
timeout or an exception in the child raises :class:`IsolatedFailure` with a one-line reason.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from edgesft.errors import EdgesftError


class IsolatedFailure(EdgesftError):
    """The child process crashed, timed out, or raised."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # "crash" | "timeout" | "error"

    @property
    def transient(self) -> bool:
        """A crash or a hang may not happen again (a stage ending with one is retried on the next run); an
        error raised by the code is its verdict on the input, and would."""
        return self.kind in ("crash", "timeout")


def transient(error: BaseException) -> bool:
    """Whether ``error`` is a :attr:`IsolatedFailure.transient` failure."""
    return isinstance(error, IsolatedFailure) and error.transient


def call(
    target: str, kwargs: dict[str, Any], timeout: float = 900.0, env: dict[str, str] | None = None
) -> Any:
    """``module:function(**kwargs)`` in a child process; its return value (JSON-able)."""
    with tempfile.TemporaryDirectory(prefix="edgesft-isolate-") as tmp:
        args_path, result_path = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_path.write_text(json.dumps(kwargs))
        cmd = [sys.executable, "-m", "edgesft.isolate", target, str(args_path), str(result_path)]
        child_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env)
        except subprocess.TimeoutExpired:
            raise IsolatedFailure(f"{target}: timed out after {timeout:.0f}s", "timeout") from None
        if proc.returncode < 0:
            try:
                name = signal.Signals(-proc.returncode).name
            except ValueError:
                name = f"signal {-proc.returncode}"
            tail = _tail(proc.stderr)
            raise IsolatedFailure(f"{target}: crashed ({name}){': ' + tail if tail else ''}", "crash")
        result = None
        if result_path.is_file():
            result = json.loads(result_path.read_text())
        if not result:
            raise IsolatedFailure(
                f"{target}: exited with code {proc.returncode} without a result: {_tail(proc.stderr)}",
                "crash",
            )
        if not result.get("ok"):
            raise IsolatedFailure(str(result.get("error")), "error")
        return result.get("value")


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _main(argv: list[str]) -> int:
    target, args_path, result_path = argv
    module_name, func_name = target.split(":")
    kwargs = json.loads(Path(args_path).read_text())
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        out: dict[str, Any] = {"ok": True, "value": func(**kwargs)}
    except EdgesftError as e:
        out = {"ok": False, "error": str(e)}
    except Exception as e:  # reported to the parent as this call's failure, with where it happened
        frame = traceback.extract_tb(e.__traceback__)[-1]
        out = {"ok": False, "error": f"{type(e).__name__}: {e} ({Path(frame.filename).name}:{frame.lineno})"}
    Path(result_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
