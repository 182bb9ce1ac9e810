"""How well the stored-baseline gate's reference workload follows an artifact when the machine's caches
change, and how much the order of the two timed runs in a round matters, in one run.

`edgesft check` against a stored baseline divides each artifact decode time by the time of a reference
workload measured in the same round (edgesft.gate.worker). A good reference moves with the artifact: when the
caches shrink or fill, both slow down together and the normalized time stays put. This script times three
ways of doing it:

- legacy: the one fixed 64 MiB ``torch.mv`` that schema-1 baselines used, each run timed cold;
- legacy+warm: the same matrix, each timed run right after a short untimed one;
- sized: a matrix of about the artifact's own bytes (edgesft.gate.reference_workload), warm (what
  schema-2 baselines use);

under two conditions, alternated gate by gate:

- quiet: nothing else runs;
- neighbour: a second process streams a 256 MiB buffer on the other core for the whole gate, evicting the
  shared last-level cache, as a runner with a smaller or busier cache would.

For each way it prints the median normalized time of each condition and their ratio (the shift a change of
cache alone makes: 1.0 is ideal; the gate allows 1.10), the spread of the gate medians within a condition,
and the order effect (median of B A rounds over median of A B rounds).

    python bench/gate_reference.py --artifact runs/ci-smoke/gguf/ci-smoke-Q4_K_M.gguf [--gates 6]
        [--rounds 12] [--threads 1] [--tokens 256]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NEIGHBOUR = "import numpy as np\na = np.ones(64 << 20, np.float32)\nwhile True:\n    a.sum()\n"


@contextlib.contextmanager
def neighbour(on: bool) -> Iterator[None]:
    """A cache-evicting process for the duration (nothing when ``on`` is false)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
    time.sleep(1.0)  # let it allocate and start streaming
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", required=True, help="a .gguf, ONNX folder or model folder")
    ap.add_argument("--gates", type=int, default=6, help="gates per way and condition")
    ap.add_argument("--rounds", type=int, default=12, help="rounds per gate")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=256, help="decoded tokens per timed run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / f"gate_reference-{date.today()}.json"))
    args = ap.parse_args()

    from edgesft.gate import LEGACY_REFERENCE, normalized_rounds, open_workers, reference_workload
    from edgesft.gate.worker import TimingWorker
    from edgesft.io import atomic_write_json, path_size
    from edgesft.machine import machine_info

    path = Path(args.artifact)
    size = path_size(path)
    ways: dict[str, dict[str, Any]] = {
        "legacy": dict(LEGACY_REFERENCE),
        "legacy+warm": {**LEGACY_REFERENCE, "warm": True},
        "sized": reference_workload(size),
    }
    conditions = ("quiet", "neighbour")
    rounds: dict[str, dict[str, list[list[float]]]] = {w: {c: [] for c in conditions} for w in ways}
    t0 = time.perf_counter()
    makers = []
    for spec in ways.values():
        warm = bool(spec["warm"])
        makers.append(lambda s=spec, w=warm: TimingWorker.reference(args.threads, s, warm=w))
        makers.append(lambda w=warm: TimingWorker.artifact(path, args.threads, warm=w))
    with open_workers(*makers) as workers:
        pairs = dict(zip(ways, zip(workers[1::2], workers[0::2], strict=True), strict=True))
        for g in range(args.gates):
            for cond in conditions if g % 2 == 0 else conditions[::-1]:
                with neighbour(cond == "neighbour"):
                    for way, (art, ref) in pairs.items():
                        norm, _ = normalized_rounds(art, ref, args.rounds, args.tokens)
                        rounds[way][cond].append(norm)
            print(
                f"gate {g + 1}/{args.gates}: "
                + "; ".join(
                    f"{w} " + "/".join(f"{statistics.median(rounds[w][c][-1]):.4f}" for c in conditions)
                    for w in ways
                ),
                file=sys.stderr,
                flush=True,
            )

    summary: dict[str, Any] = {}
    for way in ways:
        per: dict[str, Any] = {}
        for cond in conditions:
            gates = rounds[way][cond]
            medians = [statistics.median(r) for r in gates]
            ab = [x for r in gates for x in r[0::2]]
            ba = [x for r in gates for x in r[1::2]]
            per[cond] = {
                "median": statistics.median(medians),
                "gate_spread": max(medians) / min(medians),
                "order_effect": statistics.median(ba) / statistics.median(ab),
            }
        per["shift"] = per["neighbour"]["median"] / per["quiet"]["median"]
        summary[way] = per
    record = {
        "date": str(date.today()),
        "machine": machine_info(),
        "settings": {
            "artifact": str(path),
            "artifact_bytes": size,
            "gates": args.gates,
            "rounds": args.rounds,
            "threads": args.threads,
            "decode_tokens": args.tokens,
            "ways": ways,
        },
        "summary": summary,
        "rounds": rounds,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    atomic_write_json(out, record)

    print(
        f"{path.name} ({size / 2**20:.1f} MiB), {args.gates} gates x {args.rounds} rounds, {args.threads} thread(s)"
    )
    print(
        f"{'way':12s} {'reference':28s} {'quiet':>8s} {'neighbour':>9s} {'shift':>7s} {'spread':>7s} {'order':>7s}"
    )
    for way, per in summary.items():
        spread = max(per[c]["gate_spread"] for c in conditions)
        order = max((per[c]["order_effect"] for c in conditions), key=lambda x: abs(x - 1))
        print(
            f"{way:12s} {ways[way]['name']:28s} {per['quiet']['median']:8.4f} {per['neighbour']['median']:9.4f} "
            f"{per['shift']:7.3f} {spread:7.3f} {order:7.3f}"
        )
    print(
        "shift: neighbour / quiet median (1.0 = the reference follows the artifact); spread: largest / smallest"
    )
    print("gate median within a condition; order: B A / A B rounds (1.0 = no order effect)")
    print(f"{record['seconds']:.0f} s; written to {out}")


if __name__ == "__main__":
    main()
