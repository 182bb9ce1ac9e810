"""Structured pruning of Llama-family causal LMs: importance scores and in-place model surgery.

Three kinds of structure are removed, each scored on calibration batches:

* whole decoder blocks (depth), scored by ShortGPT's Block Influence (Men et al. 2024, "ShortGPT: Layers in
  Large Language Models are More Redundant Than You Expect") or by the angular distance between a block run's
  input and output (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers");
* MLP neurons (width), scored by their activation size as in Minitron (Muralidharan et al. 2024, "Compact
  Language Models via Pruning and Knowledge Distillation"), weighted by the norm of what they write out;
* KV groups under grouped-query attention: one KV head with the query heads that read it, scored by the size
  of those heads' contribution to the residual stream.

Every function keeps all blocks the same shape: each block keeps the same number of neurons and KV groups
(its own best ones). GGUF and ONNX exporters, and transformers' config format, describe a model by one
``intermediate_size`` and one head count for all layers, so a model with ragged blocks could not be exported.

The module knows nothing of recipes: it takes a model, calibration batches and numbers. Supported models are
those with ``model.model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj`` and no other
per-layer weights than two RMSNorms (Llama, Mistral, Qwen2), because :func:`plan_pruning` counts parameters
with that layout's formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from edgesft.errors import EdgesftError

Batch = dict[str, Any]  # "input_ids" and "attention_mask": long tensors [batch, seq], right-padded

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


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
    """``total`` (unique parameters; a tied head counted once), ``embedding`` (input embeddings and LM head)
    and ``non_embedding`` (the rest: blocks and the final norm)."""
    total = _unique_params([model])
    embedding = _unique_params([model.get_input_embeddings(), model.get_output_embeddings()])
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def non_embedding_params(model: Any) -> int:
    """Parameters outside the input embeddings and the LM head: what pruning targets are measured in."""
    return param_counts(model)["non_embedding"]


# --------------------------------------------------------------------------------------------------------
# Model layout


def _check_model_type(config: Any) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EdgesftError(
            f"prune: unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


_MLP = ("gate_proj", "up_proj", "down_proj")


def _layers(model: Any) -> Any:
    """The decoder blocks, after checking the layout the surgery below assumes."""
    import torch

    _check_model_type(model.config)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise EdgesftError(f"prune: expected decoder blocks at model.model.layers in {type(model).__name__}")
    for i, layer in enumerate(layers):
        for parent, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", _MLP)):
            sub = getattr(layer, parent, None)
            if sub is None or not all(isinstance(getattr(sub, n, None), torch.nn.Linear) for n in names):
                raise EdgesftError(f"prune: block {i} has no {parent} with Linear {', '.join(names)}")
    return layers


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _attention_shape(model: Any) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim), checked against the weights of every block."""
    cfg = model.config
    heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, _head_dim(cfg)
    if heads % kv_heads:
        raise EdgesftError(f"prune: {heads} attention heads do not divide into {kv_heads} KV heads")
    for i, layer in enumerate(_layers(model)):
        attn = layer.self_attn
        got = (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features)
        if got != (heads * d, kv_heads * d, heads * d):
            raise EdgesftError(
                f"prune: block {i} attention has q/k/o widths {got}, expected "
                f"{(heads * d, kv_heads * d, heads * d)} from the config"
            )
    return heads, kv_heads, d


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


def _by_block_influence(model: Any, batches: list[Batch], n: int) -> tuple[list[int], list[float]]:
    scores = block_influence(model, batches)
    _check_run_length(n, len(scores))
    lowest = sorted(range(len(scores)), key=lambda i: (scores[i], i))[:n]
    return sorted(lowest), scores


def _by_angular_distance(model: Any, batches: list[Batch], n: int) -> tuple[list[int], list[float]]:
    scores = angular_distances(model, batches, n)
    start = min(range(len(scores)), key=lambda i: (scores[i], i))
    return list(range(start, start + n)), scores


LAYER_METHODS: dict[str, Callable[[Any, list[Batch], int], tuple[list[int], list[float]]]] = {
    "block_influence": _by_block_influence,
    "angular": _by_angular_distance,
}


def choose_layers(method: str, model: Any, batches: list[Batch], n: int) -> tuple[list[int], list[float]]:
    """The ``n`` blocks to remove by ``method`` (a key of :data:`LAYER_METHODS`), sorted, and the scores.

    ``block_influence``: the ``n`` blocks of lowest Block Influence, wherever they are (scores: one per
    block). ``angular``: the contiguous run of ``n`` blocks of least angular distance (scores: one per start).
    """
    if method not in LAYER_METHODS:
        raise EdgesftError(f"prune: unknown layer method {method!r}; known: {', '.join(LAYER_METHODS)}")
    return LAYER_METHODS[method](model, batches, n)


def remove_layers(model: Any, indices: list[int]) -> None:
    """Remove the blocks at ``indices`` in place and renumber the rest.

    Attention modules keep a ``layer_idx`` that indexes the KV cache; left stale, generation with a cache
    reads another block's keys (or runs off the end of the cache). Per-layer config lists (``layer_types``,
    which also sizes the cache, and Qwen2's ``max_window_layers``) are cut to match.
    """
    import torch

    layers = _layers(model)
    n_layers = len(layers)
    drop = set(indices)
    if len(drop) != len(indices) or not all(0 <= i < n_layers for i in drop):
        raise EdgesftError(f"prune: layer indices must be distinct and in 0..{n_layers - 1}, got {indices}")
    if not drop:
        return
    _check_run_length(len(drop), n_layers)
    kept = [i for i in range(n_layers) if i not in drop]
    model.model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new_idx, layer in enumerate(model.model.layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx

    cfg = model.config
    cfg.num_hidden_layers = len(kept)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
        if hasattr(model.model, "has_sliding_layers"):
            model.model.has_sliding_layers = "sliding_attention" in cfg.layer_types
    if getattr(cfg, "max_window_layers", None) is not None:
        # Qwen2: blocks from max_window_layers on use the sliding window; the kept ones keep their kind.
        cfg.max_window_layers = sum(1 for i in kept if i < cfg.max_window_layers)


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

    The activation is the input of ``down_proj``, act(gate(x)) * up(x): Minitron's activation-based
    importance, weighted by how much the neuron can write into the residual stream so that a large
    activation read out by near-zero weights still counts as unimportant. Float32 tensors on the CPU.
    """

    def sum_of_squares(a: Any, module: Any) -> Any:
        a = a.double()
        return (a * a).sum(dim=0)

    sumsq, tokens = _linear_input_sums(model, batches, lambda layer: layer.mlp.down_proj, sum_of_squares)
    out = []
    for layer, s in zip(_layers(model), sumsq, strict=True):
        write_norm = layer.mlp.down_proj.weight.detach().double().norm(dim=0)
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

    heads, kv_heads, d = _attention_shape(model)

    def head_output_norms(x: Any, module: Any) -> Any:
        w = module.weight
        # One head at a time: a [tokens, heads, hidden] product would not fit for long calibration sets.
        norms = [(x[:, h * d : (h + 1) * d] @ w[:, h * d : (h + 1) * d].T).norm(dim=-1) for h in range(heads)]
        return torch.stack([n.double().sum() for n in norms])

    sums, tokens = _linear_input_sums(model, batches, lambda layer: layer.self_attn.o_proj, head_output_norms)
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

    ``importance`` comes from :func:`mlp_importance`. Kept neurons stay in their original order.
    """
    layers = _layers(model)
    size = model.config.intermediate_size
    if not 1 <= new_size <= size:
        raise EdgesftError(f"prune: MLP width must be in 1..{size}, got {new_size}")
    for i, layer in enumerate(layers):
        if layer.mlp.gate_proj.out_features != size:
            raise EdgesftError(
                f"prune: block {i} MLP has {layer.mlp.gate_proj.out_features} neurons, the config says {size}"
            )
    _check_importance(importance, len(layers), size, "MLP")
    for layer, scores in zip(layers, importance, strict=True):
        keep = _top_sorted(scores, new_size)
        mlp = layer.mlp
        _slice_linear(mlp.gate_proj, 0, keep)
        _slice_linear(mlp.up_proj, 0, keep)
        _slice_linear(mlp.down_proj, 1, keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = new_size
    model.config.intermediate_size = new_size


def prune_kv_groups(model: Any, keep: int, importance: list[Any]) -> None:
    """Keep ``keep`` KV groups in every block, in place, each block keeping its own most important.

    ``importance`` comes from :func:`head_group_importance`. The query heads per KV head and the head size
    stay; ``config.head_dim`` is written out because hidden_size / num_attention_heads no longer gives it.
    """
    import torch

    layers = _layers(model)
    heads, kv_heads, d = _attention_shape(model)
    per_group = heads // kv_heads
    if not 1 <= keep <= kv_heads:
        raise EdgesftError(f"prune: can keep 1 to {kv_heads} KV groups, got {keep}")
    _check_importance(importance, len(layers), kv_heads, "KV group")
    offsets_d = torch.arange(d)
    offsets_r = torch.arange(per_group)
    for layer, scores in zip(layers, importance, strict=True):
        groups = _top_sorted(scores, keep)
        kv_rows = (groups[:, None] * d + offsets_d).flatten()
        q_heads = (groups[:, None] * per_group + offsets_r).flatten()
        q_rows = (q_heads[:, None] * d + offsets_d).flatten()
        attn = layer.self_attn
        _slice_linear(attn.q_proj, 0, q_rows)
        _slice_linear(attn.k_proj, 0, kv_rows)
        _slice_linear(attn.v_proj, 0, kv_rows)
        _slice_linear(attn.o_proj, 1, q_rows)
        # transformers (4.57 and 5.x) infers the head count from q_proj's output (view(..., -1, head_dim))
        # and keeps only head_dim and num_key_value_groups, which do not change; older versions stored head
        # counts.
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
# Planning: the pruned shape from a parameter target


def _non_embedding_formula(config: Any) -> Callable[[int, int, int], int]:
    """``f(layers, intermediate, kv_heads)`` -> non-embedding parameters of ``config``'s architecture with
    those sizes (query heads per KV head and head size fixed)."""
    h = config.hidden_size
    heads, kv_heads, d = config.num_attention_heads, config.num_key_value_heads, _head_dim(config)
    per_group = heads // kv_heads
    attention_bias = bool(getattr(config, "attention_bias", False))  # Llama: on q, k, v and o
    qkv_bias = attention_bias or config.model_type == "qwen2"  # Qwen2: on q, k and v only
    mlp_bias = bool(getattr(config, "mlp_bias", False))

    def count(layers: int, intermediate: int, kv: int) -> int:
        q_width, kv_width = kv * per_group * d, kv * d
        attention = 2 * h * q_width + 2 * h * kv_width
        attention += (q_width + 2 * kv_width) * qkv_bias + h * attention_bias
        mlp = 3 * h * intermediate + (2 * intermediate + h) * mlp_bias
        return layers * (attention + mlp + 2 * h) + h  # 2 RMSNorms per block, and the final norm

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
) -> dict[str, Any]:
    """The pruned shape for a transformers config, computed from a parameter formula without touching weights.

    Args:
        config: the model's config (Llama, Mistral or Qwen2 layout).
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

    Raises EdgesftError when the target cannot be reached, or when the options leave the shape undetermined.
    """
    _check_model_type(config)
    n_layers, size = config.num_hidden_layers, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % kv_heads:
        raise EdgesftError(f"prune: {heads} attention heads do not divide into {kv_heads} KV heads")
    per_group = heads // kv_heads
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
    heads_after = (kv_heads - kv_groups) * per_group
    if config.hidden_size % heads_after:
        # transformers 5 validates every config it builds (LlamaConfig.validate_architecture) and ignores an
        # explicit head_dim there: the pruned model could be saved but never loaded again.
        fits = [g for g in range(kv_heads) if config.hidden_size % ((kv_heads - g) * per_group) == 0]
        raise EdgesftError(
            f"prune: removing {kv_groups} of {kv_heads} KV groups leaves {heads_after} attention heads, and "
            f"transformers refuses a config whose hidden_size ({config.hidden_size}) is not a multiple of "
            f"the head count; kv_groups that fit: {', '.join(map(str, fits))}"
        )
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
    kv_after = kv_heads - kv_groups
    width = size
    after = count(n_layers - layers_removed, width, kv_after)
    if target is not None and after > target:
        if mlp:
            widths = range(size // multiple * multiple, 0, -multiple)
            found = next((w for w in widths if count(n_layers - layers_removed, w, kv_after) <= target), None)
            if found is None:
                raise EdgesftError(
                    f"prune: cannot reach {target:,} non-embedding parameters (of {before:,}) by MLP width: "
                    f"intermediate_size {multiple} still leaves "
                    f"{count(n_layers - layers_removed, multiple, kv_after):,}"
                )
            width = found
        elif free_depth:
            found = next(
                (n for n in range(1, n_layers) if count(n_layers - n, size, kv_after) <= target), None
            )
            if found is None:
                raise EdgesftError(
                    f"prune: cannot reach {target:,} non-embedding parameters (of {before:,}) by depth: "
                    f"removing {n_layers - 1} of {n_layers} blocks still leaves {count(1, size, kv_after):,}"
                )
            layers_removed = found
        else:
            raise EdgesftError(
                f"prune: the explicit counts leave {after:,} non-embedding parameters (of {before:,}), above "
                f"the target {target:,}; switch on MLP or depth pruning to reach it"
            )
        after = count(n_layers - layers_removed, width, kv_after)

    return {
        "layers_removed": layers_removed,
        "num_hidden_layers": n_layers - layers_removed,
        "intermediate_size": width,
        "num_attention_heads": kv_after * per_group,
        "num_key_value_heads": kv_after,
        "kv_groups_removed": kv_groups,
        "head_dim": _head_dim(config),
        "non_embedding_before": before,
        "non_embedding_after": after,
        "removed_fraction": (before - after) / before,
    }
