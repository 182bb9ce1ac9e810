"""What one QAT healing step spends on fake quantization, with the weights quantized a slice of rows at a
time (`edgesft.qat.SLICE_WEIGHTS`) against whole tensors at once, on a real model's weights.

    python bench/qat_speed.py runs/phone/prune/model            # the phone recipe's pruned model
    python bench/qat_speed.py runs/phone/prune/model --rounds 5

Every 2-D weight of the model is quantized as the phone recipe's QAT does (Q4_0, the tied embedding Q5_0),
with an importance matrix of random positive values: first the scale search (once per way), then the
per-step quantization with the search's choices (what healing does at every optimizer step), the two ways
alternated for `--rounds` rounds. Prints the medians, their ratio, and whether the two ways give identical
values (they must: each row is rounded on its own). Nothing else may run while it measures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any


def weights(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update({k: v for k, v in load_file(f).items() if v.ndim == 2})
    return tensors


def main() -> int:
    import torch

    from edgesft import qat

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="a model folder with safetensors weights")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    tensors = weights(args.model)
    types = {k: "Q5_0" if "embed" in k else "Q4_0" for k in tensors}
    imatrix = {k: torch.rand(v.shape[1]) + 0.1 for k, v in tensors.items()}
    n = sum(v.numel() for v in tensors.values())
    print(f"{len(tensors)} weights, {n / 1e6:.1f}M values, torch threads {torch.get_num_threads()}")
    sliced = qat.SLICE_WEIGHTS
    ways = {"sliced": sliced, "whole": 1 << 62}

    def run(way: str, choices: dict[str, Any] | None) -> tuple[float, dict[str, Any], dict[str, Any]]:
        qat.SLICE_WEIGHTS = ways[way]
        values, found = {}, {}
        t0 = time.perf_counter()
        for k, w in tensors.items():
            values[k], found[k] = qat.ggml_quantize(w, types[k], imatrix[k], choices[k] if choices else None)
        return time.perf_counter() - t0, values, found

    search: dict[str, float] = {}
    results: dict[str, Any] = {}
    for way in ways:
        search[way], results[way], choices = run(way, None)
    same_search = all(torch.equal(results["sliced"][k], results["whole"][k]) for k in tensors)
    step: dict[str, list[float]] = {way: [] for way in ways}
    for r in range(args.rounds):
        for way in ways if r % 2 == 0 else reversed(list(ways)):
            seconds, results[way], _ = run(way, choices)
            step[way].append(seconds)
    qat.SLICE_WEIGHTS = sliced
    same_step = all(torch.equal(results["sliced"][k], results["whole"][k]) for k in tensors)
    med = {way: statistics.median(v) for way, v in step.items()}
    print(f"scale search (once): sliced {search['sliced']:.1f} s, whole {search['whole']:.1f} s, "
          f"ratio {search['whole'] / search['sliced']:.2f}; identical values: {same_search}")  # fmt: skip
    print(f"per step, median of {args.rounds}: sliced {med['sliced']:.2f} s, whole {med['whole']:.2f} s, "
          f"ratio {med['whole'] / med['sliced']:.2f}; identical values: {same_step}")  # fmt: skip
    return 0 if same_search and same_step else 1


if __name__ == "__main__":
    raise SystemExit(main())
