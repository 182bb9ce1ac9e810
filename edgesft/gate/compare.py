"""Comparing a run with its baseline: one :class:`Row` per figure, each judged against its limit, and
:func:`check`, which gathers them.

Deterministic figures (file size, parameter count, fallback tensors, verification, quality) come from the
run's ``bench/bench.json`` and are compared exactly or within the recipe's tolerances (``bench.check``).
Decode time is compared as the package docstring (:mod:`edgesft.gate`) says: interleaved with the other
artifact when both are at hand, else normalized by the reference workload against a stored baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgesft.config import CheckConfig
from edgesft.errors import EdgesftError
from edgesft.gate.baseline import LEGACY_SCHEMA, Baseline, load_baseline
from edgesft.gate.facts import artifact_facts, artifact_path, kind_of, load_bench, primary_key
from edgesft.gate.settings import check_settings, recorded, resolve_threads
from edgesft.gate.worker import (
    DEFAULT_TIMEOUT_S,
    TimingFailure,
    TimingWorker,
    against_reference,
    interleave,
    tok_s,
)
from edgesft.quality import POINT_METRICS
from edgesft.stats import Verdict, latency_gate, two_sample_gate

_SLACK = 1e-9  # float rounding at exactly the tolerance is not a regression


# --------------------------------------------------------------------------------------------------------
# Rows


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
        ("size bytes", b.get("size_bytes"), c.get("size_bytes"), "relative rise", cfg.size_tolerance),
        ("params", b.get("params"), c.get("params"), "equal", 0.0),
        ("fallback tensors", b.get("fallback_tensors"), c.get("fallback_tensors"), "no rise", 0.0),
        # task metrics on different test rows are not comparable: the rows answered must match
        ("test rows", bt.get("n"), ct.get("n"), "equal", 0.0),
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
    kinds = (kind_of(current, "CURRENT"), kind_of(baseline, "BASELINE"))
    if kinds[0] != kinds[1]:
        raise EdgesftError(
            f"CURRENT is {'a run folder' if kinds[0] == 'run' else 'an artifact'} but BASELINE is not: "
            "give two run folders, two artifacts, or a baseline .json file"
        )
    cfg = check_settings(recipe, None, allowed_slowdown=allowed_slowdown, rounds=rounds, artifacts=artifacts)
    if kinds[0] == "artifact":
        n_threads = resolve_threads(threads, cfg.threads)
        result = CheckResult("interleaved", recorded(cfg, n_threads))
        pairs = [(current.name, current, baseline)]
    else:
        cur_bench, base_bench = load_bench(current, "CURRENT"), load_bench(baseline, "BASELINE")
        n_threads = resolve_threads(threads, cfg.threads, cur_bench.get("threads"))
        result = CheckResult("interleaved", recorded(cfg, n_threads))
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
        result.rows.append(_latency_row(key, verdict, tok_s(base_s), tok_s(cur_s), "interleaved:"))
    return result


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
        recipe, base.check.model_dump(), allowed_slowdown=allowed_slowdown, rounds=rounds, artifacts=artifacts
    )
    n_threads = resolve_threads(threads, cfg.threads, base.threads, bench.get("threads"))
    result = CheckResult("reference", recorded(cfg, n_threads))
    facts = artifact_facts(current, bench)
    result.rows += compare_facts(base.facts(), facts, cfg)
    saved = base.latency()
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
            result.rows.append(_untimed_row(key, saved[key].decode_tok_s, _not_benchmarked(status), cfg))
    gated = [k for k in gated if facts.get(k, {}).get("status") == "ok"]
    if not gated:
        return result
    for key in gated:
        stored = saved[key]
        # the baseline's own workload, sized from the baseline's artifact: never from the current one
        workload = stored.reference.model_dump()
        log(
            f"  timing {key} against the reference workload ({workload.get('name')}): {cfg.rounds} rounds, "
            f"{n_threads} threads"
        )
        path = artifact_path(current, bench, key)
        try:
            norm, secs = against_reference(
                path, workload, n_threads, cfg.rounds, cfg.decode_tokens, timeout_s, "current"
            )
        except TimingFailure as e:
            if e.role != "current":
                raise  # the reference workload failed: an error, not a regression
            result.rows.append(_untimed_row(key, stored.decode_tok_s, f"timing failed: {e}", cfg))
            continue
        verdict = two_sample_gate(norm, stored.normalized_rounds, cfg.allowed_slowdown)
        result.rows.append(
            _latency_row(key, verdict, stored.decode_tok_s, tok_s(secs), "vs reference workload:")
        )
    result.settings["reference_workloads"] = {k: saved[k].reference.name for k in gated}
    return result


def _compare_context(
    base: Baseline, bench: dict[str, Any], threads: int, cfg: CheckConfig, result: CheckResult
) -> None:
    """Notes where the stored baseline was measured differently from this check."""
    now_machine = bench.get("machine", {})
    differ = [
        f"{key} {base.machine[key]!r} -> {now_machine[key]!r}"
        for key in ("cpu_model", "cpu_id", "last_level_cache_kib")
        if base.machine.get(key) and now_machine.get(key) and base.machine[key] != now_machine[key]
    ]
    if differ:
        result.notes.append(
            f"baseline saved on another machine type ({'; '.join(differ)}): normalized times compare best on "
            "one machine type"
        )
    if base.threads and base.threads != threads:
        result.notes.append(f"baseline timed with {base.threads} threads, this check with {threads}")
    if base.decode_tokens and base.decode_tokens != cfg.decode_tokens:
        result.notes.append(
            f"baseline decoded {base.decode_tokens} tokens per round, this check {cfg.decode_tokens}"
        )
    if base.schema_version == LEGACY_SCHEMA:
        result.notes.append(
            f"baseline of schema {LEGACY_SCHEMA!r}: its rounds were normalized by one fixed 64 MiB reference "
            "workload, whatever the artifact's size, and timed cold; checked against that same workload, but "
            "save the baseline again (edgesft bench RUN --save-baseline) for a workload of the artifact's size"
        )
