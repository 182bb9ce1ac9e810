"""Training throughput: edgesft's train stage vs a plain transformers Trainer + PEFT run of the same config.

Same model, adapter, data, batch size, dtype and thread count; the runs alternate (A B A B ...) so drift on
a shared machine hits both alike, and the figure that counts is the median of per-round ratios.

    python bench/train_speed.py                       # phone recipe, 3 rounds of 12 steps each
    python bench/train_speed.py --method lora --rounds 5 --steps 10

``measure()`` is the importable form (bench/peers.py calls it).

A third, informational row is the plain run with the Trainer's defaults on CPU (float32, no autocast): what
a user gets without edgesft choosing bf16.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rows(recipe: Any, n: int) -> list[Any]:
    from edgesft.data import ReadReport, read_rows

    files = [recipe.resolve_path(p) for p in recipe.data.train]
    return read_rows(files, recipe.data.format, "skip", ReadReport())[:n]


def _timed_trainer(
    cls: Any,
    model: Any,
    ds: list[dict[str, Any]],
    collator: Any,
    steps: int,
    bf16: bool,
    batch: int,
    seed: int,
) -> float:
    """Tokens/s over steps 2..N (step 1 warms up kernels and allocators)."""
    from transformers import TrainerCallback, TrainingArguments

    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks.append((time.perf_counter(), state.num_input_tokens_seen))

    args = TrainingArguments(
        output_dir="/tmp/edgesft-bench-train",
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-4,
        bf16=bf16,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        group_by_length=True,
        seed=seed,
        data_seed=seed,
    )
    trainer = cls(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[Clock()])
    trainer.train()
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    return (n1 - n0) / (t1 - t0)


def measure(
    recipe_path: str | Path,
    method: str | None = None,
    rounds: int = 3,
    steps: int = 12,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Alternate the three runners for ``rounds`` rounds of ``steps`` steps; the summary record.

    Runners: ``edgesft`` (the train stage's Trainer), ``plain_same_dtype`` (stock Trainer, same model,
    adapter, data, batch and dtype) and ``plain_fp32_default`` (stock Trainer, float32). ``threads`` overrides
    the recipe's ``train.threads``.
    """
    if steps < 2:
        raise ValueError(f"steps: expected at least 2 (step 1 is warm-up), got {steps}")
    import torch
    from transformers import AutoTokenizer, Trainer

    from edgesft.chat import prepare_tokenizer
    from edgesft.config import load_recipe
    from edgesft.machine import set_threads
    from edgesft.models import resolve_model
    from edgesft.stages.train import METHODS
    from edgesft.training import Collator, encode_rows, make_trainer_class, pick_dtype

    overrides = [f"train.method={method}"] if method else []
    if threads:
        overrides.append(f"train.threads={threads}")
    recipe = load_recipe(str(recipe_path), overrides)
    cfg = recipe.train
    n_threads = set_threads(cfg.threads)
    dtype = pick_dtype(cfg.dtype)
    base = resolve_model(recipe.model, recipe._base_dir).path
    tok = AutoTokenizer.from_pretrained(base)
    prepare_tokenizer(tok, recipe.model.system_prompt, recipe.model.extra_special_tokens)
    ds = encode_rows(
        _rows(recipe, cfg.batch_size * steps),
        tok,
        recipe.data.max_length,
        recipe.data.train_on_prompt,
        recipe.data.packing,
    )
    collator = Collator(tok.pad_token_id)
    runners = {
        "edgesft": (make_trainer_class(), dtype == "bfloat16"),
        "plain_same_dtype": (Trainer, dtype == "bfloat16"),
        "plain_fp32_default": (Trainer, False),
    }
    results: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(rounds):
        for name, (cls, bf16) in runners.items():
            torch.manual_seed(recipe.seed)
            model, _ = METHODS[cfg.method](base, tok, cfg, dtype)
            tps = _timed_trainer(cls, model, ds, collator, steps, bf16, cfg.batch_size, recipe.seed)
            results[name].append(tps)
            log(f"round {r + 1}/{rounds} {name:20s} {tps:7.1f} tok/s")
            del model

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(results[a], results[b], strict=True))

    return {
        "benchmark": "train_speed",
        "date": date.today().isoformat(),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": n_threads,
            "torch": torch.__version__,
        },
        "recipe": Path(recipe_path).name,
        "method": cfg.method,
        "dtype": dtype,
        "batch_size": cfg.batch_size,
        "steps_per_round": steps,
        "rounds": rounds,
        "tokens_per_s": {k: {"median": statistics.median(v), "runs": v} for k, v in results.items()},
        "ratio_edgesft_vs_plain_same_config": ratio("edgesft", "plain_same_dtype"),
        "ratio_edgesft_vs_plain_fp32_default": ratio("edgesft", "plain_fp32_default"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "phone.yaml"))
    ap.add_argument("--method", default=None, help="override train.method (qlora, lora, dora)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="override train.threads")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()

    summary = measure(a.recipe, a.method, a.rounds, a.steps, a.threads, log=lambda s: print(s, flush=True))
    print()
    print("| run | median tok/s | runs |")
    print("|---|---|---|")
    for k, v in summary["tokens_per_s"].items():
        print(f"| {k} | {v['median']:.1f} | {', '.join(f'{x:.0f}' for x in v['runs'])} |")
    print(
        f"\nedgesft / plain Trainer+PEFT (same config, {summary['dtype']}): "
        f"{summary['ratio_edgesft_vs_plain_same_config']:.2f}x (median of per-round ratios)"
    )
    print(
        f"edgesft / plain Trainer+PEFT (fp32 defaults):        {summary['ratio_edgesft_vs_plain_fp32_default']:.2f}x"
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_speed-{summary['date']}-{summary['method']}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
