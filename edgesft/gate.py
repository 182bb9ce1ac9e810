"""`edgesft check`: the CI regression gate, and the baselines it compares against.

Deterministic figures (file size, parameter count, fallback tensors, verification, quality) come from the
run's ``bench/bench.json`` and are compared exactly or within the recipe's tolerances (``bench.check``).

Decode latency must survive shared, noisy runners, so it is never compared as two absolute numbers:

- Two artifacts at hand (two run folders, or two artifact files): each opens once in its own persistent
  timing worker (a child process, so a native crash or hang is one line: a failing row when it is the
  current artifact's, an error when it is the baseline's or the reference workload's), then after a
  warm-up they are timed in interleaved rounds in A B, B A, A B ... order, so a neighbour's load or a clock
  change hits both alike and order effects cancel. The gate is the median of the per-round time ratios
  with a bootstrap 95% interval (:func:`edgesft.stats.latency_gate`): it fails only when the whole interval
  lies above ``1 + allowed_slowdown``.
- Only a stored baseline file: the current artifact is interleaved with a fixed reference workload instead,
  and each round gives a normalized time, artifact / reference. The baseline file holds its own normalized
  rounds, measured the same way when it was saved; the gate is the ratio of the two medians with a
  two-sample bootstrap interval (:func:`edgesft.stats.two_sample_gate`).

The reference workload is a matrix-vector product over a fixed 64 MiB fp32 matrix (4096 x 4096), repeated
16 times with the same thread count as the artifact. LLM decode on a CPU is a chain of matrix-vector
products that streams every weight once per token, so its speed follows memory bandwidth; a 64 MiB
``torch.mv`` does the same (2 flops per 4 bytes read, from a matrix larger than a CI runner's last-level
cache: 32 MiB on the 2-core runner this was built on), so what slows memory for one slows it for the other,
and the ratio is steadier than either time. torch rather than numpy: ``torch.set_num_threads`` fixes the
thread count in-process, and OpenBLAS's threaded gemv was erratic on a loaded 2-core runner. It does not
follow everything: a runner with a different balance of compute and bandwidth shifts the ratio, so a
baseline compares best on the machine type it was saved on (the check says when the CPU model differs).

``bench/gate_calibration.py`` measures both gates' false-alarm rate (identical artifacts) and power (a
slower one) on a machine.

Run the timing worker by hand with ``python -m edgesft.gate worker '{"kind": "reference", "threads": 2}'``
(JSON lines on stdin and stdout).
"""

from __future__ import annotations

import contextlib
import json
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from edgesft import __version__
from edgesft.config import CheckConfig
from edgesft.errors import EdgesftError
from edgesft.io import atomic_write_json, read_json
from edgesft.isolate import IsolatedFailure, _tail
from edgesft.quality import POINT_METRICS
from edgesft.report import bundle_primary
from edgesft.report import primary_key as artifacts_primary
from edgesft.stats import Verdict, latency_gate, two_sample_gate

SCHEMA = "edgesft.baseline/1"
# Decode starts after this prompt (prefill untimed): "depth 0" up to a handful of tokens, in any vocabulary.
PROMPT = "The weather today is"
WARMUP = 1
REFERENCE_N = 4096
REFERENCE_REPEATS = 16
REFERENCE = {
    "name": f"torch-mv-fp32-{REFERENCE_N}x{REFERENCE_N}-x{REFERENCE_REPEATS}",
    "description": (
        f"torch.mv of a fixed {REFERENCE_N}x{REFERENCE_N} fp32 matrix (64 MiB) by a vector, "
        f"{REFERENCE_REPEATS} times, seconds per product, same threads as the artifact: memory-bandwidth-bound "
        "like LLM decode"
    ),
}
DEFAULT_TIMEOUT_S = 600.0
_SLACK = 1e-9  # float rounding at exactly the tolerance is not a regression


# --------------------------------------------------------------------------------------------------------
# The timing worker, child side


class _DecodeTimer:
    """One open artifact; each call is one greedy decode after :data:`PROMPT`, seconds per decoded token."""

    def __init__(self, path: str, threads: int):
        from edgesft.runtimes import open_artifact

        self.art = open_artifact(Path(path), threads=threads, all_logits=False)
        self.ids = self.art.tokenize(PROMPT)

    def time(self, tokens: int) -> float:
        from edgesft.runtimes.timing import timed_run

        _, seconds, steps = timed_run(self.art, self.ids, tokens)
        if steps == 0 or seconds <= 0:
            raise RuntimeError("the artifact decoded no token")
        return seconds / steps

    def close(self) -> None:
        self.art.close()


class _ReferenceTimer:
    """The reference workload (module docstring); each call gives seconds per matrix-vector product."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(0)
        self.matrix = torch.randn(REFERENCE_N, REFERENCE_N, generator=gen)
        self.vector = torch.randn(REFERENCE_N, generator=gen)
        self.out = torch.empty(REFERENCE_N)

    def time(self, tokens: int) -> float:
        import torch

        t0 = time.perf_counter()
        for _ in range(REFERENCE_REPEATS):
            torch.mv(self.matrix, self.vector, out=self.out)
        return (time.perf_counter() - t0) / REFERENCE_REPEATS

    def close(self) -> None:
        pass


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:500]


def _serve(spec: dict[str, Any]) -> int:
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
            timer = _ReferenceTimer(int(spec["threads"]))
        else:
            timer = _DecodeTimer(str(spec["path"]), int(spec["threads"]))
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
# The timing worker, parent side


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
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        threads = str(spec["threads"])
        # the child imports this package from where the parent did, whatever its working directory
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        env = {
            **os.environ,
            "PYTHONPATH": path,
            "OMP_NUM_THREADS": threads,
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
        cls, path: Path, threads: int, timeout_s: float = DEFAULT_TIMEOUT_S, role: str = "artifact"
    ) -> TimingWorker:
        return cls({"kind": "artifact", "path": str(path), "threads": threads}, str(path), timeout_s, role)

    @classmethod
    def reference(cls, threads: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> TimingWorker:
        return cls({"kind": "reference", "threads": threads}, "reference workload", timeout_s, "reference")

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


def _tok_s(seconds_per_token: Sequence[float]) -> float:
    return 1.0 / statistics.median(seconds_per_token)


# --------------------------------------------------------------------------------------------------------
# Run folders: bench.json, the primary artifact, each artifact's deterministic figures


def load_bench(run: Path, role: str) -> dict[str, Any]:
    """A run folder's ``bench/bench.json``; ``role`` (CURRENT, BASELINE, RUN) names the argument in errors."""
    bench = read_json(run / "bench" / "bench.json")
    if not isinstance(bench, dict) or not isinstance(bench.get("artifacts"), dict):
        raise EdgesftError(f"{role}: no bench stage in {run}; run the recipe with bench enabled")
    return bench


def primary_key(run: Path, bench: dict[str, Any]) -> str:
    """The run's primary artifact as a bench key, by the rule the report marks it with
    (:func:`edgesft.report.primary_key`)."""
    primary = bundle_primary(read_json(run / "export" / "manifest.json"))
    key = artifacts_primary(bench["artifacts"], primary)
    if key is None:
        raise EdgesftError(f"{run}: no artifact in bench/bench.json benchmarked ok")
    return key


def artifact_path(run: Path, bench: dict[str, Any], key: str) -> Path:
    return run / (bench["artifacts"][key].get("path") or key)


def _stage_metrics(run: Path, stage: str) -> dict[str, Any]:
    m = read_json(run / stage / "manifest.json")
    return m.get("metrics", {}) if isinstance(m, dict) else {}


def artifact_facts(run: Path, bench: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The deterministic figures of every artifact in bench.json. Parameter counts, fallback tensors and
    verification missing from bench.json come from the stage manifests (an exported artifact has its source
    stage's ``params_total``)."""
    verify = _stage_metrics(run, "verify").get("artifacts", {})
    facts: dict[str, dict[str, Any]] = {}
    for key, a in bench["artifacts"].items():
        kind = a.get("kind") or key.split("/", 1)[0]
        stage_metrics = _stage_metrics(run, kind) if kind in ("gguf", "onnx") else {}
        params = a.get("params")
        # a torch artifact is its stage's model; an exported one has its source stage's weights
        source = (
            a.get("stage") or key.split("/", 1)[-1] if kind == "torch" else stage_metrics.get("source_stage")
        )
        if params is None and source:
            params = _stage_metrics(run, source).get("params_total")
        fallbacks = a.get("fallback_tensors")
        if fallbacks is None and kind == "gguf":
            for g in stage_metrics.get("artifacts", []):
                if f"gguf/{g.get('file')}" == key and "fallbacks" in g:
                    fallbacks = len(g["fallbacks"])
        verified = a.get("verified")
        if verified is None and key in verify:
            verified = verify[key].get("status")
        quality = a.get("quality") or {}
        facts[key] = {
            "kind": kind,
            "status": a.get("status"),
            "file_bytes": a.get("file_bytes"),
            "precision": a.get("precision"),
            "fallback_tensors": fallbacks,
            "params": params,
            "verified": verified,
            "quality": {
                "val_perplexity": quality.get("val_perplexity"),
                "kl_mean": quality.get("kl_mean"),
                "test": {k: v for k, v in (quality.get("test") or {}).items() if k in POINT_METRICS},
            },
        }
    return facts


# --------------------------------------------------------------------------------------------------------
# Settings


def check_settings(
    recipe: str | Path | None = None, stored: dict[str, Any] | None = None, **flags: Any
) -> CheckConfig:
    """CheckConfig by precedence: ``flags`` (not None) > fields the recipe sets in ``bench.check`` > the
    baseline file's stored ``check`` > defaults."""
    from pydantic import ValidationError

    values = {k: v for k, v in (stored or {}).items() if k in CheckConfig.model_fields}
    if recipe is not None:
        from edgesft.config import load_recipe

        rc = load_recipe(recipe).bench.check
        values.update({k: getattr(rc, k) for k in rc.model_fields_set})
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return CheckConfig(**values)
    except ValidationError as e:
        raise EdgesftError(
            *(f"check settings: {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        ) from None


# --------------------------------------------------------------------------------------------------------
# Baselines


def save_baseline(
    run: Path,
    dest: Path,
    recipe: str | Path | None = None,
    rounds: int | None = None,
    threads: int | None = None,
    artifacts: list[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time the gated artifacts of ``run`` against the reference workload and write the baseline to ``dest``
    (atomically) with every artifact's deterministic figures; returns what was written."""
    run = Path(run)
    bench = load_bench(run, "RUN")
    cfg = check_settings(recipe, None, rounds=rounds, artifacts=artifacts)
    n_threads = _threads(threads, cfg.threads, bench.get("threads"))
    facts = artifact_facts(run, bench)
    gated = cfg.artifacts or [primary_key(run, bench)]
    for key in gated:
        if facts.get(key, {}).get("status") != "ok":
            ok = ", ".join(k for k, f in facts.items() if f["status"] == "ok")
            raise EdgesftError(f"RUN: {key} did not benchmark ok in {run} (artifacts: {ok or 'none'})")
    with TimingWorker.reference(n_threads, timeout_s) as ref:
        for key in gated:
            log(f"  timing {key} against the reference workload: {cfg.rounds} rounds, {n_threads} threads")
            with TimingWorker.artifact(artifact_path(run, bench, key), n_threads, timeout_s) as art:
                norm, secs = normalized_rounds(art, ref, cfg.rounds, cfg.decode_tokens)
            facts[key]["latency"] = {
                "normalized_rounds": [float(f"{x:.6g}") for x in norm],
                "decode_tok_s": _tok_s(secs),
                "rounds": cfg.rounds,
            }
    record = {
        "schema": SCHEMA,
        "run": run.resolve().name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "edgesft": __version__,
        "machine": bench.get("machine", {}),
        "threads": n_threads,
        "decode_tokens": cfg.decode_tokens,
        "check": cfg.model_dump(),
        "reference_workload": REFERENCE,
        "artifacts": facts,
    }
    atomic_write_json(Path(dest), record)
    return record


def load_baseline(path: Path) -> dict[str, Any]:
    """A baseline file, checked enough that a wrong or hand-edited file is one line naming it and the key."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EdgesftError(f"{path}: unreadable baseline ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise EdgesftError(f"{path}: not an edgesft baseline (schema {found!r}, expected {SCHEMA!r})")
    _check_baseline(Path(path), data)
    return data


def _check_baseline(path: Path, data: dict[str, Any]) -> None:
    """Raise one line naming ``path`` and the first key that does not hold what :func:`save_baseline` writes
    there, instead of a TypeError later."""

    def need(parent: dict[str, Any], name: str, where: str, expected: str, ok: Callable[[Any], bool]) -> Any:
        if name not in parent:
            return None
        if not ok(parent[name]):
            raise EdgesftError(f"{path}: {where}{name}: expected {expected}, got {_json_kind(parent[name])}")
        return parent[name]

    for name in ("machine", "check", "reference_workload"):
        need(data, name, "", "an object", _is_object)
    for name in ("threads", "decode_tokens"):
        need(data, name, "", "a positive integer or null", _is_count_or_null)
    if "artifacts" not in data:
        raise EdgesftError(f"{path}: artifacts: missing")
    arts = need(data, "artifacts", "", "an object", _is_object)
    for key in arts:
        where = f"artifacts.{key}."
        a = need(arts, key, "artifacts.", "an object", _is_object)
        for name in ("status", "verified"):
            need(a, name, where, "a string or null", lambda v: v is None or isinstance(v, str))
        for name in ("file_bytes", "params", "fallback_tensors"):
            need(a, name, where, "a number or null", _is_number_or_null)
        quality = need(a, "quality", where, "an object or null", _is_object_or_null) or {}
        for name in ("val_perplexity", "kl_mean"):
            need(quality, name, f"{where}quality.", "a number or null", _is_number_or_null)
        test = need(quality, "test", f"{where}quality.", "an object or null", _is_object_or_null) or {}
        for name in test:
            need(test, name, f"{where}quality.test.", "a number or null", _is_number_or_null)
        latency = need(a, "latency", where, "an object or null", _is_object_or_null)
        if latency is None:
            continue
        if "normalized_rounds" not in latency:
            raise EdgesftError(f"{path}: {where}latency.normalized_rounds: missing")
        need(
            latency,
            "normalized_rounds",
            f"{where}latency.",
            "a non-empty array of positive numbers",
            lambda v: isinstance(v, list) and bool(v) and all(_is_number(x) and x > 0 for x in v),
        )
        need(latency, "decode_tok_s", f"{where}latency.", "a positive number or null", _is_rate_or_null)
        need(latency, "rounds", f"{where}latency.", "a positive integer or null", _is_count_or_null)
    from pydantic import ValidationError

    stored = {k: v for k, v in (data.get("check") or {}).items() if k in CheckConfig.model_fields}
    try:
        CheckConfig(**stored)
    except ValidationError as e:
        err = e.errors()[0]
        raise EdgesftError(f"{path}: check.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_number_or_null(v: Any) -> bool:
    return v is None or _is_number(v)


def _is_rate_or_null(v: Any) -> bool:
    return v is None or (_is_number(v) and v > 0)


def _is_count_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)


def _is_object(v: Any) -> bool:
    return isinstance(v, dict)


def _is_object_or_null(v: Any) -> bool:
    return v is None or isinstance(v, dict)


def _json_kind(value: Any) -> str:
    """A JSON value as an error message shows it: as written when short, else what kind it is."""
    text = json.dumps(value)
    if len(text) <= 40:
        return text
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "an array"
    return text[:37] + "..."


# --------------------------------------------------------------------------------------------------------
# Comparisons


@dataclass
class Row:
    """One compared figure. ``baseline`` and ``current`` are raw values (numbers, strings or None)."""

    figure: str
    artifact: str
    baseline: Any
    current: Any
    limit: str
    ok: bool
    note: str = ""

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "FAIL"


@dataclass
class CheckResult:
    """Every compared figure of one check; ``passed`` when none regressed."""

    mode: str  # "interleaved" (both artifacts timed) | "reference" (a stored baseline)
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.rows)

    def summary(self) -> str:
        bad = [r for r in self.rows if not r.ok]
        if not bad:
            return f"check passed: {len(self.rows)} figures within limits"
        names = ", ".join(f"{r.figure} of {r.artifact}" for r in bad)
        return f"check FAILED: {len(bad)} of {len(self.rows)} figures regressed ({names})"

    def table(self) -> str:
        head = ("figure", "artifact", "baseline", "current", "limit", "verdict", "")
        cells = [head] + [
            (r.figure, r.artifact, _fmt(r.baseline), _fmt(r.current), r.limit, r.verdict, r.note)
            for r in self.rows
        ]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join([*lines, self.summary()])

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "mode": self.mode,
            "settings": self.settings,
            "rows": [{**asdict(r), "verdict": r.verdict} for r in self.rows],
            "notes": self.notes,
            "summary": self.summary(),
        }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def compare_facts(
    baseline: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]], cfg: CheckConfig
) -> list[Row]:
    """Rows for the deterministic figures of every artifact the baseline has (and a row per new one)."""
    rows: list[Row] = []
    for key in sorted(baseline):
        b = baseline[key]
        if b.get("status") != "ok":
            continue  # nothing to hold a run to
        c = current.get(key)
        if c is None or c.get("status") != "ok":
            now = "missing" if c is None else str(c.get("status"))
            rows.append(Row("artifact", key, "ok", now, "present, ok", False))
            continue
        rows += _artifact_rows(key, b, c, cfg)
    for key in sorted(set(current) - set(baseline)):
        status = current[key].get("status")
        rows.append(Row("artifact", key, None, status, "", True, "new (not in the baseline)"))
    return rows


def _artifact_rows(key: str, b: dict[str, Any], c: dict[str, Any], cfg: CheckConfig) -> list[Row]:
    bq, cq = b.get("quality") or {}, c.get("quality") or {}
    bt, ct = bq.get("test") or {}, cq.get("test") or {}
    # (figure, baseline, current, how a change is judged, tolerance)
    figures: list[tuple[str, Any, Any, str, float]] = [
        ("file bytes", b.get("file_bytes"), c.get("file_bytes"), "relative rise", cfg.size_tolerance),
        ("params", b.get("params"), c.get("params"), "equal", 0.0),
        ("fallback tensors", b.get("fallback_tensors"), c.get("fallback_tensors"), "no rise", 0.0),
        *(
            (f"test {m}", bt.get(m), ct.get(m), "drop in points", cfg.quality_tolerance)
            for m in POINT_METRICS
        ),
        ("kl_mean", bq.get("kl_mean"), cq.get("kl_mean"), "rise", cfg.kl_tolerance),
        (
            "val_perplexity",
            bq.get("val_perplexity"),
            cq.get("val_perplexity"),
            "relative rise",
            cfg.perplexity_tolerance,
        ),
    ]
    # a figure the baseline holds is held to, also when the current run lost it (a failed evaluation)
    rows = [
        Row(figure, key, was, now, *_judge(how, tol, was, now))
        for figure, was, now, how, tol in figures
        if was is not None
    ]
    if b.get("verified") == "passed":
        now = c.get("verified")
        rows.append(
            Row("verification", key, "passed", now, "passed", now == "passed", "" if now else "missing")
        )
    return rows


def _judge(how: str, tol: float, was: float, now: float | None) -> tuple[str, bool, str]:
    """(limit text, within it, change text) for one figure; a missing current figure fails."""
    limits = {
        "equal": "equal",
        "no rise": "no rise",
        "relative rise": f"+{tol:.1%}",
        "drop in points": f"-{tol:g} pts",
    }
    limit = limits.get(how, f"+{tol:g}")
    if now is None:
        return limit, False, "missing"
    if how == "equal":
        return limit, now == was, ""
    if how == "no rise":
        return limit, now <= was, ""
    if how == "relative rise":
        rise = now / was - 1.0 if was else 0.0
        return limit, rise <= tol + _SLACK, f"{rise:+.2%}"
    if how == "drop in points":
        change = 100.0 * (now - was)
        return limit, -change <= tol + _SLACK, f"{change:+.1f} pts"
    return limit, now - was <= tol + _SLACK, f"{now - was:+.4g}" if now != was else ""


def _latency_row(key: str, verdict: Verdict, base_tok_s: float | None, cur_tok_s: float, how: str) -> Row:
    """Baseline and current decode tok/s for reading; the verdict comes from the time-ratio interval."""
    note = f"{how} {verdict.line().rsplit(':', 1)[0]}"
    limit = f"+{verdict.allowed_slowdown:.0%}"
    return Row("decode tok/s", key, base_tok_s, cur_tok_s, limit, not verdict.regression, note)


def _untimed_row(key: str, base_tok_s: float | None, why: str, cfg: CheckConfig) -> Row:
    """A gated artifact of the current run that could not be timed: its decode time regressed."""
    return Row("decode tok/s", key, base_tok_s, None, f"+{cfg.allowed_slowdown:.0%}", False, why)


def _not_benchmarked(status: Any) -> str:
    return f"not timed: {'not in bench.json' if status is None else f'benchmark {status}'}"


# --------------------------------------------------------------------------------------------------------
# The check


def _kind_of(path: Path, role: str) -> str:
    """ "run" for a run folder with a bench stage, "artifact" for an artifact; else a one-line error."""
    from edgesft.runtimes import artifact_kind

    if not path.exists():
        raise EdgesftError(f"{role}: {path}: no such file or folder")
    if (path / "bench" / "bench.json").is_file():
        return "run"
    try:
        artifact_kind(path)
        return "artifact"
    except EdgesftError:
        load_bench(path, role)  # raises the "no bench stage" line
        raise


def check(
    current: Path,
    baseline: Path,
    recipe: str | Path | None = None,
    allowed_slowdown: float | None = None,
    rounds: int | None = None,
    threads: int | None = None,
    artifacts: list[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    log: Callable[[str], None] = lambda _msg: None,
) -> CheckResult:
    """Compare ``current`` (a run folder, or an artifact) with ``baseline`` (a baseline .json file, a run
    folder, or an artifact). Settings: the arguments > ``recipe``'s bench.check > the baseline file's > defaults.
    """
    current, baseline = Path(current), Path(baseline)
    if baseline.suffix == ".json" and not baseline.is_dir():
        return _check_stored(
            current, baseline, recipe, allowed_slowdown, rounds, threads, artifacts, timeout_s, log
        )
    if not baseline.exists():
        raise EdgesftError(f"BASELINE: {baseline}: no such baseline file or run folder")
    kinds = (_kind_of(current, "CURRENT"), _kind_of(baseline, "BASELINE"))
    if kinds[0] != kinds[1]:
        raise EdgesftError(
            f"CURRENT is {'a run folder' if kinds[0] == 'run' else 'an artifact'} but BASELINE is not: "
            "give two run folders, two artifacts, or a baseline .json file"
        )
    cfg = check_settings(recipe, None, allowed_slowdown=allowed_slowdown, rounds=rounds, artifacts=artifacts)
    if kinds[0] == "artifact":
        n_threads = _threads(threads, cfg.threads)
        result = CheckResult("interleaved", _settings(cfg, n_threads))
        pairs = [(current.name, current, baseline)]
    else:
        cur_bench, base_bench = load_bench(current, "CURRENT"), load_bench(baseline, "BASELINE")
        n_threads = _threads(threads, cfg.threads, cur_bench.get("threads"))
        result = CheckResult("interleaved", _settings(cfg, n_threads))
        cur_facts = artifact_facts(current, cur_bench)
        base_facts = artifact_facts(baseline, base_bench)
        result.rows += compare_facts(base_facts, cur_facts, cfg)
        pairs = []
        for key in cfg.artifacts or [primary_key(current, cur_bench)]:
            if key not in cur_facts and key not in base_facts:
                known = ", ".join(sorted(cur_facts)) or "none"
                raise EdgesftError(f"artifact {key}: in neither run's bench.json (CURRENT has: {known})")
            status = cur_facts.get(key, {}).get("status")
            if status != "ok":  # also when the baseline run failed it too: nothing gated passes untimed
                result.rows.append(_untimed_row(key, None, _not_benchmarked(status), cfg))
                continue
            if base_facts.get(key, {}).get("status") != "ok":
                result.notes.append(
                    f"{key}: did not benchmark ok in the baseline run; decode time not compared"
                )
                continue
            pairs.append(
                (key, artifact_path(current, cur_bench, key), artifact_path(baseline, base_bench, key))
            )
    for key, cur_path, base_path in pairs:
        log(f"  timing {key}: {cfg.rounds} interleaved rounds, {n_threads} threads")
        try:
            with (
                TimingWorker.artifact(cur_path, n_threads, timeout_s, role="current") as cur_w,
                TimingWorker.artifact(base_path, n_threads, timeout_s, role="baseline") as base_w,
            ):
                cur_s, base_s = interleave(cur_w, base_w, cfg.rounds, cfg.decode_tokens)
        except TimingFailure as e:
            if e.role != "current":
                raise  # the baseline artifact failed: nothing to compare with, an error
            result.rows.append(_untimed_row(key, None, f"timing failed: {e}", cfg))
            continue
        verdict = latency_gate(cur_s, base_s, cfg.allowed_slowdown)
        result.rows.append(_latency_row(key, verdict, _tok_s(base_s), _tok_s(cur_s), "interleaved:"))
    return result


def _threads(*choices: int | None) -> int:
    """The first thread count given (flag, baseline, bench run), else the physical cores, as bench uses."""
    for n in choices:
        if n:
            return int(n)
    from edgesft.benchmark import default_threads

    return default_threads()


def _settings(cfg: CheckConfig, threads: int) -> dict[str, Any]:
    return {**cfg.model_dump(), "threads": threads, "warmup": WARMUP}


def _check_stored(
    current: Path,
    baseline: Path,
    recipe: str | Path | None,
    allowed_slowdown: float | None,
    rounds: int | None,
    threads: int | None,
    artifacts: list[str] | None,
    timeout_s: float,
    log: Callable[[str], None],
) -> CheckResult:
    if not baseline.is_file():
        raise EdgesftError(f"BASELINE: {baseline}: no such baseline file")
    base = load_baseline(baseline)
    if not current.exists():
        raise EdgesftError(f"CURRENT: {current}: no such run folder")
    bench = load_bench(current, "CURRENT")
    cfg = check_settings(
        recipe, base.get("check"), allowed_slowdown=allowed_slowdown, rounds=rounds, artifacts=artifacts
    )
    n_threads = _threads(threads, cfg.threads, base.get("threads"), bench.get("threads"))
    result = CheckResult("reference", {**_settings(cfg, n_threads), "reference_workload": REFERENCE["name"]})
    facts = artifact_facts(current, bench)
    result.rows += compare_facts(base["artifacts"], facts, cfg)
    saved = {k: a["latency"] for k, a in base["artifacts"].items() if isinstance(a.get("latency"), dict)}
    gated = cfg.artifacts or sorted(saved)
    for key in gated:
        if key not in saved:
            raise EdgesftError(
                f"{baseline}: no decode timing saved for {key} (saved: {', '.join(sorted(saved)) or 'none'}); "
                "save the baseline with --artifact"
            )
    _compare_context(base, bench, n_threads, cfg, result)
    for key in gated:
        status = facts.get(key, {}).get("status")
        if status != "ok":
            result.rows.append(
                _untimed_row(key, saved[key].get("decode_tok_s"), _not_benchmarked(status), cfg)
            )
    gated = [k for k in gated if facts.get(k, {}).get("status") == "ok"]
    if not gated:
        return result
    with TimingWorker.reference(n_threads, timeout_s) as ref:
        for key in gated:
            stored = saved[key]
            log(f"  timing {key} against the reference workload: {cfg.rounds} rounds, {n_threads} threads")
            path = artifact_path(current, bench, key)
            try:
                with TimingWorker.artifact(path, n_threads, timeout_s, role="current") as art:
                    norm, secs = normalized_rounds(art, ref, cfg.rounds, cfg.decode_tokens)
            except TimingFailure as e:
                if e.role != "current":
                    raise  # the reference workload failed: an error, not a regression
                result.rows.append(_untimed_row(key, stored.get("decode_tok_s"), f"timing failed: {e}", cfg))
                continue
            verdict = two_sample_gate(norm, stored["normalized_rounds"], cfg.allowed_slowdown)
            result.rows.append(
                _latency_row(key, verdict, stored.get("decode_tok_s"), _tok_s(secs), "vs reference workload:")
            )
    return result


def _compare_context(
    base: dict[str, Any], bench: dict[str, Any], threads: int, cfg: CheckConfig, result: CheckResult
) -> None:
    """Notes where the stored baseline was measured differently from this check."""
    was, now = base.get("machine", {}).get("cpu_model"), bench.get("machine", {}).get("cpu_model")
    if was and now and was != now:
        result.notes.append(
            f"baseline saved on {was!r}, this run benched on {now!r}: normalized times compare best on one "
            "machine type"
        )
    if base.get("threads") and base["threads"] != threads:
        result.notes.append(f"baseline timed with {base['threads']} threads, this check with {threads}")
    if base.get("decode_tokens") and base["decode_tokens"] != cfg.decode_tokens:
        result.notes.append(
            f"baseline decoded {base['decode_tokens']} tokens per round, this check {cfg.decode_tokens}"
        )
    ref = base.get("reference_workload", {}).get("name")
    if ref and ref != REFERENCE["name"]:
        result.notes.append(f"baseline reference workload {ref!r} differs from {REFERENCE['name']!r}")


@contextlib.contextmanager
def open_workers(*workers: Callable[[], TimingWorker]) -> Iterator[list[TimingWorker]]:
    """Open several workers; all are closed on the way out, also when one fails to open."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(make()) for make in workers]


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "worker":
        sys.exit("usage: python -m edgesft.gate worker SPEC_JSON")
    code = _serve(json.loads(sys.argv[2]))
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (a second of torch's on a small runner): all is closed
