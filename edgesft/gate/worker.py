"""Timing workers: child processes that hold one artifact (or the reference workload) open and time it on
request, so that a native crash or hang is one line, not a dead check.

The reference workload (:func:`reference_workload`) is a matrix-vector product over a fixed fp32 matrix of
about as many bytes as the artifact's file, repeated until about 1 GiB has been streamed, with the same
thread count as the artifact. LLM decode on a CPU is a chain of matrix-vector products that streams every
weight once per token; a ``torch.mv`` over the same number of bytes streams them from the same level of the
memory hierarchy, so what slows it for one slows it for the other, and the ratio is steadier than either
time. The size matters: a small artifact decodes from the caches, a large one from DRAM, and a yardstick
should stream from the same level. One fixed 64 MiB matrix (what baselines of schema 1 were normalized by)
did not follow a 5 MiB artifact from one 2-core Xeon VM to another with another cache (105 MiB here):
that artifact's normalized time went from a median of ~0.10 to ~0.14, failing `edgesft check` on an
unchanged model (bench/results/README.md). The matrix is sized from the baseline's artifact, never the
current one, so an artifact that grew cannot grow its own yardstick. torch rather than numpy:
``torch.set_num_threads`` fixes the thread count in-process, and OpenBLAS's threaded gemv was erratic on a
loaded 2-core runner. It does not follow everything: a runner with a different balance of compute and
bandwidth shifts the ratio, so a baseline compares best on the machine type it was saved on (the check
says when the CPU type or cache differs).

Run a worker by hand with ``python -m edgesft.gate worker '{"kind": "reference", "threads": 2, "n": 1024,
"repeats": 256}'`` (JSON lines on stdin and stdout).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from edgesft.isolate import IsolatedFailure, _tail
from edgesft.runtimes.timing import WARMUP

REFERENCE_STREAM_BYTES = 1 << 30
"""Bytes of matrix each timed reference sample streams (about one decode round's worth on a small model)."""
LEGACY_REFERENCE_N = 4096
LEGACY_REFERENCE_REPEATS = 16


def _workload(n: int, repeats: int) -> dict[str, Any]:
    mib = 4 * n * n / 2**20
    return {
        "name": f"torch-mv-fp32-{n}x{n}-x{repeats}",
        "n": n,
        "repeats": repeats,
        "warm": True,
        "description": (
            f"torch.mv of a fixed {n}x{n} fp32 matrix ({mib:.3g} MiB) by a vector, {repeats} times, seconds per "
            "product, same threads as the artifact: streams as many bytes as the artifact's decode step"
        ),
    }


def reference_workload(artifact_bytes: float) -> dict[str, Any]:
    """The reference workload for an artifact of ``artifact_bytes`` on disk: an ``n x n`` fp32 matrix of
    about that size (``n`` a multiple of 64, 256 to 16384), ``repeats`` products per sample (about
    :data:`REFERENCE_STREAM_BYTES` streamed, at least 4)."""
    side = math.sqrt(max(float(artifact_bytes), 1.0) / 4)
    n = int(min(16384, max(256, round(side / 64) * 64)))
    repeats = max(4, math.ceil(REFERENCE_STREAM_BYTES / (4 * n * n)))
    return _workload(n, repeats)


LEGACY_REFERENCE = {**_workload(LEGACY_REFERENCE_N, LEGACY_REFERENCE_REPEATS), "warm": False}
"""The one fixed workload schema-1 baselines were normalized by (checked with it, and a note)."""
DEFAULT_TIMEOUT_S = 600.0


# --------------------------------------------------------------------------------------------------------
# Child side


WARM_STEPS = 8
"""Untimed decode steps before each timed run (one untimed product before each reference sample)."""


class _DecodeTimer:
    """One open artifact; each call is one timed run of :mod:`edgesft.runtimes.timing` at depth 0, seconds
    per decoded token.

    Each timed run comes right after a short untimed one (``warm``): two workers take turns on the same
    cores, and without it a run that follows the other worker starts with the other's working set in the
    caches while one that follows itself does not. Alternating A B, B A rounds then split into two
    populations (normalized times 0.073-0.092 against 0.102-0.126 in one saved baseline), and a median of
    12 such rounds lands anywhere between them."""

    def __init__(self, path: str, threads: int, warm: bool = True):
        from edgesft.runtimes.timing import filler_ids, open_for_timing

        self.art = open_for_timing(Path(path), threads)
        self.ids = filler_ids(self.art, 0)
        self.warm = warm

    def time(self, tokens: int) -> float:
        from edgesft.runtimes.timing import timed_run

        if self.warm:
            timed_run(self.art, self.ids, min(tokens, WARM_STEPS))
        return timed_run(self.art, self.ids, tokens).seconds_per_token

    def close(self) -> None:
        self.art.close()


class _ReferenceTimer:
    """The reference workload (module docstring); each call gives seconds per matrix-vector product."""

    def __init__(self, threads: int, n: int, repeats: int, warm: bool = True):
        import torch

        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(0)
        self.matrix = torch.randn(n, n, generator=gen)
        self.vector = torch.randn(n, generator=gen)
        self.out = torch.empty(n)
        self.repeats = repeats
        self.warm = warm

    def time(self, tokens: int) -> float:
        import torch

        if self.warm:  # see _DecodeTimer
            torch.mv(self.matrix, self.vector, out=self.out)
        t0 = time.perf_counter()
        for _ in range(self.repeats):
            torch.mv(self.matrix, self.vector, out=self.out)
        return (time.perf_counter() - t0) / self.repeats

    def close(self) -> None:
        pass


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:500]


def serve(spec: dict[str, Any]) -> int:
    """Worker main loop: open, answer {"op": "time", "tokens": N} requests, stop at {"op": "close"} or EOF."""
    # The protocol owns the real stdout; native libraries that print go to stderr instead.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(msg: dict[str, Any]) -> None:
        proto.write(json.dumps(msg) + "\n")

    t0 = time.perf_counter()
    timer: _DecodeTimer | _ReferenceTimer
    try:
        if spec["kind"] == "reference":
            timer = _ReferenceTimer(
                int(spec["threads"]), int(spec["n"]), int(spec["repeats"]), bool(spec.get("warm", True))
            )
        else:
            timer = _DecodeTimer(str(spec["path"]), int(spec["threads"]), bool(spec.get("warm", True)))
    except Exception as e:  # reported to the parent as an open failure
        send({"ok": False, "error": f"cannot open it: {_one_line(e)}"})
        return 1
    send({"ok": True, "load_s": time.perf_counter() - t0})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") != "time":
            break
        try:
            send({"ok": True, "seconds": timer.time(int(request["tokens"]))})
        except Exception as e:  # the parent stops using this worker
            send({"ok": False, "error": _one_line(e)})
    timer.close()
    proto.close()
    return 0


# --------------------------------------------------------------------------------------------------------
# Parent side


class TimingFailure(IsolatedFailure):
    """A timing worker crashed, hung or failed; ``role`` says whose it was ("current", "baseline",
    "reference", or "artifact" where the caller did not say), so that a check can tell a regression of the
    artifact under test from a failure of what it is compared with."""

    def __init__(self, message: str, kind: str, role: str):
        super().__init__(message, kind)
        self.role = role


class TimingWorker:
    """A persistent child process that holds one artifact (or the reference workload) open and times it on
    request. A crash, hang (``timeout_s`` per request) or error raises :class:`TimingFailure` naming
    ``label`` and carrying ``role``; the child is then gone."""

    def __init__(
        self, spec: dict[str, Any], label: str, timeout_s: float = DEFAULT_TIMEOUT_S, role: str = "artifact"
    ):
        self.label = label
        self.timeout_s = timeout_s
        self.role = role
        self.threads = int(spec["threads"])
        self.workload: dict[str, Any] | None = None
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        # the child imports this package from where the parent did, whatever its working directory
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        env = {
            **os.environ,
            "PYTHONPATH": path,
            "OMP_NUM_THREADS": str(self.threads),
            # OpenMP threads spin for a while after each parallel region by default; two workers take turns,
            # so the idle one would keep a core busy while the other is timed, and on a 2-core runner the
            # timed one would lose a core to its own neighbour. Passive waiting makes the idle worker sleep.
            "OMP_WAIT_POLICY": "PASSIVE",
            "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error",
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edgesft.gate", "worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        try:
            self.load_s = float(self._receive()["load_s"])
        except BaseException:
            self.close()
            raise

    @classmethod
    def artifact(
        cls,
        path: Path,
        threads: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        role: str = "artifact",
        warm: bool = True,
    ) -> TimingWorker:
        """A worker of the artifact at ``path``; ``warm=False`` drops the untimed run before each timed one
        (:class:`_DecodeTimer`; only bench/gate_reference.py does, to measure what it is for)."""
        spec = {"kind": "artifact", "path": str(path), "threads": threads, "warm": warm}
        return cls(spec, str(path), timeout_s, role)

    @classmethod
    def reference(
        cls, threads: int, workload: dict[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S, warm: bool = True
    ) -> TimingWorker:
        """A worker of ``workload`` (:func:`reference_workload`)."""
        spec = {
            "kind": "reference",
            "threads": threads,
            "n": workload["n"],
            "repeats": workload["repeats"],
            "warm": warm,
        }
        worker = cls(spec, "reference workload", timeout_s, "reference")
        worker.workload = workload
        return worker

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _receive(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=self.timeout_s)
        except queue.Empty:
            self._kill()
            raise TimingFailure(
                f"{self.label}: timing worker timed out after {self.timeout_s:.0f}s", "timeout", self.role
            ) from None
        if line is None:
            raise self._death()
        msg: dict[str, Any] = json.loads(line)
        if not msg.get("ok"):
            self._kill()
            raise TimingFailure(f"{self.label}: {msg.get('error')}", "error", self.role)
        return msg

    def _death(self) -> TimingFailure:
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self._proc.returncode
        self._stderr.seek(0)
        tail = _tail(self._stderr.read().decode("utf-8", "replace"))
        if code is not None and code < 0:
            try:
                how = f"crashed ({signal.Signals(-code).name})"
            except ValueError:
                how = f"crashed (signal {-code})"
        else:
            how = f"exited with code {code}"
        return TimingFailure(
            f"{self.label}: timing worker {how}{': ' + tail if tail else ''}", "crash", self.role
        )

    def time(self, tokens: int) -> float:
        """One timed run: seconds per decoded token (artifact) or per product (reference)."""
        if self._proc.poll() is not None:
            raise self._death()
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write((json.dumps({"op": "time", "tokens": tokens}) + "\n").encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._death() from None
        return float(self._receive()["seconds"])

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        """Ask the worker to stop; kill it if it does not within 10 s. The pipes and the stderr file are
        closed whether or not the child is still alive."""
        stdin = self._proc.stdin
        if stdin is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(OSError):
                    stdin.write(b'{"op": "close"}\n')
                    stdin.flush()
            # a dead child leaves bytes on a broken pipe: close() raises, but the handle is closed anyway
            with contextlib.suppress(OSError):
                stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
        self._reader.join(timeout=10)  # the pipe is at EOF once the child is gone
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> TimingWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def open_workers(*workers: Callable[[], TimingWorker]) -> Iterator[list[TimingWorker]]:
    """Open several workers; all are closed on the way out, also when one fails to open."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(make()) for make in workers]


# --------------------------------------------------------------------------------------------------------
# Rounds


def interleave(
    a: TimingWorker, b: TimingWorker, rounds: int, tokens: int, warmup: int = WARMUP
) -> tuple[list[float], list[float]]:
    """Warm-up runs of each, then ``rounds`` rounds in A B, B A, A B ... order; one time per worker per round."""
    for _ in range(warmup):
        a.time(tokens)
        b.time(tokens)
    times_a: list[float] = []
    times_b: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            times_a.append(a.time(tokens))
            times_b.append(b.time(tokens))
        else:
            times_b.append(b.time(tokens))
            times_a.append(a.time(tokens))
    return times_a, times_b


def normalized_rounds(
    artifact: TimingWorker, reference: TimingWorker, rounds: int, tokens: int
) -> tuple[list[float], list[float]]:
    """(artifact / reference time per round, artifact seconds per token per round)."""
    art, ref = interleave(artifact, reference, rounds, tokens)
    return [a / r for a, r in zip(art, ref, strict=True)], art


def against_reference(
    path: Path,
    workload: dict[str, Any],
    threads: int,
    rounds: int,
    tokens: int,
    timeout_s: float,
    role: str = "artifact",
) -> tuple[list[float], list[float]]:
    """:func:`normalized_rounds` of the artifact at ``path`` against ``workload`` (:func:`reference_workload`,
    its ``warm`` key saying whether each timed run is warmed; schema-1 baselines were not), each in a worker of
    its own with ``threads``."""
    warm = bool(workload.get("warm", True))
    with open_workers(
        lambda: TimingWorker.reference(threads, workload, timeout_s, warm=warm),
        lambda: TimingWorker.artifact(path, threads, timeout_s, role=role, warm=warm),
    ) as (ref, art):
        return normalized_rounds(art, ref, rounds, tokens)


def tok_s(seconds_per_token: Sequence[float]) -> float:
    """Decode tokens per second of the median round."""
    return 1.0 / statistics.median(seconds_per_token)
