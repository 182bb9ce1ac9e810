"""The phone recipe with the hidden size pruned 576 -> 512 (a multiple of 256, so every tensor takes
llama.cpp's k-quants), against a finished run of the recipe at hidden 576.

    python bench/hidden_width.py --baseline runs/phone --root /tmp/hidden512
    python bench/hidden_width.py --baseline runs/phone --root /tmp/hidden512 prune.heal.max_steps=150

transformers refuses a Llama config whose hidden size is not a multiple of the attention head count, even
with an explicit ``head_dim``, and SmolLM2-135M has 9 heads: no multiple of 256 below 576 is a multiple of 9,
so ``prune.width.hidden_size: 512`` stops at the plan with that error (a user could not load the result with
stock transformers). llama.cpp and onnxruntime-genai take the head size from ``head_dim`` and run the shape.
To measure what it would give, this script runs ``edgesft run recipes/phone.yaml`` in a child process whose
Python processes lift that one rule (``bench/hidden_width_site/sitecustomize.py`` on PYTHONPATH); nothing
else changes.

The default overrides keep the total parameter count of the 576 run: ``prune.target_fraction=0.24`` with
``hidden_size=512`` leaves the MLP at 1280 neurons (the 576 run: 1024), and the embedding loses 64 of its
576 columns, so both models hold ~105M parameters. Prints, per artifact of both runs, size, decode speed
and exact-match from each run's ``bench/bench.json``. Speeds of two runs are comparable only when nothing
else ran during either; the ratio to Q4_K_M inside each run is the figure that travels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT = ["prune.width.hidden_size=512", "prune.target_fraction=0.24"]


def rows(bench: dict[str, Any]) -> list[tuple[str, float, float, float, int]]:
    """(artifact, MiB, decode tok/s at depth 0, exact-match, test rows) of a run's bench.json."""
    out = []
    for name, a in bench["artifacts"].items():
        if a.get("status") != "ok":
            continue
        test = a["quality"]["test"]
        first = test.get("first_rows", test)  # the primary answers more rows; compare on the common ones
        decode = a["latency"]["decode"]["0"]["tok_s"]["median"]
        out.append((name, a["size_bytes"] / 2**20, decode, first["exact_match"], first["n"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True, help="a finished run folder of the recipe")
    parser.add_argument("--root", type=Path, required=True, help="run root for the hidden-512 run")
    parser.add_argument("--recipe", default="recipes/phone.yaml")
    parser.add_argument("overrides", nargs="*", help="more key.path=value overrides")
    args = parser.parse_args()

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE / "hidden_width_site"), os.environ.get("PYTHONPATH", "")]),
    }
    edgesft = Path(sys.executable).parent / "edgesft"  # the console script of this environment
    cmd = [str(edgesft), "run", args.recipe, "--root", str(args.root), *DEFAULT, *args.overrides]
    print("$", "edgesft", " ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        print(f"the run exited {rc}", file=sys.stderr)
        return rc
    name = args.baseline.name
    runs = {"hidden 576 (baseline)": args.baseline, "hidden 512": args.root / name}
    for label, folder in runs.items():
        bench = json.loads((folder / "bench" / "bench.json").read_text())
        prune = json.loads((folder / "prune" / "manifest.json").read_text())["metrics"]
        plan = prune["plan"]
        print(
            f"\n{label}: hidden {plan.get('hidden_size', 576)}, MLP {plan['intermediate_size']}, "
            f"{plan['num_hidden_layers']} blocks, {prune['params_total']:,} parameters; pruned model exact "
            f"{prune.get('test', {}).get('exact_match', float('nan')):.3f}; primary {bench['primary']}"
        )
        q4km = next((r[2] for r in rows(bench) if "Q4_K_M" in r[0]), None)
        for artifact, mib, decode, exact, n in rows(bench):
            ratio = f"x{decode / q4km:.2f} of Q4_K_M" if q4km else ""
            print(
                f"  {artifact:32s} {mib:7.1f} MiB  {decode:6.1f} tok/s {ratio:16s} exact {exact:.3f} ({n} rows)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
