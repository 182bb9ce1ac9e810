"""Quantization-aware healing, measured: the prune stage's healing with and without `prune.heal.qat`, each
healed model exported to the target format, each file's KL and top-1 agreement against the teacher.

    python bench/qat.py --root /tmp/prun                       # phone recipe, q4_0, from that run folder
    python bench/qat.py --root /tmp/prun --format q4_k_m
    python bench/qat.py --root /tmp/prun --format int4 prune.heal.max_steps=60   # recipe overrides

Needs a run folder where the recipe ran up to `prune` (`edgesft run RECIPE --root ROOT --until prune`): the
data split and the model the prune stage started from (the teacher) are read from it. The pruned, unhealed
model is made again with the stage's own code (the same plan, calibration rows and seed), then healed twice
in this process by the stage's `heal`: `qat.format: none` and `qat.format: FORMAT`; every other heal setting
is the recipe's. Each healed model goes through the exporter as the gguf / onnx stage runs it (F16 file,
importance matrix on `export.gguf.imatrix_rows` training rows, llama.cpp's quantizer; or onnxruntime-genai's
builder with the recipe's int4 RTN variant) and verify's parity code compares the file with the teacher on
`export.verify.prompts` validation rows (teacher-forced, in the file's own runtime); `edgesft eval` then scores
each file's greedy answers on the test split (`--test-rows`, all by default) in its own runtime, constrained
to the run's answer schema as every deployed answer is. The QAT heal gets the
`qat` fields that mirror the export from the recipe's export sections, so the simulated format is the one
exported. Prints a Markdown table and writes bench/results/qat-<format>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

GGUF_TYPES = {"q4_0": "Q4_0", "q4_k_m": "Q4_K_M"}


def qat_overrides(recipe: Any, fmt: str) -> list[str]:
    """``prune.heal.qat`` for ``fmt``, its mirror fields taken from the recipe's export sections."""
    if fmt == "none":
        return ["prune.heal.qat.format=none"]
    out = [f"prune.heal.qat.format={fmt}"]
    g = recipe.export.gguf
    if fmt in GGUF_TYPES:
        rows = g.imatrix_rows if g.imatrix else "null"
        out += [
            f"prune.heal.qat.importance_rows={rows}",
            f"prune.heal.qat.output_type={output_type(g, GGUF_TYPES[fmt]) or 'null'}",
        ]
    else:
        v = int4_variant(recipe)
        out += [
            f"prune.heal.qat.block_size={v.block_size}",
            f"prune.heal.qat.symmetric={str(v.symmetric).lower()}",
            f"prune.heal.qat.quantize_embedding={str(v.quantize_embedding).lower()}",
        ]
    return out


def output_type(gguf: Any, qtype: str) -> str | None:
    """The output tensor's type the gguf stage asks llama.cpp for with ``qtype`` (None: llama.cpp's)."""
    of = getattr(gguf, "output_type_of", None)  # per-quant output types, where the recipe has them
    return of(qtype) if of else gguf.output_type


def int4_variant(recipe: Any) -> Any:
    from edgesft.config import OnnxVariant

    for v in recipe.export.onnx.variants:
        if v.precision == "int4" and v.algorithm == "rtn":
            return v
    return OnnxVariant(name="int4", precision="int4")


def export(recipe: Any, model_dir: Path, fmt: str, train_rows: list[Any], work: Path) -> tuple[Path, str]:
    """``model_dir`` as the gguf or onnx stage writes ``fmt``: (artifact, verify's precision name)."""
    from edgesft.isolate import call

    if fmt in GGUF_TYPES:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from edgesft.gguf_export import gguf_architecture, imatrix_from_model, write_gguf, write_imatrix
        from edgesft.training import calibration_batches

        g = recipe.export.gguf
        f16 = work / f"{model_dir.name}-{g.float_type.upper()}.gguf"
        write_gguf(model_dir, f16, g.float_type)
        imatrix = None
        if g.imatrix:
            tok = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
            rows = random.Random(recipe.seed).sample(train_rows, min(g.imatrix_rows, len(train_rows)))
            batches = calibration_batches(tok, rows, recipe.data.max_length, batch_size=8)
            imatrix = work / f"{model_dir.name}-imatrix.gguf"
            stats = imatrix_from_model(model, batches, gguf_architecture(f16))
            write_imatrix(stats, imatrix, f"train.jsonl ({len(rows)} rows)", recipe.data.max_length)
        qtype = GGUF_TYPES[fmt]
        dest = work / f"{model_dir.name}-{qtype}.gguf"
        args = {"src": str(f16), "dest": str(dest), "qtype": qtype, "threads": g.threads}
        call(
            "edgesft.gguf_export:quantize",
            {**args, "imatrix": str(imatrix) if imatrix else None, "output_type": output_type(g, qtype)},
        )
        return dest, qtype
    from edgesft.onnx_export import build_variant
    from edgesft.stages.onnx import context_length

    variant = int4_variant(recipe)
    dest = work / f"{model_dir.name}-{variant.name}"
    build_variant(
        model_dir, dest, variant, context_length=context_length(recipe, model_dir), calibration=None
    )
    return dest, "int4"


def test_metrics(artifact: Path, test_file: Path, max_new_tokens: int, rows: int | None) -> dict[str, Any]:
    """Task metrics of ``artifact`` on ``test_file`` through ``edgesft eval`` (its own runtime, in a child
    process, constrained to the run's answer schema), as a user measures a file."""
    import subprocess

    cmd = [sys.executable, "-m", "edgesft.cli", "eval", str(artifact), "--data", str(test_file), "--json"]
    cmd += ["--max-new-tokens", str(max_new_tokens), *(["--max-rows", str(rows)] if rows else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"edgesft eval {artifact.name} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)["metrics"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/phone.yaml")
    ap.add_argument("--root", required=True, help="run root where the recipe ran up to prune")
    ap.add_argument("--format", default="q4_0", choices=["q4_0", "q4_k_m", "int4"])
    ap.add_argument("--out", default=None, help="work folder (default: RUN/.qat-bench)")
    ap.add_argument("--threads", type=int, default=None, help="default: train.threads")
    ap.add_argument("--test-rows", type=int, default=None, help="test rows each file answers (default: all)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from edgesft.config import load_recipe
    from edgesft.data import load_rows
    from edgesft.machine import set_threads
    from edgesft.models import save_tokenizer
    from edgesft.runtimes.torch_rt import TorchArtifact
    from edgesft.stages.prune import apply_plan, heal, pruning_plan
    from edgesft.training import calibration_batches
    from edgesft.verify import build_request, verify_artifact

    base = load_recipe(a.recipe, a.overrides)
    run = Path(a.root) / (base.name or Path(a.recipe).stem)
    manifest = json.loads((run / "prune" / "manifest.json").read_text())
    source = manifest["info"]["source_stage"]
    source_manifest = json.loads((run / source / "manifest.json").read_text())
    teacher = run / source / source_manifest["info"]["model"]
    work = Path(a.out) if a.out else run / ".qat-bench"
    work.mkdir(parents=True, exist_ok=True)
    threads = set_threads(a.threads or base.train.threads)
    tok = AutoTokenizer.from_pretrained(teacher)
    train_rows = load_rows(run / "data" / "train.jsonl")
    val_rows = load_rows(run / "data" / "val.jsonl")
    p = base.prune
    calib = random.Random(base.seed).sample(train_rows, min(p.calibration_rows, len(train_rows)))
    batches = calibration_batches(tok, calib, base.data.max_length)
    verify = base.export.verify
    request = build_request(tok, val_rows, verify)
    reference = TorchArtifact(teacher, threads=threads)

    results: dict[str, Any] = {}
    for fmt in ("none", a.format):
        recipe = load_recipe(a.recipe, [*a.overrides, *qat_overrides(base, fmt)])
        set_seed(recipe.seed)
        model: Any = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32, use_safetensors=True)
        plan = pruning_plan(model.config, p)
        apply_plan(model, recipe, batches, plan)
        t0 = time.perf_counter()
        label = "qat-" + fmt if fmt != "none" else "no-qat"
        shutil.rmtree(work / f"heal-{label}", ignore_errors=True)  # no checkpoint of an earlier invocation
        model, figures = heal(
            recipe, model, tok, teacher, train_rows, val_rows, work / f"heal-{label}", work / f"out-{label}"
        )
        heal_s = time.perf_counter() - t0
        healed = work / label
        model.save_pretrained(healed, safe_serialization=True)
        save_tokenizer(tok, healed, teacher)
        artifact, precision = export(recipe, healed, a.format, train_rows, work)
        record = verify_artifact(
            artifact, precision, reference, request, verify, work / f"probe-{label}", threads
        )
        logits = record["checks"].get("logits", {})
        test = test_metrics(artifact, run / "data" / "test.jsonl", recipe.eval.max_new_tokens, a.test_rows)
        results[label] = {
            "heal_seconds": round(heal_s, 1),
            "best_val_loss": figures.get("best_val_loss"),
            "qat": figures.get("qat"),
            "artifact": artifact.name,
            "kl_mean": logits.get("kl_mean"),
            "kl_p99": logits.get("kl_p99"),
            "top1_agreement": logits.get("top1_agreement"),
            "positions": logits.get("positions"),
            "test": test,
        }
        print(f"{label}: {results[label]}", flush=True)

    print(
        f"\n| heal | {a.format} file: KL vs teacher | top-1 vs teacher | test exact | intent | slot F1 "
        "| heal s | heal best val loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        t = r["test"]
        print(
            f"| {label} | {r['kl_mean']} | {r['top1_agreement']} | {t['exact_match']:.2%} ({t['n']} rows) "
            f"| {t['intent_accuracy']:.2%} | {t['slot_f1']:.3f} | {r['heal_seconds']} | {r['best_val_loss']} |"
        )
    out = ROOT / "bench" / "results" / f"qat-{a.format}-{date.today().isoformat()}.json"
    out.write_text(
        json.dumps(
            {
                "date": date.today().isoformat(),
                "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads},
                "command": " ".join(["python", "bench/qat.py", *sys.argv[1:]]),
                "recipe": a.recipe,
                "format": a.format,
                "teacher": str(teacher),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
