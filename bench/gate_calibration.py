"""False-alarm rate and power of `edgesft check`'s latency gate on this machine, in one run.

Four timing workers stay loaded for the whole run (edgesft.gate.TimingWorker): two of the artifact X (two
processes, as a check of a run against an identical one has), one of the slower artifact Y, and the
reference workload. Each of K gates then takes fresh rounds, exactly as `edgesft check` would:

- interleaved (both artifacts at hand): R rounds X vs X -> false alarm if flagged; R rounds Y vs X -> caught
  if flagged (edgesft.stats.latency_gate, median of per-round ratios, bootstrap 95% interval);
- reference (a stored baseline): R rounds X vs the reference workload stand for a saved baseline; R fresh
  rounds of X (the second process) vs the reference -> false alarm if flagged; R fresh rounds of Y -> caught
  if flagged (edgesft.stats.two_sample_gate on the normalized times).

The true slowdown of Y is the median of all per-round Y/X time ratios of the interleaved power rounds. Aim
for a Y about 25% slower than X (a bigger model of the same kind) to see power at the edge of the allowance.

    python bench/gate_calibration.py --artifact X.gguf --slower Y.gguf [--gates 30] [--rounds 12]
        [--threads 2] [--tokens 32] [--allowed 0.10]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate (sound at 0 of n, unlike the normal approximation)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(verdicts: list[Any]) -> dict[str, Any]:
    hits = sum(v.regression for v in verdicts)
    low, high = wilson(hits, len(verdicts))
    return {
        "flagged": hits,
        "gates": len(verdicts),
        "rate": hits / len(verdicts),
        "rate_ci95": [round(low, 4), round(high, 4)],
        "median_ratio": statistics.median(v.median_ratio for v in verdicts),
        "verdicts": [[round(v.median_ratio, 4), round(v.ci_low, 4), round(v.ci_high, 4)] for v in verdicts],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", required=True, help="artifact X (.gguf, ONNX folder or model folder)")
    ap.add_argument("--slower", required=True, help="a slower artifact Y of the same kind")
    ap.add_argument("--gates", type=int, default=30, help="K gates per mode and case")
    ap.add_argument("--rounds", type=int, default=12, help="R rounds per gate")
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--tokens", type=int, default=32, help="decoded tokens per timed run")
    ap.add_argument("--allowed", type=float, default=0.10, help="allowed slowdown")
    ap.add_argument(
        "--out", default=str(ROOT / "bench" / "results" / f"gate_calibration-{date.today()}.json")
    )
    args = ap.parse_args()

    from edgesft.gate import (
        WARMUP,
        TimingWorker,
        interleave,
        normalized_rounds,
        open_workers,
        reference_workload,
    )
    from edgesft.io import atomic_write_json, path_size
    from edgesft.machine import default_threads, machine_info
    from edgesft.stats import latency_gate, two_sample_gate

    threads = args.threads or default_threads()
    x, y = Path(args.artifact), Path(args.slower)
    workload = reference_workload(path_size(x))
    t0 = time.perf_counter()
    identical: dict[str, list[Any]] = {"interleaved": [], "reference": []}
    slower: dict[str, list[Any]] = {"interleaved": [], "reference": []}
    pooled: list[float] = []  # every interleaved Y/X round
    with open_workers(
        lambda: TimingWorker.artifact(x, threads),
        lambda: TimingWorker.artifact(x, threads),
        lambda: TimingWorker.artifact(y, threads),
        lambda: TimingWorker.reference(threads, workload),
    ) as (x1, x2, yw, ref):
        for k in range(args.gates):
            a, b = interleave(x1, x2, args.rounds, args.tokens)
            identical["interleaved"].append(latency_gate(a, b, args.allowed))
            slow, fast = interleave(yw, x1, args.rounds, args.tokens)
            slower["interleaved"].append(latency_gate(slow, fast, args.allowed))
            pooled += [s / f for s, f in zip(slow, fast, strict=True)]
            saved, _ = normalized_rounds(x1, ref, args.rounds, args.tokens)
            fresh, _ = normalized_rounds(x2, ref, args.rounds, args.tokens)
            identical["reference"].append(two_sample_gate(fresh, saved, args.allowed))
            fresh_slow, _ = normalized_rounds(yw, ref, args.rounds, args.tokens)
            slower["reference"].append(two_sample_gate(fresh_slow, saved, args.allowed))
            print(
                f"gate {k + 1}/{args.gates}: identical "
                + ", ".join(f"{m} {v[-1].median_ratio:.3f}" for m, v in identical.items())
                + "; slower "
                + ", ".join(f"{m} {v[-1].median_ratio:.3f}" for m, v in slower.items()),
                file=sys.stderr,
                flush=True,
            )
    true_slowdown = statistics.median(pooled)
    results = {m: {"false_alarms": rate(identical[m]), "power": rate(slower[m])} for m in identical}
    record = {
        "date": str(date.today()),
        "machine": machine_info(),
        "settings": {
            "artifact": str(x),
            "slower": str(y),
            "artifact_bytes": x.stat().st_size if x.is_file() else None,
            "slower_bytes": y.stat().st_size if y.is_file() else None,
            "gates": args.gates,
            "rounds": args.rounds,
            "threads": threads,
            "decode_tokens": args.tokens,
            "warmup": WARMUP,
            "allowed_slowdown": args.allowed,
            "reference_workload": workload,
        },
        "true_slowdown": round(true_slowdown, 4),
        "results": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    atomic_write_json(out, record)

    print(
        f"{x.name} vs itself and vs {y.name} (true slowdown x{true_slowdown:.3f}), {args.gates} gates of "
        f"{args.rounds} rounds, {threads} threads, allowed +{args.allowed:.0%}"
    )
    print(f"{'mode':12s} {'false alarms (identical)':34s} caught (slower)")
    for mode, r in results.items():
        cells = []
        for case in ("false_alarms", "power"):
            c = r[case]
            lo, hi = c["rate_ci95"]
            cells.append(f"{c['flagged']}/{c['gates']} = {c['rate']:.0%} (95% CI {lo:.0%}-{hi:.0%})")
        print(f"{mode:12s} {cells[0]:34s} {cells[1]}")
    print(f"{record['seconds']:.0f} s; written to {out}")


if __name__ == "__main__":
    main()
