"""Typed recipe: one section per stage, every field with a default, a docstring and a range check.

A recipe is YAML (safe-loaded) validated into :class:`Recipe`. All problems are collected and reported at
once, each with its dotted path and, where it came from the file, its line number.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgesft.errors import RecipeError
from edgesft.stats import MIN_ROUNDS

EMBEDDED_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-llama"


class _Section(BaseModel):
    # Attribute docstrings become field descriptions: the docs, the CLI help and the errors share them.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, protected_namespaces=())


class TinyModelConfig(_Section):
    """Shape of the random ``tiny-llama`` model (tests and ci-smoke)."""

    layers: int = Field(2, ge=1, le=64)
    """Number of decoder blocks."""
    hidden: int = Field(64, ge=16, le=4096)
    """Hidden size; must be divisible by ``heads``."""
    heads: int = Field(4, ge=1, le=64)
    """Attention heads."""
    kv_heads: int = Field(2, ge=1, le=64)
    """Key/value heads (grouped-query attention); must divide ``heads``."""
    intermediate: int = Field(128, ge=16, le=16384)
    """MLP intermediate size."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed of the random initialisation."""


class ModelConfig(_Section):
    """The base model and how conversations are rendered for it."""

    base: str = EMBEDDED_MODEL
    """`smollm2-135m-instruct` (embedded, offline), `tiny-llama` (random, for tests), a Hugging Face hub id,
    a local Hugging Face folder, or a local `.gguf` file."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `base` is a hub id."""
    trust_remote_code: bool = False
    """Allow model code from the hub. Off unless you trust the repository."""
    system_prompt: str | None = None
    """System turn rendered before every conversation, in training and inference alike. None renders no
    system turn: a default system prompt in the chat template is removed, because every prompt token costs
    prefill time on a phone."""
    extra_special_tokens: list[str] = Field(default_factory=list)
    """Special tokens added to the tokenizer; the embedding matrix is resized and the new rows trained."""
    tiny: TinyModelConfig = Field(default_factory=lambda: TinyModelConfig())
    """Shape of the random model when `base` is `tiny-llama`."""


AugmentOp = Literal["case", "punctuation", "filler", "typo"]
DEFAULT_AUGMENT_OPS: tuple[AugmentOp, ...] = ("case", "punctuation", "filler")


class AugmentConfig(_Section):
    """Cheap augmentation of user turns that adds variety without changing targets."""

    enabled: bool = False
    """Add augmented copies of training rows (never of validation or test rows)."""
    copies: int = Field(1, ge=1, le=10)
    """Augmented copies per training row."""
    ops: list[AugmentOp] = Field(default_factory=lambda: list(DEFAULT_AUGMENT_OPS))
    """Noise applied to the user turn: `case` (lower/upper/title), `punctuation` (drop or add trailing
    punctuation), `filler` (um, please, hey), `typo` (swap two adjacent letters in one word)."""
    prob: float = Field(0.5, gt=0.0, le=1.0)
    """Probability that each op is applied to a copy."""


class DataConfig(_Section):
    """Where the data comes from and how it is cleaned, rendered and split."""

    train: list[str] = Field(default_factory=list)
    """Training files (JSONL, JSON or CSV), relative to the recipe file. A single path is accepted."""
    val: str | None = None
    """Validation file; when absent, `val_fraction` of the training rows is held out."""
    test: str | None = None
    """Test file for the task metrics (exact-match, intent accuracy, slot F1, valid JSON)."""
    hf_dataset: str | None = None
    """Hugging Face dataset name to use instead of `train` files (needs the network)."""
    hf_config: str | None = None
    """Configuration name of `hf_dataset`."""
    hf_split: str = "train"
    """Split of `hf_dataset` used for training."""
    format: Literal["auto", "messages", "alpaca", "prompt_completion"] = "auto"
    """Row format: chat `messages`, alpaca (`instruction`/`input`/`output`), `prompt`/`completion`, or
    `auto` to detect it per row."""
    val_fraction: float = Field(0.1, ge=0.0, le=0.5)
    """Fraction of training rows held out for validation when `val` is not given."""
    max_length: int = Field(512, ge=8, le=131072)
    """Maximum tokens per example."""
    overlong: Literal["drop", "truncate"] = "drop"
    """What to do with an example longer than `max_length`: drop it, or truncate it (from the right)."""
    train_on_prompt: bool = False
    """Compute the loss on prompt tokens too (by default only assistant tokens carry loss)."""
    packing: bool = False
    """Pack several examples into one sequence of up to `max_length` tokens (less padding; examples in a
    pack can attend to each other)."""
    dedup: Literal["none", "exact", "normalized"] = "normalized"
    """Drop duplicate rows: `exact` text, or `normalized` (case, whitespace and punctuation folded)."""
    on_error: Literal["fail", "skip"] = "fail"
    """A malformed row stops the run (`fail`, with file and line) or is skipped and counted (`skip`)."""
    min_response_chars: int = Field(1, ge=0)
    """Rows whose assistant turn has fewer characters are dropped as empty."""
    label_key: str | None = None
    """Key of a JSON assistant answer counted per value in the data summary (e.g. `intent`)."""
    answer_schema: str | None = None
    """JSON Schema (draft 2020-12) file of the assistant answer, relative to the recipe file. Every row's
    final answer must match it (a row that does not is malformed: see `on_error`); evaluation, bench, chat
    and the export bundle's runners constrain greedy decoding to it (`eval.constrained`)."""
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig())
    """Augmentation of training rows."""

    @model_validator(mode="before")
    @classmethod
    def _one_train_path(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("train"), str):
            value = {**value, "train": [value["train"]]}
        return value


class LoraSection(_Section):
    """LoRA/DoRA adapter shape (methods `qlora`, `lora`, `dora`)."""

    r: int = Field(16, ge=1, le=1024)
    """Rank of the update matrices."""
    alpha: int = Field(32, ge=1)
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]) or `all-linear`."""
    rslora: bool = False
    """Rank-stabilised scaling: the update is scaled by alpha / sqrt(r) instead of alpha / r (peft's
    `use_rslora`), so a higher rank does not shrink the update's size."""


class TrainLoraSection(LoraSection):
    """LoRA/DoRA adapter shape and start (methods `qlora`, `lora`, `dora`)."""

    init: Literal["default", "loftq"] = "default"
    """How the adapter starts. `default`: at zero (peft's: A random, B zero). `loftq` (method `qlora` only):
    at the best rank-`r` approximation of what the 4-bit rounding of each base weight lost (LoftQ, one
    alternating step), so the 4-bit base plus the adapter starts near the original weights."""


class QuantSection(_Section):
    """4-bit base for `qlora` (bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bit per weight)."""


class PromptTuningSection(_Section):
    """Soft prompt (method `prompt_tuning`)."""

    num_virtual_tokens: int = Field(16, ge=1, le=512)
    """Length of the learned soft prompt."""
    init_text: str | None = None
    """Initialise the soft prompt from the embeddings of this text (random when absent)."""


TRAIN_METHODS = ("qlora", "lora", "dora", "full", "freeze", "prompt_tuning", "output_layer")


class TrainConfig(_Section):
    """Supervised fine-tuning."""

    method: Literal["qlora", "lora", "dora", "full", "freeze", "prompt_tuning", "output_layer"] = "qlora"
    """`qlora` (LoRA on a 4-bit nf4 base), `lora`, `dora`, `full`, `freeze` (only the top blocks train),
    `prompt_tuning` (soft prompt), `output_layer` (LM head and final norm only)."""
    lora: TrainLoraSection = Field(default_factory=lambda: TrainLoraSection())
    """Adapter shape for qlora/lora/dora."""
    qlora: QuantSection = Field(default_factory=lambda: QuantSection())
    """4-bit base settings for qlora."""
    prompt_tuning: PromptTuningSection = Field(default_factory=lambda: PromptTuningSection())
    """Soft-prompt settings."""
    trainable_layers: int = Field(2, ge=1, le=1024)
    """Method `freeze`: number of top decoder blocks that train (the final norm trains too)."""
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "sgd", "adafactor"] = "adamw_torch"
    """Optimizer (transformers' names)."""
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    """Peak learning rate."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Schedule after warmup."""
    warmup_ratio: float = Field(0.05, ge=0.0, le=0.5)
    """Fraction of steps with linear warmup."""
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    """Decoupled weight decay."""
    max_grad_norm: float = Field(1.0, ge=0.0)
    """Gradient clipping (0 disables it)."""
    batch_size: int = Field(8, ge=1, le=4096)
    """Examples per device per step."""
    grad_accum: int = Field(1, ge=1, le=1024)
    """Gradient accumulation steps."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    epochs: float = Field(1.0, gt=0.0, le=1000.0)
    """Passes over the training data (ignored when `max_steps` is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps."""
    eval_steps: int = Field(50, ge=1)
    """Evaluate the validation loss every N steps."""
    save_steps: int | None = Field(None, ge=1)
    """Checkpoint every N steps (default: `eval_steps`). A killed run resumes from the last checkpoint."""
    early_stopping_patience: int | None = Field(3, ge=1)
    """Stop after this many evaluations without a better validation loss (None disables it); the best
    checkpoint is kept."""
    early_stopping_threshold: float = Field(0.0, ge=0.0)
    """Minimum validation-loss improvement that counts."""
    logging_steps: int = Field(10, ge=1)
    """Log the training loss every N steps."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype; `auto` picks bfloat16 where the CPU/GPU supports it, else float32."""
    threads: int | None = Field(None, ge=1, le=1024)
    """CPU threads for torch (default: the physical cores this process may use)."""
    tensorboard: bool = False
    """Write TensorBoard logs to the stage folder."""


class EvalConfig(_Section):
    """Task metrics of a model on the test split (greedy decoding)."""

    task: Literal["json", "text"] = "json"
    """`json`: the answer is a JSON object (exact-match of parsed JSON, intent accuracy, slot F1, valid
    JSON rate); `text`: exact-match of the stripped answer."""
    max_new_tokens: int = Field(64, ge=1, le=4096)
    """Generation budget per answer."""
    batch_size: int = Field(32, ge=1, le=1024)
    """Prompts decoded together."""
    max_rows: int | None = Field(None, ge=1)
    """Evaluate on at most this many test rows (all when absent)."""
    evaluate_base: bool = True
    """Also measure the untuned base model, for comparison."""
    constrained: bool = True
    """Constrain greedy decoding to `data.answer_schema` (when the data has one), in every runtime: only
    tokens that keep the answer valid under the schema can be picked. False decodes freely (to measure the
    difference)."""


class QualityDrop(_Section):
    """Largest allowed quality loss of a stage vs the tuned model (the `train` stage), in points.

    Points are percentage points of the test-split figures (exact-match 54.0% -> 52.5% is a 1.5-point
    drop; slot F1 counts x100). A stage whose drop exceeds a limit stops the run, naming the figures.
    Changing a limit re-checks the stage's recorded figures; it does not re-run the stage."""

    exact_match: float | None = Field(None, ge=0.0, le=100.0)
    """Exact-match points."""
    intent_accuracy: float | None = Field(None, ge=0.0, le=100.0)
    """Intent-accuracy points (JSON task)."""
    slot_f1: float | None = Field(None, ge=0.0, le=100.0)
    """Slot-F1 points x100 (JSON task)."""
    valid_json: float | None = Field(None, ge=0.0, le=100.0)
    """Valid-JSON-rate points (JSON task)."""
    val_perplexity: float | None = Field(None, ge=0.0)
    """Relative rise of validation perplexity (0.1 allows +10%)."""


class FuseAdapter(_Section):
    """Another LoRA adapter to fuse with the trained one."""

    path: str
    """PEFT adapter folder (relative to the recipe file), trained on the same base model."""
    weight: float = Field(1.0, ge=-10.0, le=10.0)
    """Its weight in the combination."""


class MergeConfig(_Section):
    """Fold the trained adapter(s) into the base; a copy for full-weight methods."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the merged weights."""
    qlora_base: Literal["auto", "original", "nf4"] = "auto"
    """QLoRA adapters were trained against the nf4-dequantized base: `nf4` merges into that round-tripped
    base, `original` into the full-precision base, `auto` merges both ways and keeps the one with the lower
    validation loss (both figures go into the manifest)."""
    adapters: list[FuseAdapter] = Field(default_factory=list)
    """Extra adapters fused with the trained one into a single model (model fusion)."""
    train_weight: float = Field(1.0, ge=-10.0, le=10.0)
    """Weight of the trained adapter when fusing."""
    combination: Literal["linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune"] = (
        "linear"
    )
    """How fused adapters combine (peft `add_weighted_adapter`): `linear` needs equal ranks; `cat`
    concatenates (exact sum of the weighted updates); `svd` re-factorises; `ties`/`dare_*`/`magnitude_prune`
    trim and resolve sign conflicts (use `density`)."""
    density: float = Field(0.5, gt=0.0, le=1.0)
    """Fraction of each update kept by ties/dare/magnitude_prune."""
    max_quality_drop: QualityDrop = Field(default_factory=lambda: QualityDrop())
    """Quality gate vs the tuned model."""


class DepthPrune(_Section):
    """Remove whole decoder blocks."""

    method: Literal["none", "block_influence", "angular"] = "none"
    """`block_influence`: drop the blocks that change their input least (1 - cosine of input and output,
    ShortGPT); `angular`: drop the contiguous run whose input and output are closest in angle (Gromov et
    al.); `none`: keep every block."""
    layers: int | None = Field(None, ge=1)
    """Blocks to remove; absent: as many as the target needs (when `width.mlp` is off)."""


class WidthPrune(_Section):
    """Narrow every decoder block by the same amount (exporters need one shape for all layers)."""

    mlp: bool = True
    """Shrink the MLP intermediate size, keeping each layer's most active neurons (activation norm x
    write-out norm, Minitron-style); it takes whatever the target still needs."""
    kv_groups: int = Field(0, ge=0)
    """Attention KV groups (a KV head and the query heads sharing it) removed from every layer."""
    multiple: int = Field(64, ge=1, le=4096)
    """Round the new MLP width down to a multiple of this. llama.cpp's k-quants need row lengths divisible
    by 256 (the MLP down projection's rows have this width); other widths fall back to other quant types."""
    hidden_size: int | None = Field(None, ge=1)
    """Hidden (residual-stream) channels to keep, the same ones in every block, the embedding and the LM
    head (Minitron's embedding-channel pruning: the channels whose norm outputs are largest). A multiple of
    256 lets every tensor take llama.cpp's k-quants, the embedding and output tensor included. transformers
    must accept the result: Llama, Mistral and Gemma configs need it to be a multiple of the attention head
    count (SmolLM2-135M's 9 heads allow no multiple of 256 below 576; the stage says which sizes fit).
    Absent: keep the hidden size. The MLP width (or depth) fills what it leaves of the target."""


class QatConfig(_Section):
    """Quantization-aware healing: the forward pass sees every weight the export quantizes as that format
    rounds it (llama.cpp's or onnxruntime's own rules, imitated exactly) and the gradient reaches the float
    weight unchanged, so healing repairs the quantized model. At the end the weights are put on the grid
    (`w := dequant(quant(w))`): the saved, measured and exported model is the one healing optimised."""

    format: Literal["none", "q4_0", "q4_k_m", "int4"] = "none"
    """`q4_0` / `q4_k_m`: the `Q4_0` / `Q4_K_M` GGUF as the gguf stage writes it, with llama.cpp's per-tensor
    types (the output tensor at Q6_K or Q8_0, half the attn_v/ffn_down at Q6_K in Q4_K_M, the fallbacks of
    rows not a multiple of 256); `int4`: the int4 ONNX variant with `algorithm: rtn`; `none`: off. Costs a
    scale search over the model at the start and every `eval_steps`."""
    importance_rows: int | None = Field(64, ge=1, le=100000)
    """GGUF formats: training rows of the importance matrix that weights llama.cpp's rounding; set it to
    `export.gguf.imatrix_rows`, or null when `export.gguf.imatrix` is false. Re-measured on the model
    being healed at every refresh."""
    output_type: Literal["Q8_0", "Q6_K", "Q5_0", "Q4_0"] | None = None
    """GGUF formats: the output tensor's type (the tied embedding's too) that the export asks for this quant
    type (`export.gguf.output_types` or `output_type`); null: llama.cpp's choice."""
    block_size: Literal[16, 32, 64, 128, 256] = 32
    """`int4`: as the ONNX variant's `block_size`."""
    symmetric: bool = True
    """`int4`: as the ONNX variant's `symmetric`."""
    quantize_embedding: bool = True
    """`int4`: as the ONNX variant's `quantize_embedding` (the LM head is int4 either way)."""

    @model_validator(mode="before")
    @classmethod
    def _format_alone(cls, value: Any) -> Any:
        return {"format": value} if isinstance(value, str) else value  # `qat: q4_0`


class HealConfig(_Section):
    """Short fine-tune that repairs the pruned model."""

    method: Literal["distill", "sft", "none"] = "distill"
    """`distill`: match the unpruned tuned model's next-token distribution (KL at `temperature`) mixed with
    the SFT loss; `sft`: the SFT loss alone; `none`: no healing."""
    params: Literal["full", "freeze", "lora"] = "full"
    """What trains: every weight, the top `trainable_layers` blocks, or a LoRA adapter merged afterwards."""
    trainable_layers: int = Field(8, ge=1, le=1024)
    """Blocks that train with `params: freeze`."""
    lora: LoraSection = Field(default_factory=lambda: LoraSection())
    """Adapter shape with `params: lora`."""
    temperature: float = Field(2.0, gt=0.0, le=20.0)
    """Softening temperature of both distributions in the KL term."""
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """Weight of the KL term; 1 - alpha weights the SFT loss."""
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    """Peak learning rate."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Schedule after warmup."""
    warmup_ratio: float = Field(0.05, ge=0.0, le=0.5)
    """Fraction of steps with linear warmup."""
    batch_size: int = Field(16, ge=1, le=4096)
    """Examples per step."""
    max_steps: int = Field(100, ge=1)
    """Optimizer steps."""
    eval_steps: int = Field(25, ge=1)
    """Validation loss every N steps (the first evaluation is the unhealed pruned model)."""
    early_stopping_patience: int | None = Field(2, ge=1)
    """Stop after this many evaluations without improvement; the best checkpoint is kept."""
    qat: QatConfig = Field(default_factory=lambda: QatConfig())
    """Quantization-aware healing for one export format (`qat: q4_0` is short for `qat: {format: q4_0}`)."""

    @model_validator(mode="after")
    def _qat_needs_plain_weights(self) -> HealConfig:
        if self.qat.format != "none" and self.method == "none":
            raise ValueError("qat needs healing: set method to distill or sft, or qat to none")
        if self.qat.format != "none" and self.params == "lora":
            raise ValueError(
                "qat needs params full or freeze: the export quantizes the merged weights, which a LoRA "
                "adapter's forward pass never computes"
            )
        return self


class PruneConfig(_Section):
    """Structured pruning (only removed rows, columns and blocks make CPU runtimes faster), then healing."""

    enabled: bool = False
    """Run the prune stage."""
    target_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    """Fraction of the non-embedding parameters to remove."""
    target_params: int | None = Field(None, ge=1)
    """Or: non-embedding parameters to keep."""
    depth: DepthPrune = Field(default_factory=lambda: DepthPrune())
    """Block removal."""
    width: WidthPrune = Field(default_factory=lambda: WidthPrune())
    """MLP and attention width."""
    calibration_rows: int = Field(128, ge=1, le=100000)
    """Training rows (prompt and answer) used to measure importance."""
    heal: HealConfig = Field(default_factory=lambda: HealConfig())
    """Healing fine-tune."""
    max_quality_drop: QualityDrop = Field(default_factory=lambda: QualityDrop())
    """Quality gate vs the tuned model."""


GgufQuant = Literal[
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_1",
    "Q5_0",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_1",
    "Q4_0",
    "IQ4_NL",
    "IQ4_XS",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
]


class GgufConfig(_Section):
    """GGUF files for llama.cpp: a float file written by edgesft, then llama.cpp's own quantizer."""

    enabled: bool = True
    """Run the gguf stage."""
    float_type: Literal["f32", "f16", "bf16"] = "f16"
    """Type of the 2-D weights in the float GGUF the quantizer starts from (norms and biases stay f32)."""
    keep_float: bool = False
    """Ship the float GGUF in the export bundle too."""
    quants: list[GgufQuant] = Field(default_factory=lambda: ["Q4_K_M"])  # type: ignore[arg-type]
    """llama.cpp quantization types to produce (k-quants want row lengths divisible by 256)."""
    output_type: Literal["Q8_0", "Q6_K", "Q5_0", "Q4_0"] | None = None
    """Type of the output tensor (the token embedding when tied), instead of llama.cpp's choice for the
    quant type (Q6_K, or Q8_0 where rows are not a multiple of 256). Smaller files, at some KL cost."""
    output_types: dict[GgufQuant, Literal["Q8_0", "Q6_K", "Q5_0", "Q4_0"]] = Field(default_factory=dict)
    """Per quant type, the output tensor's type instead of `output_type` (e.g. `{Q4_0: Q4_0}` for an
    all-4-bit Q4_0 beside a Q4_K_M with llama.cpp's choice). Every key must be in `quants`."""
    imatrix: bool = True
    """Compute an importance matrix from calibration rows (PyTorch activations) and quantize with it."""
    imatrix_rows: int = Field(64, ge=1, le=100000)
    """Training rows (prompt and answer) the importance matrix is measured on."""
    threads: int | None = Field(None, ge=1, le=1024)
    """Quantizer threads (default: the physical cores this process may use)."""

    @model_validator(mode="after")
    def _output_types_name_quants(self) -> GgufConfig:
        stray = [q for q in self.output_types if q not in self.quants]
        if stray:
            raise ValueError(f"output_types: {', '.join(stray)} not in quants ({', '.join(self.quants)})")
        return self

    def output_type_of(self, quant: str) -> str | None:
        """The output tensor's type for ``quant`` (None: llama.cpp's choice)."""
        return self.output_types.get(quant, self.output_type)  # type: ignore[call-overload, no-any-return]


class OnnxVariant(_Section):
    """One ONNX model folder (with KV cache) in the export, made by onnxruntime-genai's model builder."""

    name: str = Field("int4", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Folder name of this variant."""
    exporter: Literal["genai_builder"] = "genai_builder"
    """onnxruntime-genai's model builder (the only exporter; its graph runs in onnxruntime and genai)."""
    precision: Literal["fp32", "fp16", "int8", "int4"] = "int4"
    """Weights: float, or int8 / int4 weight-only blocks (MatMulNBits)."""
    block_size: Literal[16, 32, 64, 128, 256] = 32
    """int4/int8: weights per quantization block."""
    symmetric: bool = True
    """int4/int8: symmetric blocks (no zero point)."""
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    """int4/int8: MatMulNBits compute type (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations)."""
    algorithm: Literal["rtn", "k_quant", "hqq", "gptq"] = "rtn"
    """int4: round-to-nearest or k-quant (the builder's own), HQQ, or GPTQ on calibration rows (onnxruntime's
    quantizer on the builder's fp32 graph)."""
    quantize_embedding: bool = True
    """int4 with rtn or k_quant: also quantize the token embedding (GatherBlockQuantized), shared with the
    LM head when the model ties them; float embeddings are a third of a 135M model's fp32 file."""

    @field_validator("exporter", mode="before")
    @classmethod
    def _removed_exporter(cls, value: Any) -> Any:
        if value == "optimum":
            raise ValueError(
                "exporter 'optimum' was removed (optimum-onnx cannot run on transformers 5): use "
                "exporter: genai_builder, which makes every precision (fp32, fp16, int8, int4 with rtn, "
                "k_quant, hqq or gptq)"
            )
        return value


class OnnxConfig(_Section):
    """ONNX models for onnxruntime and onnxruntime-genai."""

    enabled: bool = True
    """Run the onnx stage."""
    opset: int | None = Field(None, ge=14, le=30)
    """ONNX opset (default: the exporter's)."""
    context_length: int | None = Field(None, ge=16)
    """Maximum sequence length written to genai_config.json (default: the model's, capped at 4096)."""
    calibration_rows: int = Field(32, ge=1, le=100000)
    """Training rows for GPTQ calibration."""
    variants: list[OnnxVariant] = Field(default_factory=lambda: [OnnxVariant()])
    """Folders to produce."""

    @field_validator("variants")
    @classmethod
    def _distinct_names(cls, value: list[OnnxVariant]) -> list[OnnxVariant]:
        names = [v.name for v in value]
        if len(set(names)) != len(names):
            # checked here, before any training, not when the onnx stage starts
            raise ValueError(f"variant names must differ ({', '.join(names)}); give each a name")
        return value


class ParityLimits(_Section):
    """Teacher-forced agreement an artifact must reach against the PyTorch model it came from."""

    min_top1: float = Field(0.9, ge=0.0, le=1.0)
    """Least fraction of positions whose top-1 token equals the PyTorch model's."""
    max_kl: float = Field(0.1, ge=0.0)
    """Largest mean KL divergence (PyTorch || artifact) per position, in nats."""


class VerifyConfig(_Section):
    """Parity checks of every artifact against the model it came from, each in its own subprocess."""

    enabled: bool = True
    """Run the verify stage."""
    prompts: int = Field(16, ge=1, le=10000)
    """Validation rows used (prompt and answer, teacher-forced)."""
    max_tokens: int = Field(256, ge=8, le=8192)
    """Longest token sequence scored."""
    generate_tokens: int = Field(32, ge=1, le=1024)
    """Greedy tokens compared for float artifacts."""
    generate_prompts: int = Field(4, ge=1, le=1000)
    """Prompts whose greedy continuation is compared."""
    tie_margin: float = Field(0.05, ge=0.0)
    """A greedy mismatch is tolerated where the PyTorch model's top-2 logits are closer than this."""
    limits_float: ParityLimits = Field(default_factory=lambda: ParityLimits(min_top1=0.99, max_kl=0.001))
    """F32/F16/BF16 GGUF and fp32/fp16 ONNX."""
    limits_8bit: ParityLimits = Field(default_factory=lambda: ParityLimits(min_top1=0.95, max_kl=0.02))
    """Q8_0 GGUF and int8 ONNX."""
    limits_6bit: ParityLimits = Field(default_factory=lambda: ParityLimits(min_top1=0.9, max_kl=0.06))
    """Q6_K and Q5_* GGUF."""
    limits_4bit: ParityLimits = Field(default_factory=lambda: ParityLimits(min_top1=0.8, max_kl=0.2))
    """Q4_*, IQ4_*, Q3_K_*, Q2_K GGUF and int4 ONNX."""
    allow_failures: bool = False
    """Keep going (and ship the artifact marked failed) when a check fails."""
    timeout_s: int = Field(900, ge=10)
    """Time limit for one artifact's runtime subprocess."""


class ExportConfig(_Section):
    """Files a laptop or phone runs, verified, and the deployment bundle."""

    gguf: GgufConfig = Field(default_factory=lambda: GgufConfig())
    """llama.cpp."""
    onnx: OnnxConfig = Field(default_factory=lambda: OnnxConfig())
    """onnxruntime / onnxruntime-genai."""
    verify: VerifyConfig = Field(default_factory=lambda: VerifyConfig())
    """Parity verification."""
    primary: str | None = None
    """Artifact the bundle's Modelfile and README lead with (`Q4_K_M`, an ONNX variant name). Default: with
    `max_size_mib`, the verified artifact of lowest mean KL within it; without, the first GGUF quant."""
    max_size_mib: float | None = Field(None, gt=0.0)
    """Size budget of the primary artifact in MiB: the primary is picked from the size/KL Pareto front of the
    artifacts that passed verify (quality first within the budget; the front is recorded in the bundle
    manifest). No verified artifact within the budget stops the export stage with an error."""


class BenchLatency(_Section):
    """Latency and footprint of every artifact, each in its own runtime in a child process."""

    threads: int | None = Field(None, ge=1, le=512)
    """Threads every runtime uses (default: the machine's physical cores)."""
    prompt_lengths: list[int] = Field(default_factory=lambda: [128, 512])
    """Prompt lengths (tokens) whose time to first token and prefill speed are measured."""
    decode_depths: list[int] = Field(default_factory=lambda: [0, 512])
    """Context depths (tokens already in the KV cache) at which decode speed is measured."""
    decode_tokens: int = Field(32, ge=4, le=4096)
    """Tokens decoded per timed decode run."""
    warmup: int = Field(1, ge=0, le=100)
    """Untimed runs before timing."""
    repeats: int = Field(5, ge=1, le=1000)
    """Timed runs per figure (median, min and max are reported)."""


class BenchQuality(_Section):
    """Quality of every artifact in its own runtime, on the same rows for all."""

    test_rows: int | None = Field(100, ge=1)
    """Test rows answered greedily per artifact for the task metrics (null: the whole test split)."""
    primary_test_rows: int | None = Field(None, ge=1)
    """Test rows the run's primary artifact answers, when it should answer more than the others (the
    artifact that ships measured on the whole split, the others compared on fewer). Its figures on the first
    `test_rows` rows are recorded beside, for a like-for-like comparison. Null: as `test_rows`."""
    val_rows: int | None = Field(48, ge=1)
    """Validation rows scored teacher-forced for perplexity and KL divergence (null: all)."""
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    """Answer length limit (default: eval.max_new_tokens)."""


class CheckConfig(_Section):
    """`edgesft check`: what counts as a regression against a baseline."""

    artifacts: list[str] | None = None
    """Artifacts whose latency is gated (keys such as `gguf/phone-Q4_K_M.gguf`; default: the bundle's
    primary artifact)."""
    allowed_slowdown: float = Field(0.10, ge=0.0, le=10.0)
    """Largest decode slowdown tolerated: fail only when the whole 95% interval of the time ratio lies above
    1 + this."""
    rounds: int = Field(12, ge=MIN_ROUNDS, le=1000)
    """Interleaved timing rounds (A B, B A, ...); at least 10, so that the bootstrap interval of the median
    has enough rounds to resample."""
    threads: int | None = Field(None, ge=1, le=512)
    """Threads of every timed runtime (default: the baseline's, else the bench stage's)."""
    decode_tokens: int = Field(32, ge=4, le=4096)
    """Tokens decoded per timed round."""
    size_tolerance: float = Field(0.01, ge=0.0)
    """Largest relative growth of an artifact's file size."""
    quality_tolerance: float = Field(2.0, ge=0.0)
    """Largest drop of a task metric, in percentage points."""
    kl_tolerance: float = Field(0.02, ge=0.0)
    """Largest rise of an artifact's KL divergence (nats)."""
    perplexity_tolerance: float = Field(0.05, ge=0.0)
    """Largest relative rise of an artifact's validation perplexity."""


class BenchConfig(_Section):
    """The bench stage: latency, footprint and quality of every artifact, and the run's report."""

    enabled: bool = True
    """Run the bench stage."""
    torch: bool = True
    """Also measure the float PyTorch models (merged and, after pruning, pruned) as baselines."""
    latency: BenchLatency = Field(default_factory=lambda: BenchLatency())
    """Latency settings."""
    quality: BenchQuality = Field(default_factory=lambda: BenchQuality())
    """Quality settings."""
    check: CheckConfig = Field(default_factory=lambda: CheckConfig())
    """Regression gate settings (`edgesft check`)."""
    timeout_s: int = Field(900, ge=10)
    """Time limit for one artifact's benchmark subprocess."""


# A run name is one folder under run_root: never "." or "..", no separator, nothing hidden.
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Recipe(_Section):
    """A whole pipeline: the stage sections together."""

    name: str | None = Field(None, pattern=RUN_NAME_PATTERN, max_length=128)
    """Run name (folder under `run_root`): letters, digits, `.`, `_`, `-`, starting with a letter or digit;
    defaults to the recipe file name."""
    run_root: str = "runs"
    """Folder that holds `<name>/<stage>/`, relative to the working directory."""
    seed: int = Field(42, ge=0, le=2**32 - 1)
    """Seed for data splits, augmentation and training."""
    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    """Base model."""
    data: DataConfig = Field(default_factory=lambda: DataConfig())
    """Training data."""
    train: TrainConfig = Field(default_factory=lambda: TrainConfig())
    """Fine-tuning."""
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig())
    """Task metrics."""
    merge: MergeConfig = Field(default_factory=lambda: MergeConfig())
    """Adapter merge and fusion."""
    prune: PruneConfig = Field(default_factory=lambda: PruneConfig())
    """Structured pruning and healing."""
    export: ExportConfig = Field(default_factory=lambda: ExportConfig())
    """GGUF and ONNX artifacts, their verification, and the deployment bundle."""
    bench: BenchConfig = Field(default_factory=lambda: BenchConfig())
    """Latency, footprint and quality of every artifact; the report; the CI gate."""

    # Set by the loader, not by the YAML: where relative data paths are resolved from.
    _base_dir: Path = Path(".")

    def resolve_path(self, path: str) -> Path:
        """Return ``path`` resolved against the recipe file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p).resolve()

    @property
    def run_dir(self) -> Path:
        """This run's folder, absolute (a relative ``run_root`` is taken from the working directory): every
        path derived from it stays right in child processes that run elsewhere (the ONNX builder)."""
        return (Path(self.run_root).expanduser() / (self.name or "recipe")).resolve()


# --------------------------------------------------------------------------------------------------------
# Cross-field checks: combinations that cannot work. Each returns (dotted path, message) pairs.


def _combination_problems(recipe: Recipe) -> list[tuple[str, str]]:
    from edgesft.support import architecture_problems

    out: list[tuple[str, str]] = architecture_problems(recipe)
    d, t = recipe.data, recipe.train
    if not d.train and not d.hf_dataset:
        out.append(("data.train", "no training data: give `data.train` files or `data.hf_dataset`"))
    has_val = d.val is not None or d.val_fraction > 0
    if t.early_stopping_patience is not None and not has_val:
        out.append(
            (
                "train.early_stopping_patience",
                "early stopping needs a validation split: set `data.val` or `data.val_fraction` > 0, "
                "or set this to null",
            )
        )
    if t.early_stopping_patience is not None and t.save_steps is not None and t.save_steps % t.eval_steps:
        out.append(
            (
                "train.save_steps",
                f"must be a multiple of eval_steps ({t.eval_steps}) when early stopping keeps the best "
                "checkpoint",
            )
        )
    if t.tensorboard and importlib.util.find_spec("tensorboard") is None:
        out.append(("train.tensorboard", "needs the tensorboard package: pip install tensorboard"))
    if t.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        out.append(("train.method", "qlora needs bitsandbytes: pip install bitsandbytes"))
    if t.lora.init == "loftq" and t.method != "qlora":
        out.append(
            (
                "train.lora.init",
                f"loftq corrects a 4-bit base; train.method {t.method!r} has none (use qlora)",
            )
        )
    if recipe.model.extra_special_tokens and t.method in ("freeze", "prompt_tuning"):
        out.append(
            (
                "model.extra_special_tokens",
                f"method {t.method!r} does not train the embeddings, so new tokens would stay random; "
                "use lora/qlora/dora/full/output_layer",
            )
        )
    if t.dtype == "float16":
        import torch

        if not torch.cuda.is_available():
            out.append(("train.dtype", "float16 training needs a CUDA GPU; use bfloat16 or float32 on CPU"))
    tiny = recipe.model.tiny
    if recipe.model.base == TINY_MODEL:
        if tiny.hidden % tiny.heads:
            out.append(("model.tiny.hidden", f"{tiny.hidden} is not divisible by heads={tiny.heads}"))
        if tiny.heads % tiny.kv_heads:
            out.append(("model.tiny.kv_heads", f"{tiny.kv_heads} does not divide heads={tiny.heads}"))
    if recipe.eval.max_new_tokens >= d.max_length:
        out.append(("eval.max_new_tokens", f"must be below data.max_length ({d.max_length})"))
    out.extend(_post_training_problems(recipe, has_val))
    return out


def _post_training_problems(recipe: Recipe, has_val: bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    t, m, p = recipe.train, recipe.merge, recipe.prune
    if t.method == "prompt_tuning" and p.enabled:
        out.append(
            (
                "prune.enabled",
                "a prompt-tuned model cannot be pruned or exported: its soft prompt is a sequence of learned "
                "input vectors, not a weight change, so no model file can carry it; use train.method lora, "
                "dora or freeze to get a model that merges into plain weights",
            )
        )
    if t.method == "qlora" and t.lora.init == "loftq":
        # The adapter starts at the 4-bit rounding error (W - Q): on the original base it would be added twice,
        # and fusion would rescale or trim it.
        if m.qlora_base == "original":
            out.append(
                ("merge.qlora_base", "a loftq adapter corrects the nf4 base; merge it into nf4 (or auto)")
            )
        if m.adapters or m.train_weight != 1.0:
            out.append(
                (
                    "merge.adapters" if m.adapters else "merge.train_weight",
                    "a loftq adapter carries the 4-bit rounding correction, which fusion or a weight would "
                    "rescale; fuse adapters trained with train.lora.init: default",
                )
            )
    if m.adapters and t.method not in ("qlora", "lora", "dora"):
        out.append(
            ("merge.adapters", f"fusion combines LoRA adapters; train.method {t.method!r} trains no adapter")
        )
    if not p.enabled:
        return out
    if p.target_fraction is not None and p.target_params is not None:
        out.append(("prune.target_params", "give target_fraction or target_params, not both"))
    has_target = p.target_fraction is not None or p.target_params is not None
    if not (has_target or p.depth.layers or p.width.kv_groups or p.width.hidden_size is not None):
        out.append(
            (
                "prune.target_fraction",
                "nothing to prune: set target_fraction, target_params, depth.layers, width.kv_groups or "
                "width.hidden_size",
            )
        )
    if p.depth.layers is not None and p.depth.method == "none":
        out.append(("prune.depth.method", "depth.layers is set: pick block_influence or angular"))
    if has_target and not p.width.mlp and (p.depth.method == "none" or p.depth.layers is not None):
        out.append(
            (
                "prune.target_fraction",
                "no method can fill the target: enable width.mlp, or a depth.method without depth.layers",
            )
        )
    if has_target and p.width.mlp and p.depth.method != "none" and p.depth.layers is None:
        out.append(
            (
                "prune.depth.layers",
                "with width.mlp on, the MLP width fills the target: give the number of blocks to remove",
            )
        )
    if p.heal.method != "none" and p.heal.early_stopping_patience is not None and not has_val:
        out.append(
            ("prune.heal.early_stopping_patience", "needs a validation split (data.val or val_fraction)")
        )
    return out


# --------------------------------------------------------------------------------------------------------
# Loading


def _line_map(text: str) -> dict[str, int]:
    """Map dotted key paths to 1-based line numbers, from the YAML node tree (safe composer)."""
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}{key.value}"
                lines[name] = key.start_mark.line + 1
                walk(value, name + ".")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[f"{prefix}{i}"] = item.start_mark.line + 1
                walk(item, f"{prefix}{i}.")

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config class that owns the field at ``loc`` (for did-you-mean on unknown keys)."""
    cls: Any = Recipe
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        else:
            return None
    return cls


def _format_errors(exc: ValidationError, where: str, lines: dict[str, int], overrides: set[str]) -> list[str]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-before", "function-after"))
        path = ".".join(str(p) for p in loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _section_at(loc[:-1])
            known = list(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            msg = f"unknown key {loc[-1]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            if known:
                msg += f"; known keys: {', '.join(known)}"
        elif err["type"] in ("literal_error", "enum"):
            msg = msg.replace("Input should be", "must be")
        else:
            msg = msg.removeprefix("Value error, ")
            got = err.get("input")
            if not isinstance(got, dict | list):
                msg += f" (got {got!r})"
        out.append(f"{_origin(path, where, lines, overrides)}: {path}: {msg}")
    return out


def _origin(path: str, where: str, lines: dict[str, int], overrides: set[str]) -> str:
    # An error at or under an override, or at a key an override created on its way down.
    if any(path == o or path.startswith(o + ".") or o.startswith(path + ".") for o in overrides):
        return "override"
    parts = path.split(".")
    while parts:  # the nearest key that is in the file
        if ".".join(parts) in lines:
            return f"{where}:{lines['.'.join(parts)]}"
        parts.pop()
    return where


# Bounds on a recipe before it is parsed or expanded: a recipe is a few hundred lines of shallow YAML, so
# these only stop hostile files (an alias bomb expands to billions of nodes, deep nesting overflows the
# recursive YAML composer and the validators).
MAX_RECIPE_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 32


def safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with the bounds above: size, nodes after alias expansion, nesting depth.

    Raises:
        RecipeError: one line naming ``where`` (and the line, for syntax errors).
    """
    if len(text.encode("utf-8")) > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"{where}: {len(text.encode('utf-8'))} bytes; a recipe is at most {MAX_RECIPE_BYTES}"
        )
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise RecipeError(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)") from None
        if node is None:
            return None
        _check_yaml_shape(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"{where}{line}: YAML syntax error: {problem}") from None
    finally:
        loader.dispose()


def _check_yaml_shape(root: yaml.Node, where: str) -> None:
    """Count nodes as if every alias were expanded, and the depth, without expanding or recursing."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _yaml_children(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_NODES:
                line = node.start_mark.line + 1
                raise RecipeError(
                    f"{where}:{line}: expands to more than {MAX_NODES} values (YAML aliases); refused"
                )
            if depth[key] > MAX_DEPTH:
                line = node.start_mark.line + 1
                raise RecipeError(f"{where}:{line}: nested too deeply (at most {MAX_DEPTH} levels)")
            continue
        if key in size:
            continue
        if key in on_path:
            raise RecipeError(f"{where}:{node.start_mark.line + 1}: a YAML alias refers to itself; refused")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> set[str]:
    """Apply ``key.path=value`` overrides in place (values parsed as YAML); return the paths set."""
    paths = set()
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise RecipeError(f"override {item!r}: empty key")
        value = safe_yaml(raw, f"override {key}") if raw.strip() else None
        parts = key.split(".")
        if len(parts) > MAX_DEPTH:
            raise RecipeError(f"override {key[:80]}: {len(parts)} levels deep (at most {MAX_DEPTH})")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
            node = nxt
        node[parts[-1]] = value
        paths.add(key)
    return paths


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise :class:`RecipeError` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read recipe ({e})") from e
    data = safe_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}:1: a recipe must be a mapping of sections, got {type(data).__name__}")
    set_paths = apply_overrides(data, overrides or [])
    lines = _line_map(text)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(*_format_errors(e, str(path), lines, set_paths)) from None
    if recipe.name is None:
        if not re.fullmatch(RUN_NAME_PATTERN, path.stem) or len(path.stem) > 128:
            # "...yaml" has the stem "..": taken as the run name it would make the runs root's parent the
            # run folder. The file name only stands in for a name that is a safe single folder.
            raise RecipeError(
                f"{path}: name: the file name gives the run name {path.stem!r}, which is not a safe folder "
                "name (letters, digits, '.', '_', '-', starting with a letter or digit); set name: in the "
                "recipe"
            )
        recipe.name = path.stem
    recipe._base_dir = path.resolve().parent
    problems = [
        f"{_origin(p, str(path), lines, set_paths)}: {p}: {m}" for p, m in _combination_problems(recipe)
    ]
    for i, f in enumerate(recipe.data.train):
        if not _is_file(recipe.resolve_path(f)):
            problems.append(
                f"{_origin(f'data.train.{i}', str(path), lines, set_paths)}: data.train.{i}: "
                f"file not found: {recipe.resolve_path(f)}"
            )
    for key in ("val", "test"):
        f = getattr(recipe.data, key)
        if f is not None and not _is_file(recipe.resolve_path(f)):
            problems.append(
                f"{_origin(f'data.{key}', str(path), lines, set_paths)}: data.{key}: "
                f"file not found: {recipe.resolve_path(f)}"
            )
    for i, a in enumerate(recipe.merge.adapters):
        folder = recipe.resolve_path(a.path)
        if not _is_file(folder / "adapter_config.json"):
            problems.append(
                f"{_origin(f'merge.adapters.{i}.path', str(path), lines, set_paths)}: merge.adapters.{i}.path: "
                f"no PEFT adapter (adapter_config.json) in {folder}"
            )
    if problems:
        raise RecipeError(*problems)
    return recipe


def _is_file(path: Path) -> bool:
    """Whether a path the recipe names is a file; a name the OS refuses (too long, say) is none."""
    try:
        return path.is_file()
    except OSError:
        return False


def section_fields(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Flatten a config class into (dotted name, type, default, description) rows for the docs."""
    rows = []
    for name, field in cls.model_fields.items():
        ann = field.annotation
        dotted = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(section_fields(ann, dotted + "."))
            continue
        default = field.get_default(call_default_factory=True)
        type_name = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "")
        desc = " ".join((field.description or "").split())
        rows.append((dotted, type_name, repr(default), desc))
    return rows
