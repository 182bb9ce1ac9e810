"""The stage registry: name -> entry point, in pipeline order."""

from __future__ import annotations

from edgesft.pipeline import StageSpec
from edgesft.quality import gate_for
from edgesft.stages import bench, data, export, gguf, merge, onnx, prune, train, verify

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
        reads=("data",),
        distributed=True,
        description="supervised fine-tuning (qlora, lora, dora, full, freeze, prompt_tuning, output_layer)",
    ),
    "merge": StageSpec(
        name="merge",
        run=merge.run,
        sections=("data", "eval", "merge"),
        reads=("data", "train"),
        external=merge.external_inputs,
        skip=merge.skip,
        gate=gate_for("merge"),
        description="fold (and fuse) adapters into plain float weights; pass-through for full-weight methods",
    ),
    "prune": StageSpec(
        name="prune",
        run=prune.run,
        sections=("seed", "data", "train", "eval", "prune"),
        reads=("data",),
        reads_model=True,
        skip=prune.skip,
        gate=gate_for("prune"),
        description="structured pruning (blocks, MLP width, KV groups) healed by distillation",
    ),
    "gguf": StageSpec(
        name="gguf",
        run=gguf.run,
        sections=("name", "seed", "data", "export.gguf"),
        reads=("data",),
        reads_model=True,
        skip=gguf.skip,
        description="GGUF for llama.cpp: float file, importance matrix, llama.cpp k-quants, fallback report",
    ),
    "onnx": StageSpec(
        name="onnx",
        run=onnx.run,
        sections=("seed", "data", "export.onnx"),
        reads=("data",),
        reads_model=True,
        skip=onnx.skip,
        description="ONNX with KV cache for onnxruntime and onnxruntime-genai (int4/int8/fp16/fp32)",
    ),
    "verify": StageSpec(
        name="verify",
        run=verify.run,
        sections=("export.verify", "train.threads"),
        reads=("data", "gguf", "onnx"),
        reads_model=True,
        skip=verify.skip,
        gate=verify.gate,
        description="parity of every artifact with its PyTorch model (tokenizer, EOS, template, logits, greedy)",
    ),
    "export": StageSpec(
        name="export",
        run=export.run,
        sections=("name", "export.primary", "export.max_size_mib"),
        reads=("data", "gguf", "onnx", "verify"),
        reads_model=True,
        skip=export.skip,
        description="deployment bundle: artifacts, manifest with sha256, Ollama Modelfile, README, runners",
    ),
    "bench": StageSpec(
        name="bench",
        run=bench.run,
        sections=("data", "eval", "bench"),
        reads=("data", "train", "merge", "prune", "gguf", "onnx", "verify", "export"),
        external=bench.external_inputs,
        skip=bench.skip,
        description="latency, memory and quality of every artifact in its own runtime; the run's report",
    ),
}
