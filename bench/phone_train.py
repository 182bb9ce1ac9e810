"""Wall time and quality of `edgesft run recipes/phone.yaml --until train` from a warm install.

    python bench/phone_train.py            # fresh run folder, every stage through train re-run
    python bench/phone_train.py --keep-base-eval   # reuse the cached untuned-base figures

"Warm install" means packages installed and the embedded GGUF already converted (~35 s, once per machine);
the untuned base model's test figures are measured again unless --keep-base-eval is given.
Prints a Markdown table (the README's) and writes bench/results/phone_train-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/phone.yaml")
    ap.add_argument("--keep-base-eval", action="store_true")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from edgesft.config import ModelConfig
    from edgesft.models import cache_root, resolve_model

    resolve_model(ModelConfig())  # warm: conversion is a one-time install cost, not part of the run
    if not a.keep_base_eval:
        shutil.rmtree(cache_root() / "evals", ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix="edgesft-bench-"))
    cmd = [
        sys.executable,
        "-m",
        "edgesft.cli",
        "run",
        a.recipe,
        "--until",
        "train",
        "--root",
        str(root),
        *a.overrides,
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    name = Path(a.recipe).stem
    manifests = {s: json.loads((root / name / s / "manifest.json").read_text()) for s in ("data", "train")}
    m = manifests["train"]["metrics"]
    tuned, base = m["test"], m["base"]["test"]
    result = {
        "benchmark": "phone_train",
        "date": date.today().isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": m["threads"]},
        "command": " ".join(["edgesft", "run", a.recipe, "--until", "train", *a.overrides]),
        "wall_s": round(wall, 1),
        "stage_s": {s: manifests[s]["duration_s"] for s in manifests},
        "train": {
            k: m[k]
            for k in (
                "method",
                "dtype",
                "steps",
                "epochs",
                "early_stopped",
                "train_tokens",
                "train_seconds",
                "train_tokens_per_s",
                "peak_memory_mb",
                "params_trainable",
                "val_loss",
                "val_perplexity",
            )
        },
        "tuned": tuned,
        "base": {
            **base,
            "val_loss": m["base"].get("val_loss"),
            "val_perplexity": m["base"].get("val_perplexity"),
        },
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"phone_train-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(
        f"`{result['command']}`: {wall / 60:.1f} min wall ({result['stage_s']['train']:.0f} s train stage), "
        f"{m['steps']} steps, {m['train_tokens_per_s']:.0f} train tok/s ({m['dtype']}, {m['threads']} threads), "
        f"peak RSS {m['peak_memory_mb']:.0f} MB"
    )
    print()
    print(
        "| model (test split, greedy) | exact-match | intent acc. | slot F1 | valid JSON | val perplexity |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| SmolLM2-135M-Instruct, untuned | {base['exact_match']:.1%} | {base['intent_accuracy']:.1%} | "
        f"{base['slot_f1']:.3f} | {base['valid_json']:.1%} | {m['base'].get('val_perplexity', float('nan')):.2f} |"
    )
    print(
        f"| tuned ({m['method']}) | {tuned['exact_match']:.1%} | {tuned['intent_accuracy']:.1%} | "
        f"{tuned['slot_f1']:.3f} | {tuned['valid_json']:.1%} | {m['val_perplexity']:.3f} |"
    )
    print(f"\nwritten {path}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
