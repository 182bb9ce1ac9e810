"""Merge + prune + heal of the phone recipe: wall time, parameters, quality and torch decode speed before/after.

    python bench/phone_prune.py --root /tmp/prun        # reuse that run folder's data and train stages
    python bench/phone_prune.py --root /tmp/prun prune.heal.max_steps=80   # try a change

Runs `edgesft run recipes/phone.yaml --root ROOT --until prune --from merge` (merge and prune re-run, the
earlier stages reused from ROOT or run first), then times greedy decoding of the merged (unpruned) and the
pruned model in the same process: the two alternate round by round (A B A B ...), each round decoding
`--tokens` tokens after a test-split prompt with the KV cache, single batch, fixed threads. Tokenization,
prefill and sampling are outside the timed region. Prints a Markdown table and writes
bench/results/phone_prune-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def decode_seconds(model: Any, prompt_ids: list[int], tokens: int) -> float:
    """Seconds for ``tokens`` single-token forward passes with the KV cache after the prompt's prefill."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(tokens):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return time.perf_counter() - t0


def interleaved_decode(
    models: dict[str, Any], prompt_ids: list[int], tokens: int, rounds: int
) -> dict[str, Any]:
    """Median decode tokens/s per model, the models alternating each round after one warm-up each."""
    for m in models.values():
        decode_seconds(m, prompt_ids, 8)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, m in models.items():
            times[name].append(decode_seconds(m, prompt_ids, tokens))
    names = list(models)
    ratios = [a / b for a, b in zip(times[names[0]], times[names[1]], strict=True)]
    return {
        "tokens_per_s": {k: round(tokens / statistics.median(v), 1) for k, v in times.items()},
        "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "median_speedup": round(statistics.median(ratios), 3),  # time(first) / time(second) per round
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/phone.yaml")
    ap.add_argument("--root", required=True, help="run root (earlier stages are reused from it)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "edgesft.cli", "run", a.recipe, "--root", a.root, "--until", "prune"]
    cmd += ["--from", "merge", *a.overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    name = Path(a.recipe).stem
    run = Path(a.root) / name
    manifests = {s: json.loads((run / s / "manifest.json").read_text()) for s in ("train", "merge", "prune")}

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from edgesft.chat import encode, prompt_and_answer, render
    from edgesft.data import load_rows

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(run / "merge" / "tokenizer")
    row = load_rows(run / "data" / "test.jsonl")[0]
    prompt = encode(tok, render(tok, prompt_and_answer(row.messages)[0], add_generation_prompt=True))
    models = {
        s: AutoModelForCausalLM.from_pretrained(run / s / "model", dtype=torch.float32).eval()
        for s in ("merge", "prune")
    }
    speed = interleaved_decode(models, prompt, a.tokens, a.rounds)

    merge_s, prune_s = manifests["merge"]["duration_s"], manifests["prune"]["duration_s"]
    table = [
        "| model | params | non-embedding | val ppl | exact-match | intent | slot F1 | valid JSON | decode tok/s |"
    ]
    table.append("|---|---|---|---|---|---|---|---|---|")
    for stage, label in (("merge", "tuned (merged)"), ("prune", "pruned + healed")):
        m = manifests[stage]["metrics"]
        t = m["test"]
        table.append(
            f"| {label} | {m['params_total']:,} | {m['params_non_embedding']:,} | {m['val_perplexity']:.3f} "
            f"| {t['exact_match']:.1%} | {t['intent_accuracy']:.1%} | {t['slot_f1']:.3f} | {t['valid_json']:.1%} "
            f"| {speed['tokens_per_s'][stage]} |"
        )
    pm = manifests["prune"]["metrics"]
    em_drop = 100 * (manifests["merge"]["metrics"]["test"]["exact_match"] - pm["test"]["exact_match"])
    print("\n".join(table))
    print(
        f"\nremoved {pm['removed_fraction']:.1%} of non-embedding parameters; exact-match drop {em_drop:+.1f} "
        f"points; decode speedup x{speed['median_speedup']} (median of {a.rounds} interleaved rounds); "
        f"merge {merge_s:.0f}s + prune/heal {prune_s:.0f}s = {merge_s + prune_s:.0f}s "
        f"(command wall {wall:.0f}s)"
    )
    result = {
        "date": date.today().isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": a.threads},
        "command": " ".join(["python", "bench/phone_prune.py", "--root", a.root, *a.overrides]),
        "merge_seconds": merge_s,
        "prune_seconds": prune_s,
        "wall_seconds": round(wall, 1),
        "removed_fraction": pm["removed_fraction"],
        "exact_match_drop_points": round(em_drop, 2),
        "plan": pm["plan"],
        "removed_layers": pm.get("removed_layers"),
        "heal": pm.get("heal"),
        "unhealed_val_loss": pm.get("unhealed_val_loss"),
        "metrics": {
            s: {
                k: manifests[s]["metrics"].get(k)
                for k in ("params_total", "params_non_embedding", "val_loss", "val_perplexity", "test")
            }
            for s in ("train", "merge", "prune")
        },
        "decode": speed,
        "table": table,
    }
    out = ROOT / "bench" / "results" / f"phone_prune-{date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
