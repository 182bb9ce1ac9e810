"""Structured pruning of decoder-only causal LMs: importance scores and in-place model surgery.

Four kinds of structure are removed, each scored on calibration batches:

* whole decoder blocks (depth), scored by ShortGPT's Block Influence (Men et al. 2024, "ShortGPT: Layers in
  Large Language Models are More Redundant Than You Expect") or by the angular distance between a block run's
  input and output (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers");
* MLP neurons (width), scored by their activation size as in Minitron (Muralidharan et al. 2024, "Compact
  Language Models via Pruning and Knowledge Distillation"), weighted by the norm of what they write out;
* KV groups under grouped-query attention: one KV head with the query heads that read it, scored by the size
  of those heads' contribution to the residual stream.
* hidden channels (the residual stream's width, the embedding's columns), scored by the size of the norm
  outputs that carry them, as Minitron scores embedding channels.

Every function keeps all blocks the same shape: each block keeps the same number of neurons and KV groups
(its own best ones). GGUF and ONNX exporters, and transformers' config format, describe a model by one
``intermediate_size`` and one head count for all layers, so a model with ragged blocks could not be exported.

The module knows nothing of recipes: it takes a model, calibration batches and numbers. Which architectures
it takes, and where each keeps its weights, is one table, :data:`ARCHITECTURES`: the surgery reads module
names from it, :func:`plan_pruning` counts parameters from it, and every block of a model is checked to hold
exactly the parameters the table says before anything is scored or cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from edgesft.errors import EdgesftError

Batch = dict[str, Any]  # "input_ids" and "attention_mask": long tensors [batch, seq], right-padded


# --------------------------------------------------------------------------------------------------------
# Parameter counts


def _unique_params(modules: list[Any]) -> int:
    seen: set[int] = set()
    n = 0
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
    return n


def param_counts(model: Any) -> dict[str, int]:
    """``params_total`` (unique parameters; a tied head counted once), ``params_embedding`` (input
    embeddings and LM head) and ``params_non_embedding`` (the rest: blocks and the final norm), under the
    names the stage manifests record them."""
    total = _unique_params([model])
    embedding = _unique_params([model.get_input_embeddings(), model.get_output_embeddings()])
    return {"params_total": total, "params_embedding": embedding, "params_non_embedding": total - embedding}


def non_embedding_params(model: Any) -> int:
    """Parameters outside the input embeddings and the LM head: what pruning targets are measured in."""
    return param_counts(model)["params_non_embedding"]


# --------------------------------------------------------------------------------------------------------
# Architectures


@dataclass(frozen=True)
class LayerPattern:
    """A per-block kind that a runtime derives from a period instead of reading the config.

    ``field`` is the config's per-block list; every ``step``-th block (positions ``step - 1, 2 * step - 1,
    ...``) holds ``nth`` and the others ``other``. llama.cpp reads no such list from a GGUF file that its
    converter writes for these architectures (SmolLM3's RoPE-less blocks, Gemma 2's and 3's global-attention
    blocks: see :mod:`edgesft.llama_convert`), so depth pruning may only remove blocks that leave the survivors
    on that grid.
    """

    field: str
    step: int
    nth: Any = 0
    other: Any = 1
    what: str = "RoPE skipped"


@dataclass(frozen=True)
class Layout:
    """Where one architecture keeps what the surgery touches, and what else its decoder blocks hold.

    Attribute names are relative to the model (``blocks``), to a block (``attention``, ``mlp``, ``norms``) or
    to the block's attention or MLP module (the projections, ``head_norms``).
    """

    blocks: str = "model.layers"
    attention: str = "self_attn"
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    """Query, key and value projections, or one name for a fused one whose rows are [q heads | k heads | v
    heads]."""
    o: str = "o_proj"
    mlp: str = "mlp"
    gate_up: tuple[str, ...] = ("gate_proj", "up_proj")
    """Gate and up projections, or one name for a fused one whose rows are [gate | up]."""
    down: str = "down_proj"
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    """The block's hidden-size norms (sliced, and rescaled, only by hidden-size pruning)."""
    final_norm: str = "model.norm"
    """The norm before the LM head, relative to the model."""
    norm_offset: float = 0.0
    """What the norm adds to its stored weight before scaling (Gemma stores ``w`` and scales by ``1 + w``)."""
    head_norms: tuple[str, ...] = ()
    """Norms over one head's vector (q_norm, k_norm): shared by all heads, so KV-group pruning keeps them."""
    qkv_bias: bool = False
    """A bias on q, k and v whatever the config says (Qwen2)."""
    attention_bias: str | None = None
    """The config flag that puts a bias on q, k, v and o."""
    mlp_bias: str | None = None
    """The config flag that puts a bias on the MLP projections."""
    layer_lists: tuple[str, ...] = ()
    """Config lists with one entry per block (``layer_types``, ...): depth pruning keeps the survivors'."""
    window_layers: str | None = None
    """A config count of leading blocks without the sliding window (Qwen2's ``max_window_layers``)."""
    pattern: LayerPattern | None = None

    @property
    def fused_qkv(self) -> bool:
        return len(self.qkv) == 1

    @property
    def fused_gate_up(self) -> bool:
        return len(self.gate_up) == 1


# transformers 5 builds the sliding/full attention masks and sizes the KV cache from ``layer_types``. Gemma2
# and Gemma3 keep their sliding-window pattern only there (Gemma3's ``sliding_window_pattern`` is read once,
# to fill ``layer_types`` when it is missing, and is not saved), so cutting ``layer_types`` keeps each
# surviving block's kind. Gemma's other quirks are scalars of the config that no pruning changes: embeddings
# scaled by sqrt(hidden_size), attention and final-logit soft-capping, query_pre_attn_scalar.
_GEMMA_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)

ARCHITECTURES: dict[str, Layout] = {
    "llama": Layout(attention_bias="attention_bias", mlp_bias="mlp_bias"),
    "mistral": Layout(),
    "qwen2": Layout(qkv_bias=True, layer_lists=("layer_types",), window_layers="max_window_layers"),
    "qwen3": Layout(
        attention_bias="attention_bias",
        head_norms=("q_norm", "k_norm"),
        layer_lists=("layer_types",),
        window_layers="max_window_layers",
    ),
    "gemma2": Layout(
        attention_bias="attention_bias",
        norms=_GEMMA_NORMS,
        norm_offset=1.0,
        layer_lists=("layer_types",),
        pattern=LayerPattern("layer_types", 2, "full_attention", "sliding_attention", "global attention"),
    ),
    "gemma3_text": Layout(
        attention_bias="attention_bias",
        norms=_GEMMA_NORMS,
        norm_offset=1.0,
        head_norms=("q_norm", "k_norm"),
        layer_lists=("layer_types",),
        pattern=LayerPattern("layer_types", 6, "full_attention", "sliding_attention", "global attention"),
    ),
    "phi3": Layout(qkv=("qkv_proj",), gate_up=("gate_up_proj",)),
    # SmolLM3's layer_types follows no_rope_layers (sliding attention on the RoPE-less blocks when enabled);
    # both lists are cut alike, so they stay consistent.
    "smollm3": Layout(
        attention_bias="attention_bias",
        mlp_bias="mlp_bias",
        layer_lists=("layer_types", "no_rope_layers"),
        pattern=LayerPattern("no_rope_layers", 4),
    ),
    # Granite's embedding, residual, attention and logits multipliers are scalars in the config: pruning
    # changes no width they depend on, and the config keeps them.
    "granite": Layout(attention_bias="attention_bias", mlp_bias="mlp_bias"),
}

SUPPORTED_MODEL_TYPES = tuple(ARCHITECTURES)


def _layout(config: Any) -> Layout:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise EdgesftError(
            f"prune: unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return ARCHITECTURES[model_type]


def _flag(config: Any, name: str | None) -> bool:
    return bool(name and getattr(config, name, False))


def _biases(layout: Layout, config: Any) -> tuple[bool, bool, bool]:
    """Whether (q/k/v, o, MLP) projections carry a bias in this config."""
    attention = _flag(config, layout.attention_bias)
    return layout.qkv_bias or attention, attention, _flag(config, layout.mlp_bias)


def _expected_block_params(layout: Layout, config: Any) -> set[str]:
    """The names of one decoder block's parameters, as the layout and the config's flags predict them."""
    qkv_bias, o_bias, mlp_bias = _biases(layout, config)
    names = {f"{n}.weight" for n in layout.norms}
    for proj, bias in [*((p, qkv_bias) for p in layout.qkv), (layout.o, o_bias)]:
        names |= {f"{layout.attention}.{proj}.weight"} | (
            {f"{layout.attention}.{proj}.bias"} if bias else set()
        )
    names |= {f"{layout.attention}.{n}.weight" for n in layout.head_norms}
    for proj in (*layout.gate_up, layout.down):
        names |= {f"{layout.mlp}.{proj}.weight"} | ({f"{layout.mlp}.{proj}.bias"} if mlp_bias else set())
    return names


def _resolve(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part, None)
    return root


def _blocks(model: Any) -> tuple[Layout, Any]:
    """The architecture's layout and the decoder blocks, after checking that every block holds exactly the
    parameters the layout predicts.

    That check is what makes the rest safe: a weight the table does not know of (a new bias, an extra norm,
    a differently named projection) would be left at its old width by the surgery, or missed by the
    parameter formula, so it is refused here instead.
    """
    import torch

    layout = _layout(model.config)
    layers = _resolve(model, layout.blocks)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise EdgesftError(f"prune: expected decoder blocks at {layout.blocks} in {type(model).__name__}")
    expected = _expected_block_params(layout, model.config)
    for i, layer in enumerate(layers):
        for parent, names in (
            (layout.attention, (*layout.qkv, layout.o)),
            (layout.mlp, (*layout.gate_up, layout.down)),
        ):
            sub = getattr(layer, parent, None)
            if sub is None or not all(isinstance(getattr(sub, n, None), torch.nn.Linear) for n in names):
                raise EdgesftError(f"prune: block {i} has no {parent} with Linear {', '.join(names)}")
        got = {n for n, _ in layer.named_parameters()}
        if got != expected:
            raise EdgesftError(
                f"prune: block {i} of this {model.config.model_type} model holds parameters the pruner does "
                f"not expect (unexpected: {', '.join(sorted(got - expected)) or 'none'}; missing: "
                f"{', '.join(sorted(expected - got)) or 'none'})"
            )
    return layout, layers


def block_projections(model: Any) -> list[dict[str, tuple[str, Any]]]:
    """Every decoder block's projections, in block order: llama.cpp's tensor role (``attn_q``, ``attn_k``,
    ``attn_v`` or a fused ``attn_qkv``, ``attn_output``, ``ffn_gate``, ``ffn_up`` (a fused gate/up projection
    is llama.cpp's ``ffn_up``) and ``ffn_down``) -> (module name, ``nn.Linear``)."""
    layout, layers = _blocks(model)
    qkv = ("attn_qkv",) if layout.fused_qkv else ("attn_q", "attn_k", "attn_v")
    gate_up = ("ffn_up",) if layout.fused_gate_up else ("ffn_gate", "ffn_up")
    roles = [
        *((layout.attention, name, role) for name, role in zip(layout.qkv, qkv, strict=True)),
        (layout.attention, layout.o, "attn_output"),
        *((layout.mlp, name, role) for name, role in zip(layout.gate_up, gate_up, strict=True)),
        (layout.mlp, layout.down, "ffn_down"),
    ]
    return [
        {
            role: (f"{layout.blocks}.{i}.{parent}.{name}", getattr(getattr(layer, parent), name))
            for parent, name, role in roles
        }
        for i, layer in enumerate(layers)
    ]


def _layers(model: Any) -> Any:
    return _blocks(model)[1]


def _attention(layout: Layout, layer: Any) -> Any:
    return getattr(layer, layout.attention)


def _mlp(layout: Layout, layer: Any) -> Any:
    return getattr(layer, layout.mlp)


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _attention_shape(model: Any) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim), checked against the weights of every block."""
    cfg = model.config
    layout, layers = _blocks(model)
    heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, _head_dim(cfg)
    if heads % kv_heads:
        raise EdgesftError(f"prune: {heads} attention heads do not divide into {kv_heads} KV heads")
    want = ((heads + 2 * kv_heads) * d,) if layout.fused_qkv else (heads * d, kv_heads * d, kv_heads * d)
    want = (*want, heads * d)
    for i, layer in enumerate(layers):
        attn = _attention(layout, layer)
        got = (*(getattr(attn, n).out_features for n in layout.qkv), getattr(attn, layout.o).in_features)
        if got != want:
            names = "/".join((*layout.qkv, layout.o))
            raise EdgesftError(
                f"prune: block {i} attention has {names} widths {got}, expected {want} from the config"
            )
    return heads, kv_heads, d


def _unloadable(config: Any, **changes: Any) -> str | None:
    """Why transformers would refuse ``config`` with ``changes`` when the pruned model is saved or loaded
    again (None when it would not), on one line.

    The config class is asked itself, rather than a rule copied here: transformers 5 validates a config when
    it is built and when it is saved, and what it checks differs by architecture (Llama and Gemma refuse a
    hidden_size that is not a multiple of the head count even with an explicit head_dim; Phi-3 checks its
    long-RoPE factors against hidden_size / heads).
    """
    try:
        type(config).from_dict({**config.to_dict(), **changes})
    except Exception as e:  # the validators raise ValueError subclasses, TypeError or their own types
        return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    return None


# --------------------------------------------------------------------------------------------------------
# Calibration passes


@contextmanager
def _calibration_mode(model: Any) -> Iterator[None]:
    """Eval mode, float32 and no autograd; the model's dtypes and training flag are restored afterwards."""
    import torch

    was_training = model.training
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    dtypes = {n: t.dtype for n, t in [*params.items(), *buffers.items()]}
    cast = any(dt.is_floating_point and dt != torch.float32 for dt in dtypes.values())
    model.eval()
    if cast:
        model.float()
    try:
        with torch.inference_mode():
            yield
    finally:
        if cast:
            # Tensor by tensor: a buffer kept in float32 inside a half-precision model must stay float32.
            for n, dt in dtypes.items():
                t = model.get_parameter(n) if n in params else model.get_buffer(n)
                t.data = t.data.to(dt)
        model.train(was_training)


@contextmanager
def _hooks() -> Iterator[list[Any]]:
    """A list to put hook handles in; every handle is removed on exit, also after an error."""
    handles: list[Any] = []
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def _run_batches(model: Any, batches: list[Batch], current: dict[str, Any]) -> Iterator[int]:
    """Run each batch through the model, yielding its number of real tokens after the forward pass.

    ``current["valid"]`` holds the batch's boolean mask of real tokens during the pass, for the hooks: padding
    must stay out of every statistic.
    """
    if not batches:
        raise EdgesftError("prune: no calibration batches")
    device = next(model.parameters()).device
    seen = 0
    for batch in batches:
        if "input_ids" not in batch or "attention_mask" not in batch:
            raise EdgesftError(
                f"prune: a calibration batch needs input_ids and attention_mask, got {list(batch)}"
            )
        mask = batch["attention_mask"].to(device)
        current["valid"] = mask.bool()
        n = int(current["valid"].sum())
        if n == 0:
            continue
        model(input_ids=batch["input_ids"].to(device), attention_mask=mask, use_cache=False)
        seen += n
        yield n
    if not seen:
        raise EdgesftError("prune: the calibration batches hold no real tokens (attention_mask is all 0)")


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Any:
    """A module's first input, whether it was passed by position or by keyword."""
    return args[0] if args else kwargs[name]


def _layer_boundary_states(
    model: Any, batches: list[Batch], on_batch: Callable[[list[Any], list[Any]], None]
) -> None:
    """Call ``on_batch(ins, outs)`` per batch with each block's input and output hidden states at real tokens.

    Each entry is a float32 ``[tokens, hidden]`` tensor. Hooks, not ``output_hidden_states``: transformers
    reports the last block's output after the final norm, which would make the last block look like it
    changes the residual stream far more than it does.
    """
    layers = _layers(model)
    current: dict[str, Any] = {}
    ins: list[Any] = [None] * len(layers)
    outs: list[Any] = [None] * len(layers)

    def pre_hook(i: int) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ins[i] = _first_input(args, kwargs, "hidden_states")[current["valid"]]

        return hook

    def post_hook(i: int) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output  # blocks return tuples in some versions
            outs[i] = out[current["valid"]]

        return hook

    with _hooks() as handles, _calibration_mode(model):
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            handles.append(layer.register_forward_hook(post_hook(i), with_kwargs=True))
        for _ in _run_batches(model, batches, current):
            on_batch(ins, outs)


def _cosines(a: Any, b: Any) -> Any:
    """Per-token cosine similarity, in float64: near-identity blocks differ from 1 by less than float32 eps."""
    import torch

    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------------------------
# Depth: which blocks to remove


def block_influence(model: Any, batches: list[Batch]) -> list[float]:
    """ShortGPT's Block Influence per block: 1 - mean cosine(block input, block output) over real tokens.

    A block whose output points where its input did adds little to the residual stream. Higher = more
    important.
    """
    sums = [0.0] * len(_layers(model))
    tokens = 0

    def on_batch(ins: list[Any], outs: list[Any]) -> None:
        nonlocal tokens
        for i, (x, y) in enumerate(zip(ins, outs, strict=True)):
            sums[i] += float(_cosines(x, y).sum())
        tokens += ins[0].shape[0]

    _layer_boundary_states(model, batches, on_batch)
    return [1.0 - s / tokens for s in sums]


def _check_run_length(n: int, n_layers: int) -> None:
    if not 1 <= n < n_layers:
        raise EdgesftError(f"prune: can remove 1 to {n_layers - 1} of the model's {n_layers} blocks, got {n}")


def angular_distances(model: Any, batches: list[Batch], n: int) -> list[float]:
    """Gromov et al.'s angular distance for each run of ``n`` contiguous blocks, indexed by its first block.

    ``d(l)`` = mean over real tokens of arccos(cosine(input of block l, output of block l+n-1)) / pi. Lower =
    the run changes the representation less, so removing it (and healing with a little fine-tuning) costs
    less.
    """
    n_layers = len(_layers(model))
    _check_run_length(n, n_layers)
    sums = [0.0] * (n_layers - n + 1)
    tokens = 0

    def on_batch(ins: list[Any], outs: list[Any]) -> None:
        nonlocal tokens
        for start in range(len(sums)):
            sums[start] += float(_cosines(ins[start], outs[start + n - 1]).arccos().sum()) / math.pi
        tokens += ins[0].shape[0]

    _layer_boundary_states(model, batches, on_batch)
    return [s / tokens for s in sums]


def _position_rule(layout: Layout, config: Any) -> Callable[[int, int], bool] | None:
    """``fits(block, position)``: whether original block ``block`` may sit at ``position`` once blocks are
    removed; None when any block may sit anywhere (every architecture but those with a :class:`LayerPattern`).
    """
    pattern = layout.pattern
    if pattern is None:
        return None
    step, flags = pattern.step, getattr(config, pattern.field, None)
    n_layers = config.num_hidden_layers
    if not isinstance(flags, list) or len(flags) < n_layers:
        raise EdgesftError(
            f"prune: {config.model_type} needs {pattern.field} with one entry per block ({n_layers}), "
            f"got {flags!r}"
        )
    return lambda block, position: (
        flags[block] == (pattern.nth if (position + 1) % step == 0 else pattern.other)
    )


def _misplaced(rule: Callable[[int, int], bool] | None, kept: list[int]) -> list[int]:
    """The kept blocks (original numbers) that the position rule would refuse where they end up."""
    return [] if rule is None else [i for j, i in enumerate(kept) if not rule(i, j)]


def _cheapest_removable(scores: list[float], n: int, rule: Callable[[int, int], bool]) -> list[int] | None:
    """The ``n`` blocks of least total score whose removal leaves every survivor where ``rule`` allows it,
    or None when no such set exists.

    Dynamic programming over (blocks seen, blocks kept): a block is either removed (its score is paid) or
    kept at the next free position, which the rule must allow. Quadratic in the block count.
    """
    n_layers = len(scores)
    keep = n_layers - n
    # best[j]: (cost, removed blocks) over the blocks seen so far with j of them kept; ties go to the
    # lexicographically smaller set, so the choice is deterministic.
    best: list[tuple[float, list[int]] | None] = [(0.0, [])] + [None] * keep
    for i in range(n_layers):
        nxt: list[tuple[float, list[int]] | None] = [None] * (keep + 1)
        for j, state in enumerate(best):
            if state is None:
                continue
            cost, removed = state
            options = []
            if len(removed) < n:
                options.append((j, (cost + scores[i], [*removed, i])))
            if j < keep and rule(i, j):
                options.append((j + 1, (cost, removed)))
            for slot, cand in options:
                current = nxt[slot]
                if current is None or cand < current:
                    nxt[slot] = cand
        best = nxt
    final = best[keep]
    return None if final is None else final[1]


def _off_grid_error(config: Any, layout: Layout, drop: list[int]) -> EdgesftError:
    """The one-line refusal of removing ``drop`` under the layout's :class:`LayerPattern`."""
    assert layout.pattern is not None
    step = layout.pattern.step
    kept = [i for i in range(config.num_hidden_layers) if i not in drop]
    misplaced = _misplaced(_position_rule(layout, config), kept)
    return EdgesftError(
        f"prune: llama.cpp runs {config.model_type} with {layout.pattern.what} on every {step}th block only "
        f"({step - 1}, {2 * step - 1}, {3 * step - 1}, ...); removing blocks {drop} would move blocks "
        f"{misplaced} (original numbers) off that pattern; remove a run of a multiple of {step} blocks, or "
        "blocks at the end"
    )


def _by_block_influence(model: Any, batches: list[Batch], n: int) -> tuple[list[int], list[float]]:
    scores = block_influence(model, batches)
    _check_run_length(n, len(scores))
    lowest = sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:n])
    layout = _layout(model.config)
    rule = _position_rule(layout, model.config)
    if rule is None or not _misplaced(rule, [i for i in range(len(scores)) if i not in lowest]):
        return lowest, scores
    # SmolLM3, Gemma: the n least influential blocks would break llama.cpp's fixed grid; take the set of
    # least total influence among those that keep it.
    chosen = _cheapest_removable(scores, n, rule)
    if chosen is None:
        raise _off_grid_error(model.config, layout, lowest)
    return chosen, scores


def _by_angular_distance(model: Any, batches: list[Batch], n: int) -> tuple[list[int], list[float]]:
    scores = angular_distances(model, batches, n)
    layout = _layout(model.config)
    rule = _position_rule(layout, model.config)
    n_layers = len(scores) + n - 1

    def allowed(start: int) -> bool:
        return not _misplaced(rule, [i for i in range(n_layers) if not start <= i < start + n])

    # Under a fixed grid only some runs may go (a run of a multiple of the step, or one at the end, when
    # the model starts on the grid); the least distant of those is taken. Scores are reported for every start.
    starts = [s for s in range(len(scores)) if allowed(s)]
    if not starts:
        first = min(range(len(scores)), key=lambda i: (scores[i], i))
        raise _off_grid_error(model.config, layout, list(range(first, first + n)))
    start = min(starts, key=lambda i: (scores[i], i))
    return list(range(start, start + n)), scores


LAYER_METHODS: dict[str, Callable[[Any, list[Batch], int], tuple[list[int], list[float]]]] = {
    "block_influence": _by_block_influence,
    "angular": _by_angular_distance,
}


def choose_layers(method: str, model: Any, batches: list[Batch], n: int) -> tuple[list[int], list[float]]:
    """The ``n`` blocks to remove by ``method`` (a key of :data:`LAYER_METHODS`), sorted, and the scores.

    ``block_influence``: the ``n`` blocks of lowest Block Influence, wherever they are (scores: one per
    block). ``angular``: the contiguous run of ``n`` blocks of least angular distance (scores: one per start).

    For an architecture whose runtime fixes which blocks skip RoPE (SmolLM3 in llama.cpp, see
    :class:`LayerPattern`), only removals that keep that grid are chosen from: the set of least total Block
    Influence among them, or the least distant run among the allowed ones.
    """
    if method not in LAYER_METHODS:
        raise EdgesftError(f"prune: unknown layer method {method!r}; known: {', '.join(LAYER_METHODS)}")
    return LAYER_METHODS[method](model, batches, n)


def remove_layers(model: Any, indices: list[int]) -> None:
    """Remove the blocks at ``indices`` in place and renumber the rest.

    Attention modules keep a ``layer_idx`` that indexes the KV cache; left stale, generation with a cache
    reads another block's keys (or runs off the end of the cache). The architecture's per-block config lists
    (``layer_types``, which also sizes the cache and picks each block's attention mask; SmolLM3's
    ``no_rope_layers``) keep the survivors' entries, and Qwen's ``max_window_layers`` counts the survivors
    below it. Nothing is changed when the result would be refused: by transformers (the new config is
    validated first), or by llama.cpp's fixed per-block grid (SmolLM3, Gemma 2 and 3).
    """
    import torch

    layout, layers = _blocks(model)
    n_layers = len(layers)
    drop = set(indices)
    if len(drop) != len(indices) or not all(0 <= i < n_layers for i in drop):
        raise EdgesftError(f"prune: layer indices must be distinct and in 0..{n_layers - 1}, got {indices}")
    if not drop:
        return
    _check_run_length(len(drop), n_layers)
    kept = [i for i in range(n_layers) if i not in drop]
    cfg = model.config
    if cfg.num_hidden_layers != n_layers:
        raise EdgesftError(f"prune: the model has {n_layers} blocks, its config says {cfg.num_hidden_layers}")
    if _misplaced(_position_rule(layout, cfg), kept):
        raise _off_grid_error(cfg, layout, sorted(drop))

    changes: dict[str, Any] = {"num_hidden_layers": len(kept)}
    for name in layout.layer_lists:
        values = getattr(cfg, name, None)
        if values is None:
            continue
        if len(values) < n_layers:
            raise EdgesftError(f"prune: config.{name} has {len(values)} entries for {n_layers} blocks")
        changes[name] = [values[i] for i in kept]
    if layout.window_layers and getattr(cfg, layout.window_layers, None) is not None:
        # Qwen: blocks from max_window_layers on use the sliding window; the kept ones keep their kind.
        changes[layout.window_layers] = sum(1 for i in kept if i < getattr(cfg, layout.window_layers))
    problem = _unloadable(cfg, **changes)
    if problem:
        raise EdgesftError(
            f"prune: removing blocks {sorted(drop)} leaves a config transformers refuses: {problem}"
        )

    parent_path, _, attr = layout.blocks.rpartition(".")
    parent = _resolve(model, parent_path) if parent_path else model
    setattr(parent, attr, torch.nn.ModuleList([layers[i] for i in kept]))
    for new_idx, layer in enumerate(getattr(parent, attr)):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    for name, value in changes.items():
        setattr(cfg, name, value)
    if getattr(cfg, "layer_types", None) is not None and hasattr(parent, "has_sliding_layers"):
        parent.has_sliding_layers = "sliding_attention" in cfg.layer_types


# --------------------------------------------------------------------------------------------------------
# Width: importance of MLP neurons and KV groups


def _linear_input_sums(
    model: Any, batches: list[Batch], linear: Callable[[Any], Any], stat: Callable[[Any, Any], Any]
) -> tuple[list[Any], int]:
    """Per block, the sum over real tokens of ``stat(input, module)`` at the Linear ``linear(block)`` picks,
    and the number of real tokens: the calibration pass both width importances share."""
    layers = _layers(model)
    current: dict[str, Any] = {}
    sums: list[Any] = [None] * len(layers)
    tokens = 0

    def hook_for(i: int) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            s = stat(_first_input(args, kwargs, "input")[current["valid"]], module)
            sums[i] = s if sums[i] is None else sums[i] + s

        return hook

    with _hooks() as handles, _calibration_mode(model):
        for i, layer in enumerate(layers):
            handles.append(linear(layer).register_forward_pre_hook(hook_for(i), with_kwargs=True))
        for n in _run_batches(model, batches, current):
            tokens += n
    return sums, tokens


def mlp_importance(model: Any, batches: list[Batch]) -> list[Any]:
    """Per block, per MLP neuron j: RMS over real tokens of its activation, times ``||down_proj[:, j]||``.

    The activation is the input of ``down_proj``, act(gate(x)) * up(x) (also where the gate and up
    projections are one fused matrix): Minitron's activation-based importance, weighted by how much the
    neuron can write into the residual stream so that a large activation read out by near-zero weights still
    counts as unimportant. Float32 tensors on the CPU.
    """
    layout, layers = _blocks(model)

    def down(layer: Any) -> Any:
        return getattr(_mlp(layout, layer), layout.down)

    def sum_of_squares(a: Any, module: Any) -> Any:
        a = a.double()
        return (a * a).sum(dim=0)

    sumsq, tokens = _linear_input_sums(model, batches, down, sum_of_squares)
    out = []
    for layer, s in zip(layers, sumsq, strict=True):
        write_norm = down(layer).weight.detach().double().norm(dim=0)
        out.append(((s / tokens).sqrt() * write_norm).float().cpu())
    return out


def head_group_importance(model: Any, batches: list[Batch]) -> list[Any]:
    """Per block, per KV group: the mean over real tokens of ``||W_o[:, head] @ head output||``, summed
    over the group's query heads.

    A KV group is one KV head and the ``heads // kv_heads`` query heads that read it (transformers repeats KV
    head g for query heads g*r .. g*r+r-1). The group is the unit removed because dropping a KV head strands
    its query heads, and dropping only query heads would leave blocks with different head counts per KV head.
    Float32 tensors on the CPU.
    """
    import torch

    layout = _layout(model.config)
    heads, kv_heads, d = _attention_shape(model)

    def o_proj(layer: Any) -> Any:
        return getattr(_attention(layout, layer), layout.o)

    def head_output_norms(x: Any, module: Any) -> Any:
        w = module.weight
        # One head at a time: a [tokens, heads, hidden] product would not fit for long calibration sets.
        norms = [(x[:, h * d : (h + 1) * d] @ w[:, h * d : (h + 1) * d].T).norm(dim=-1) for h in range(heads)]
        return torch.stack([n.double().sum() for n in norms])

    sums, tokens = _linear_input_sums(model, batches, o_proj, head_output_norms)
    return [(s / tokens).view(kv_heads, heads // kv_heads).sum(dim=1).float().cpu() for s in sums]


def _top_sorted(importance: Any, k: int) -> Any:
    """Indices of the ``k`` largest scores, in their original order (ties go to the lower index)."""
    import torch

    order = torch.argsort(importance.detach().double().cpu(), descending=True, stable=True)
    return order[:k].sort().values


def _check_importance(importance: list[Any], n_layers: int, size: int, what: str) -> None:
    if len(importance) != n_layers or any(tuple(t.shape) != (size,) for t in importance):
        shapes = [tuple(t.shape) for t in importance]
        raise EdgesftError(
            f"prune: expected {n_layers} {what} importance vectors of length {size}, got shapes {shapes}"
        )


def _slice_linear(linear: Any, dim: int, index: Any) -> None:
    """Keep output rows (``dim`` 0, bias too) or input columns (``dim`` 1) ``index`` of a Linear, in place."""
    import torch

    index = index.to(linear.weight.device)
    with torch.no_grad():
        weight = linear.weight.index_select(dim, index)
        linear.weight = torch.nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
        if dim == 0:
            if linear.bias is not None:
                bias = linear.bias.index_select(0, index)
                linear.bias = torch.nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
            linear.out_features = len(index)
        else:
            linear.in_features = len(index)


def prune_mlp(model: Any, new_size: int, importance: list[Any]) -> None:
    """Shrink every block's MLP to ``new_size`` neurons in place, each block keeping its own most important.

    ``importance`` comes from :func:`mlp_importance`. Kept neurons stay in their original order. A fused
    gate/up projection (Phi-3) keeps the same neurons' rows in both of its halves.
    """
    import torch

    layout, layers = _blocks(model)
    size = model.config.intermediate_size
    if not 1 <= new_size <= size:
        raise EdgesftError(f"prune: MLP width must be in 1..{size}, got {new_size}")
    rows = 2 * size if layout.fused_gate_up else size
    for i, layer in enumerate(layers):
        mlp = _mlp(layout, layer)
        got = (*(getattr(mlp, n).out_features for n in layout.gate_up), getattr(mlp, layout.down).in_features)
        if got != (*(rows for _ in layout.gate_up), size):
            raise EdgesftError(
                f"prune: block {i} MLP has {'/'.join((*layout.gate_up, layout.down))} widths {got}, the "
                f"config says {size} neurons"
            )
    _check_importance(importance, len(layers), size, "MLP")
    for layer, scores in zip(layers, importance, strict=True):
        keep = _top_sorted(scores, new_size)
        mlp = _mlp(layout, layer)
        if layout.fused_gate_up:
            _slice_linear(getattr(mlp, layout.gate_up[0]), 0, torch.cat([keep, size + keep]))
        else:
            for name in layout.gate_up:
                _slice_linear(getattr(mlp, name), 0, keep)
        _slice_linear(getattr(mlp, layout.down), 1, keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = new_size
    model.config.intermediate_size = new_size


def _kv_groups_problem(config: Any, kv_groups: int) -> str | None:
    """Why removing ``kv_groups`` KV groups per block would give a model transformers cannot load again, with
    the counts that would fit, on one line; None when it loads."""
    heads, kv_heads, d = config.num_attention_heads, config.num_key_value_heads, _head_dim(config)
    per_group = heads // kv_heads

    def problem(g: int) -> str | None:
        kv = kv_heads - g
        return _unloadable(config, num_attention_heads=kv * per_group, num_key_value_heads=kv, head_dim=d)

    if kv_groups == 0:
        return None  # the model as it is: it was loaded, so it loads
    why = problem(kv_groups)
    if why is None:
        return None
    fits = [g for g in range(kv_heads) if problem(g) is None]
    return (
        f"prune: removing {kv_groups} of {kv_heads} KV groups leaves {(kv_heads - kv_groups) * per_group} "
        f"attention heads, and transformers refuses that {config.model_type} config ({why}); kv_groups that "
        f"fit: {', '.join(map(str, fits)) or 'none'}"
    )


def prune_kv_groups(model: Any, keep: int, importance: list[Any]) -> None:
    """Keep ``keep`` KV groups in every block, in place, each block keeping its own most important.

    ``importance`` comes from :func:`head_group_importance`. The query heads per KV head and the head size
    stay; ``config.head_dim`` is written out because hidden_size / num_attention_heads no longer gives it.
    Per-head norms (q_norm, k_norm) act on one head's vector with weights shared by all heads, so they stay
    as they are. A fused qkv projection (Phi-3) keeps the kept heads' rows in each of its three parts.
    """
    import torch

    layout, layers = _blocks(model)
    heads, kv_heads, d = _attention_shape(model)
    per_group = heads // kv_heads
    if not 1 <= keep <= kv_heads:
        raise EdgesftError(f"prune: can keep 1 to {kv_heads} KV groups, got {keep}")
    _check_importance(importance, len(layers), kv_heads, "KV group")
    problem = _kv_groups_problem(model.config, kv_heads - keep)
    if problem:
        raise EdgesftError(problem)
    offsets_d = torch.arange(d)
    offsets_r = torch.arange(per_group)
    for layer, scores in zip(layers, importance, strict=True):
        groups = _top_sorted(scores, keep)
        kv_rows = (groups[:, None] * d + offsets_d).flatten()
        q_heads = (groups[:, None] * per_group + offsets_r).flatten()
        q_rows = (q_heads[:, None] * d + offsets_d).flatten()
        attn = _attention(layout, layer)
        if layout.fused_qkv:
            k_start, v_start = heads * d, (heads + kv_heads) * d
            rows = torch.cat([q_rows, k_start + kv_rows, v_start + kv_rows])
            _slice_linear(getattr(attn, layout.qkv[0]), 0, rows)
        else:
            for name, index in zip(layout.qkv, (q_rows, kv_rows, kv_rows), strict=True):
                _slice_linear(getattr(attn, name), 0, index)
        _slice_linear(getattr(attn, layout.o), 1, q_rows)
        # transformers (4.57 and 5.x) infers the head count from q_proj's output (view(..., -1, head_dim))
        # and keeps only head_dim and num_key_value_groups, which do not change; older versions stored head
        # counts, and Phi-3 still keeps num_key_value_heads (to split its fused qkv output) and reads the
        # query width from the shared config.
        for name, value in (
            ("num_heads", keep * per_group),
            ("num_attention_heads", keep * per_group),
            ("num_key_value_heads", keep),
        ):
            if hasattr(attn, name):
                setattr(attn, name, value)
    cfg = model.config
    cfg.num_key_value_heads = keep
    cfg.num_attention_heads = keep * per_group
    cfg.head_dim = d


# --------------------------------------------------------------------------------------------------------
# Hidden size: channels of the residual stream


@dataclass(frozen=True)
class HiddenImportance:
    """What :func:`prune_hidden` needs, from one calibration pass of :func:`hidden_importance`.

    ``scores``: per hidden channel, the sum over every hidden-size norm (each block's, then the final one) of
    the RMS over real tokens of that norm's output channel. ``energy``: per norm (by module name), the sum over
    real tokens of its input squared, per channel: it sizes each norm's rescale once channels are gone.
    """

    scores: Any
    energy: dict[str, Any]


def _hidden_norms(model: Any) -> dict[str, Any]:
    """Every norm over the hidden size, by module name: each block's (the layout's ``norms``), then the final
    one."""
    layout, layers = _blocks(model)
    norms = {
        f"{layout.blocks}.{i}.{name}": getattr(layer, name)
        for i, layer in enumerate(layers)
        for name in layout.norms
    }
    final = _resolve(model, layout.final_norm)
    if final is None or getattr(final, "weight", None) is None:
        raise EdgesftError(f"prune: expected the final norm at {layout.final_norm} in {type(model).__name__}")
    norms[layout.final_norm] = final
    return norms


def hidden_importance(model: Any, batches: list[Batch]) -> HiddenImportance:
    """Importance of each hidden channel (Minitron's embedding-channel score: the size of the norm outputs
    that channel carries, summed over the model's norms), and each norm's input energy per channel.

    Every block reads the residual stream through a norm, so a channel whose normalised value is small
    everywhere is one that no projection, and not the LM head, sees much of. Float32 tensors on the CPU.
    """
    norms = _hidden_norms(model)
    size = model.config.hidden_size
    current: dict[str, Any] = {}
    out_sq: dict[str, Any] = {}
    in_sq: dict[str, Any] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            x = args[0][current["valid"]].double()
            y = output[current["valid"]].double()
            for sums, v in ((in_sq, x), (out_sq, y)):
                s = (v * v).sum(dim=0)
                sums[name] = s if name not in sums else sums[name] + s

        return hook

    tokens = 0
    with _hooks() as handles, _calibration_mode(model):
        for name, norm in norms.items():
            if tuple(norm.weight.shape) != (size,):
                raise EdgesftError(
                    f"prune: {name} has a weight of shape {tuple(norm.weight.shape)}, the config says a hidden "
                    f"size of {size}"
                )
            handles.append(norm.register_forward_hook(hook_for(name)))
        for n in _run_batches(model, batches, current):
            tokens += n
    scores = sum((out_sq[name] / tokens).sqrt() for name in norms)
    return HiddenImportance(
        scores=scores.float().cpu(), energy={name: in_sq[name].float().cpu() for name in norms}
    )


def _hidden_size_problem(config: Any, new_size: int, **changes: Any) -> str | None:
    """Why transformers would refuse ``config`` at hidden size ``new_size`` (with the head size written out,
    and ``changes`` such as the head counts left by KV-group pruning), and the hidden sizes below the current
    one that it takes and that llama.cpp's k-quants take (multiples of 256), on one line; None when it
    loads."""
    size, d = config.hidden_size, _head_dim(config)
    if new_size == size and not changes:
        return None
    why = _unloadable(config, hidden_size=new_size, head_dim=d, **changes)
    if why is None:
        return None
    fits = [
        h for h in range(256, size, 256) if _unloadable(config, hidden_size=h, head_dim=d, **changes) is None
    ]
    heads = changes.get("num_attention_heads", config.num_attention_heads)
    return (
        f"prune: hidden_size {new_size} with {heads} attention heads gives a {config.model_type} config that "
        f"transformers refuses ({why}); hidden sizes below {size} that it takes and that are multiples of 256: "
        f"{', '.join(map(str, fits)) or 'none'}"
    )


def _slice_norm(norm: Any, keep: Any, scale: float, offset: float) -> None:
    """Keep the channels ``keep`` of a norm's weight and multiply its effective gain by ``scale``."""
    import torch

    with torch.no_grad():
        w = norm.weight.index_select(0, keep.to(norm.weight.device))
        w = (w + offset) * scale - offset
        norm.weight = torch.nn.Parameter(w, requires_grad=norm.weight.requires_grad)


def prune_hidden(model: Any, new_size: int, importance: HiddenImportance) -> None:
    """Keep the ``new_size`` most important hidden channels in place (:func:`hidden_importance`), the same
    ones everywhere: they are one residual stream.

    What reads the stream loses input columns (every q/k/v and gate/up projection, the LM head), what writes
    it loses output rows (o and down projections, their biases, the embedding's columns), and every norm over
    it loses the same channels. Two things the shapes alone would change are put back:

    * An RMS norm divides by the root mean square over the channels it sees. With the small channels gone
      that mean is taken over fewer, larger values, so each norm's gain is multiplied by its
      ``rms(kept channels) / rms(all channels)`` over the calibration tokens (exact where the removed
      channels carried nothing).
    * Gemma scales its embeddings by sqrt(hidden_size): the embedding is multiplied by
      sqrt(old / new) so that the stream starts where it did, and, where the LM head shares that matrix, the
      final norm's gain divided by the same factor so that the logits do not change.

    ``config.head_dim`` is written out: hidden_size / num_attention_heads no longer gives it.
    """
    import torch

    layout, layers = _blocks(model)
    _attention_shape(model)
    cfg = model.config
    size, d = cfg.hidden_size, _head_dim(cfg)
    if not 1 <= new_size <= size:
        raise EdgesftError(f"prune: hidden_size must be in 1..{size}, got {new_size}")
    norms = _hidden_norms(model)
    scores = importance.scores
    if tuple(scores.shape) != (size,) or set(importance.energy) != set(norms):
        raise EdgesftError(
            f"prune: expected hidden importance over {size} channels and {len(norms)} norms, got "
            f"{tuple(scores.shape)} and {len(importance.energy)}"
        )
    if new_size == size:
        return
    problem = _hidden_size_problem(cfg, new_size)
    if problem:
        raise EdgesftError(problem)
    keep = _top_sorted(scores, new_size)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    scaled = getattr(embed, "embed_scale", None) is not None  # Gemma's sqrt(hidden_size) embedding scale
    embed_factor = math.sqrt(size / new_size) if scaled else 1.0

    for name, norm in norms.items():
        energy = importance.energy[name].double()
        total = float(energy.sum())
        kept = float(energy[keep].sum())
        gain = math.sqrt((kept / new_size) / (total / size)) if total > 0 and kept > 0 else 1.0
        if name == layout.final_norm and tied:
            gain /= embed_factor
        _slice_norm(norm, keep, gain, layout.norm_offset)
    for layer in layers:
        attn, mlp = _attention(layout, layer), _mlp(layout, layer)
        for name in layout.qkv:
            _slice_linear(getattr(attn, name), 1, keep)
        _slice_linear(getattr(attn, layout.o), 0, keep)
        for name in layout.gate_up:
            _slice_linear(getattr(mlp, name), 1, keep)
        _slice_linear(getattr(mlp, layout.down), 0, keep)
    with torch.no_grad():
        w = embed.weight.index_select(1, keep.to(embed.weight.device)) * embed_factor
        embed.weight = torch.nn.Parameter(w, requires_grad=embed.weight.requires_grad)
        embed.embedding_dim = new_size
        if scaled:
            embed.embed_scale.fill_(new_size**0.5)
            if hasattr(embed, "scalar_embed_scale"):
                embed.scalar_embed_scale = new_size**0.5
    if tied:
        head.weight = embed.weight
        head.in_features = new_size
    elif head is not None:
        _slice_linear(head, 1, keep)
    for module in model.modules():  # sizes some modules keep from their construction
        if getattr(module, "hidden_size", None) == size:
            module.hidden_size = new_size
    cfg.hidden_size = new_size
    cfg.head_dim = d


# --------------------------------------------------------------------------------------------------------
# Planning: the pruned shape from a parameter target


def _non_embedding_formula(config: Any) -> Callable[..., int]:
    """``f(layers, intermediate, kv_heads, hidden=config.hidden_size)`` -> non-embedding parameters of
    ``config``'s architecture with those sizes (query heads per KV head and head size fixed).

    Per block: the attention projections (a fused qkv has as many weights as three separate ones) and their
    biases, the per-head norms (one head_dim vector each), the MLP (three matrices, fused or not) and its
    biases, and the layout's hidden-size norms; then the final norm. :func:`_blocks` checks that a model's
    blocks hold exactly these parameters.
    """
    layout = _layout(config)
    heads, kv_heads, d = config.num_attention_heads, config.num_key_value_heads, _head_dim(config)
    per_group = heads // kv_heads
    qkv_bias, o_bias, mlp_bias = _biases(layout, config)
    head_norms = len(layout.head_norms) * d

    def count(layers: int, intermediate: int, kv: int, h: int = config.hidden_size) -> int:
        norms = len(layout.norms) * h
        q_width, kv_width = kv * per_group * d, kv * d
        attention = 2 * h * q_width + 2 * h * kv_width + head_norms
        attention += (q_width + 2 * kv_width) * qkv_bias + h * o_bias
        mlp = 3 * h * intermediate + (2 * intermediate + h) * mlp_bias
        return layers * (attention + mlp + norms) + h  # and the final norm

    return count


def plan_pruning(
    config: Any,
    target_fraction: float | None = None,
    target_params: int | None = None,
    depth_layers: int | None = None,
    depth: bool = False,
    mlp: bool = False,
    kv_groups: int = 0,
    multiple: int = 1,
    hidden_size: int | None = None,
) -> dict[str, Any]:
    """The pruned shape for a transformers config, computed from a parameter formula without touching weights.

    Args:
        config: the model's config (an architecture of :data:`ARCHITECTURES`).
        target_fraction: fraction of the non-embedding parameters to remove.
        target_params: non-embedding parameters to keep. At most one of the two targets; with neither, only
            the explicit counts apply.
        depth_layers: blocks to remove (needs ``depth``); when None and ``depth`` is on, the smallest number
            of blocks that reaches the target.
        depth: whether blocks are removed.
        mlp: whether MLP width fills what the explicit counts leave of the target: the largest multiple of
            ``multiple`` that reaches it (at least ``multiple``).
        kv_groups: KV groups removed per block (0 = none).
        multiple: the MLP width is kept a multiple of this (hardware-friendly matmul shapes).
        hidden_size: the hidden size kept (None = the model's); MLP width or depth fills what it leaves of
            the target.

    Raises EdgesftError when the target cannot be reached, or when the options leave the shape undetermined.
    """
    _layout(config)
    n_layers, size = config.num_hidden_layers, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % kv_heads:
        raise EdgesftError(f"prune: {heads} attention heads do not divide into {kv_heads} KV heads")
    per_group = heads // kv_heads
    kv_after = kv_heads - kv_groups
    count = _non_embedding_formula(config)
    before = count(n_layers, size, kv_heads)

    if target_fraction is not None and target_params is not None:
        raise EdgesftError("prune: give target_fraction or target_params, not both")
    if multiple < 1:
        raise EdgesftError(f"prune: multiple must be at least 1, got {multiple}")
    if not 0 <= kv_groups < kv_heads:
        raise EdgesftError(
            f"prune: kv_groups removes 0 to {kv_heads - 1} of {kv_heads} KV groups, got {kv_groups}"
        )
    problem = _kv_groups_problem(config, kv_groups)
    if problem:
        # transformers 5 validates every config it builds and saves: the pruned model could be cut but never
        # saved or loaded again.
        raise EdgesftError(problem)
    if hidden_size is not None:
        if not 1 <= hidden_size <= config.hidden_size:
            raise EdgesftError(
                f"prune: hidden_size must be in 1..{config.hidden_size} (the model's), got {hidden_size}"
            )
        # the final shape, heads after KV-group pruning included, is what must load
        problem = _hidden_size_problem(
            config, hidden_size, num_attention_heads=kv_after * per_group, num_key_value_heads=kv_after
        )
        if problem:
            raise EdgesftError(problem)
    if depth_layers is not None:
        if not depth:
            raise EdgesftError("prune: depth_layers is set but depth pruning is off")
        if not 0 <= depth_layers < n_layers:
            raise EdgesftError(f"prune: depth_layers must be in 0..{n_layers - 1}, got {depth_layers}")

    target: int | None = None
    if target_fraction is not None:
        if not 0 < target_fraction < 1:
            raise EdgesftError(f"prune: target_fraction must be between 0 and 1, got {target_fraction}")
        target = math.floor(before * (1 - target_fraction))
    elif target_params is not None:
        if not 0 < target_params < before:
            raise EdgesftError(
                f"prune: target_params must be below the model's {before:,} non-embedding parameters, "
                f"got {target_params:,}"
            )
        target = target_params

    free_depth = depth and depth_layers is None
    if target is None and (free_depth or mlp):
        raise EdgesftError(
            "prune: a target (target_fraction or target_params) is needed to size "
            + ("the MLP width" if mlp else "depth pruning without depth_layers")
        )
    if target is not None and free_depth and mlp:
        raise EdgesftError(
            "prune: both depth and MLP pruning would fill the target; set depth_layers to fix the blocks removed"
        )

    layers_removed = depth_layers or 0
    hidden = config.hidden_size if hidden_size is None else hidden_size
    width = size
    after = count(n_layers - layers_removed, width, kv_after, hidden)
    if target is not None and after > target:
        if mlp:
            widths = range(size // multiple * multiple, 0, -multiple)
            found = next(
                (w for w in widths if count(n_layers - layers_removed, w, kv_after, hidden) <= target), None
            )
            if found is None:
                raise EdgesftError(
                    f"prune: cannot reach {target:,} non-embedding parameters (of {before:,}) by MLP width: "
                    f"intermediate_size {multiple} still leaves "
                    f"{count(n_layers - layers_removed, multiple, kv_after, hidden):,}"
                )
            width = found
        elif free_depth:
            found = next(
                (n for n in range(1, n_layers) if count(n_layers - n, size, kv_after, hidden) <= target), None
            )
            if found is None:
                raise EdgesftError(
                    f"prune: cannot reach {target:,} non-embedding parameters (of {before:,}) by depth: "
                    f"removing {n_layers - 1} of {n_layers} blocks still leaves {count(1, size, kv_after, hidden):,}"
                )
            layers_removed = found
        else:
            raise EdgesftError(
                f"prune: the explicit counts leave {after:,} non-embedding parameters (of {before:,}), above "
                f"the target {target:,}; switch on MLP or depth pruning to reach it"
            )
        after = count(n_layers - layers_removed, width, kv_after, hidden)

    return {
        "layers_removed": layers_removed,
        "num_hidden_layers": n_layers - layers_removed,
        "intermediate_size": width,
        "num_attention_heads": kv_after * per_group,
        "num_key_value_heads": kv_after,
        "kv_groups_removed": kv_groups,
        "head_dim": _head_dim(config),
        "hidden_size": hidden,
        "non_embedding_before": before,
        "non_embedding_after": after,
        "removed_fraction": (before - after) / before,
    }
