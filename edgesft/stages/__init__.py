"""The stage registry: name -> entry point, in pipeline order.

Later stages (quantize, export, verify, bench) register here the same way.
"""

from __future__ import annotations

from edgesft.pipeline import StageSpec
from edgesft.quality import gate_for
from edgesft.stages import data, merge, prune, train

STAGES: dict[str, StageSpec] = {
    "data": StageSpec(
        name="data",
        run=data.run,
        sections=("seed", "model", "data"),
        external=data.external_inputs,
        description="read, clean, dedup, split and augment the data; write the run's tokenizer",
    ),
    "train": StageSpec(
        name="train",
        run=train.run,
        sections=("seed", "model", "data", "train", "eval"),
        distributed=True,
        description="supervised fine-tuning (qlora, lora, dora, full, freeze, prompt_tuning, output_layer)",
    ),
    "merge": StageSpec(
        name="merge",
        run=merge.run,
        sections=("data", "eval", "merge"),
        external=merge.external_inputs,
        skip=merge.skip,
        gate=gate_for("merge"),
        description="fold (and fuse) adapters into plain float weights; pass-through for full-weight methods",
    ),
    "prune": StageSpec(
        name="prune",
        run=prune.run,
        sections=("seed", "data", "train", "eval", "prune"),
        skip=prune.skip,
        gate=gate_for("prune"),
        description="structured pruning (blocks, MLP width, KV groups) healed by distillation",
    ),
}
