"""The stage registry: name -> entry point, in pipeline order.

Later stages (merge, prune, quantize, export, verify, bench) register here the same way.
"""

from __future__ import annotations

from edgesft.pipeline import StageSpec
from edgesft.stages import data, train

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
}
