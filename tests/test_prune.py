"""Structured pruning on tiny random models: scores find planted redundancy, surgery survives a reload, on
every architecture of :data:`edgesft.prune.ARCHITECTURES`."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_VOCAB, tiny_model

from edgesft import prune
from edgesft.errors import EdgesftError

VOCAB = TINY_VOCAB

# Per architecture, what makes its tiny model exercise the layout: biases, an explicit head_dim that is not
# hidden / heads (64 / 4 = 16), sliding windows with a per-block pattern, soft-capping, partial RoPE, Granite's
# multipliers. SmolLM3 keeps its default no_rope_layers (every 4th block without RoPE).
ARCHS: dict[str, dict[str, Any]] = {
    "llama": {"attention_bias": True, "mlp_bias": True},
    "mistral": {"sliding_window": 6},
    "qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2},
    "qwen3": {
        "head_dim": 24,
        "attention_bias": True,
        "use_sliding_window": True,
        "sliding_window": 4,
        "max_window_layers": 2,
    },
    "gemma2": {
        "head_dim": 32,
        "query_pre_attn_scalar": 32,
        "sliding_window": 4,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    },
    "gemma3_text": {
        "head_dim": 24,
        "query_pre_attn_scalar": 24,
        "sliding_window": 4,  # every 6th block global, the only pattern llama.cpp runs
        "final_logit_softcapping": 30.0,
    },
    "phi3": {"partial_rotary_factor": 0.75},  # Phi-4-mini style: RoPE on 12 of 16 head dims
    "smollm3": {},
    "granite": {
        "attention_bias": True,
        "mlp_bias": True,
        "embedding_multiplier": 12.0,
        "residual_multiplier": 0.22,
        "attention_multiplier": 0.0625,
        "logits_scaling": 8.0,
    },
}


def tiny(arch: str, **overrides: Any) -> Any:
    return tiny_model(arch, **{**ARCHS[arch], **overrides})


def test_every_supported_architecture_is_tested() -> None:
    assert set(ARCHS) == set(prune.SUPPORTED_MODEL_TYPES)


def tiny_llama(**overrides: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    settings: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    }
    settings.update(overrides)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


def tiny_qwen2() -> Any:
    """Biases on q/k/v and a sliding window on the last two of four blocks (``layer_types``)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=3,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random biases, so that slicing them wrongly shows in the logits
        for layer in model.model.layers:
            for name in ("q_proj", "k_proj", "v_proj"):
                getattr(layer.self_attn, name).bias.normal_(0, 0.5)
    return model


def batches(seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Two right-padded batches of random tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for lengths in ([12, 9, 5], [12, 12, 3]):
        ids = torch.randint(3, VOCAB, (len(lengths), 12), generator=g)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(lengths):
            mask[row, :n] = 1
        out.append({"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask})
    return out


def logits(model: Any, data: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in data])


def reload(model: Any, folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model.save_pretrained(folder, safe_serialization=True)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def make_identity(model: Any, *blocks: int) -> None:
    """Scale what the blocks write into the residual stream to ~0, so each passes its input through."""
    with torch.no_grad():
        for i in blocks:
            layer = model.model.layers[i]
            layer.self_attn.o_proj.weight.mul_(1e-4)
            layer.mlp.down_proj.weight.mul_(1e-4)


# --------------------------------------------------------------------------------------------------------
# Parameter counts


def test_param_counts_count_a_tied_head_once() -> None:
    tied, untied = tiny_llama(), tiny_llama(tie_word_embeddings=False)
    emb = VOCAB * 64
    assert prune.param_counts(tied)["params_embedding"] == emb
    assert prune.param_counts(untied)["params_embedding"] == 2 * emb
    for model in (tied, untied):
        counts = prune.param_counts(model)
        assert counts["params_total"] == counts["params_embedding"] + counts["params_non_embedding"]
        assert prune.non_embedding_params(model) == counts["params_non_embedding"]
    assert prune.non_embedding_params(tied) == prune.non_embedding_params(untied)


# --------------------------------------------------------------------------------------------------------
# Depth


def test_block_influence_finds_a_planted_identity_block() -> None:
    model = tiny_llama()
    make_identity(model, 3)
    removed, scores = prune.choose_layers("block_influence", model, batches(), 1)
    assert removed == [3]
    assert len(scores) == 6 and scores[3] < 1e-6
    assert min(s for i, s in enumerate(scores) if i != 3) > 100 * max(scores[3], 1e-9)
    assert prune.block_influence(model, batches()) == scores  # deterministic


def test_angular_distance_finds_a_planted_identity_run() -> None:
    model = tiny_llama()
    make_identity(model, 1, 2)
    removed, scores = prune.choose_layers("angular", model, batches(), 2)
    assert removed == [1, 2]
    assert len(scores) == 5 and len(set(scores)) == 5


def test_scores_ignore_padding_and_the_final_norm() -> None:
    model = tiny_llama()
    data = batches()
    other = [{**b, "input_ids": b["input_ids"].masked_fill(b["attention_mask"] == 0, 7)} for b in data]
    assert prune.block_influence(model, data) == prune.block_influence(model, other)

    # The last block's Block Influence by hand, from its pre-norm input and output.
    layer = model.model.layers[-1]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        seen.append((x, output[0] if isinstance(output, tuple) else output))

    handle = layer.register_forward_hook(hook, with_kwargs=True)
    try:
        logits(model, data)
    finally:
        handle.remove()
    cos = [
        torch.cosine_similarity(
            x[b["attention_mask"].bool()].double(), y[b["attention_mask"].bool()].double(), dim=-1
        )
        for (x, y), b in zip(seen, data, strict=True)
    ]
    expected = 1 - torch.cat(cos).mean().item()
    assert prune.block_influence(model, data)[-1] == pytest.approx(expected, rel=1e-9)


def test_choose_layers_rejects_bad_requests() -> None:
    model = tiny_llama()
    with pytest.raises(EdgesftError, match="unknown layer method"):
        prune.choose_layers("random", model, batches(), 1)
    with pytest.raises(EdgesftError, match="1 to 5"):
        prune.choose_layers("block_influence", model, batches(), 6)
    with pytest.raises(EdgesftError, match="1 to 5"):
        prune.choose_layers("angular", model, batches(), 0)
    with pytest.raises(EdgesftError, match="no real tokens"):
        prune.block_influence(
            model, [{**b, "attention_mask": torch.zeros_like(b["attention_mask"])} for b in batches()]
        )
    with pytest.raises(EdgesftError, match="distinct"):
        prune.remove_layers(model, [1, 1])


def test_calibration_restores_dtype_and_training_mode() -> None:
    model = tiny_llama().to(torch.bfloat16).train()
    prune.block_influence(model, batches())
    assert model.training
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_remove_layers_renumbers_the_kv_cache_index(tmp_path: Path) -> None:
    model = tiny_llama()
    prune.remove_layers(model, [0, 3])
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    assert model.config.num_hidden_layers == 4

    prompt = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    kwargs: dict[str, Any] = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (1, 11)
    assert torch.equal(cached, uncached)

    loaded = reload(model, tmp_path)
    assert loaded.config.num_hidden_layers == 4 and len(loaded.model.layers) == 4
    assert torch.allclose(logits(loaded, batches()), logits(model, batches()), atol=1e-5)
    with torch.no_grad():
        assert torch.equal(loaded.generate(prompt, use_cache=True, **kwargs), cached)


# --------------------------------------------------------------------------------------------------------
# Width


def _mlp_rows(model: Any, block: int) -> torch.Tensor:
    """The block's gate and up rows, one matrix [gate | up] whether or not the architecture fuses them."""
    mlp = model.model.layers[block].mlp
    if hasattr(mlp, "gate_up_proj"):
        return mlp.gate_up_proj.weight
    return torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])


@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_pruning_drops_planted_dead_neurons_without_changing_logits(arch: str) -> None:
    model = tiny(arch)
    dead = [5, 17, 100]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, dead] = 0
    rows_before = _mlp_rows(model, 0).clone()
    before = logits(model, batches())

    importance = prune.mlp_importance(model, batches())
    assert len(importance) == 4 and importance[0].shape == (128,)
    assert all(float(imp[dead].abs().max()) == 0 and float(imp.min()) == 0 for imp in importance)
    prune.prune_mlp(model, 125, importance)

    kept = torch.tensor([j for j in range(128) if j not in dead])
    assert torch.equal(_mlp_rows(model, 0), rows_before[torch.cat([kept, 128 + kept])])
    assert model.config.intermediate_size == 125
    assert _mlp_rows(model, 3).shape == (250, 64)
    assert model.model.layers[3].mlp.down_proj.weight.shape == (64, 125)
    assert torch.allclose(logits(model, batches()), before, atol=1e-5)


def test_mlp_pruning_to_full_size_changes_nothing() -> None:
    model = tiny_llama()
    before = logits(model, batches())
    prune.prune_mlp(model, 192, prune.mlp_importance(model, batches()))
    assert torch.equal(logits(model, batches()), before)


def _qkv_shapes(model: Any, block: int) -> tuple[tuple[int, ...], ...]:
    attn = model.model.layers[block].self_attn
    names = ["qkv_proj"] if hasattr(attn, "qkv_proj") else ["q_proj", "k_proj", "v_proj"]
    return tuple(tuple(getattr(attn, n).weight.shape) for n in names)


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_group_pruning_drops_planted_silent_groups_without_changing_logits(arch: str) -> None:
    model = tiny(arch)
    d = ARCHS[arch].get("head_dim", 16)  # explicit where set, else 64 / 4; 2 query heads per KV group
    assert (getattr(model.config, "head_dim", None) or 16) == d
    silent = [i % 2 for i in range(4)]  # the group whose heads write nothing, per block
    with torch.no_grad():
        for layer, g in zip(model.model.layers, silent, strict=True):
            layer.self_attn.o_proj.weight[:, 2 * g * d : 2 * (g + 1) * d] = 0
    norms = {
        n: p.clone() for n, p in model.named_parameters() if n.endswith(("q_norm.weight", "k_norm.weight"))
    }
    before = logits(model, batches())

    importance = prune.head_group_importance(model, batches())
    assert [int(imp.argmin()) for imp in importance] == silent
    assert all(float(imp.min()) == 0 < float(imp.max()) for imp in importance)
    prune.prune_kv_groups(model, 1, importance)

    cfg = model.config
    assert (cfg.num_key_value_heads, cfg.num_attention_heads, cfg.head_dim) == (1, 2, d)
    fused = ((4 * d, 64),)  # [2 query heads | 1 key head | 1 value head]
    assert _qkv_shapes(model, 0) == (fused if arch == "phi3" else ((2 * d, 64), (d, 64), (d, 64)))
    attn = model.model.layers[0].self_attn
    assert attn.o_proj.weight.shape == (64, 2 * d) and attn.num_key_value_groups == 2
    # q_norm / k_norm act on one head's vector: the same weights for every head that is kept.
    assert all(torch.equal(p, norms[n]) for n, p in model.named_parameters() if n in norms)
    assert torch.allclose(logits(model, batches()), before, atol=1e-5)


def _plant_dead_channels(model: Any, dead: list[int]) -> None:
    """Make the residual stream carry nothing in the ``dead`` channels: the embedding and every projection that
    writes the stream (o and down, with their biases) put zeros there."""
    with torch.no_grad():
        model.get_input_embeddings().weight[:, dead] = 0
        for layer in model.model.layers:
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                linear.weight[dead] = 0
                if linear.bias is not None:
                    linear.bias[dead] = 0


@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_pruning_drops_planted_dead_channels_without_changing_logits(
    arch: str, tmp_path: Path
) -> None:
    # The norms' epsilon is what keeps the rescale from being exact (rms over fewer channels meets the same
    # epsilon); a tiny model's stream is small enough (embeddings drawn at std 0.02) for 1e-6 to show.
    model = tiny(arch, rms_norm_eps=1e-12)
    dead = [3, 9, 10, 21, 40, 41, 50, 63, 0, 31, 32, 47, 5, 6, 7, 60]
    _plant_dead_channels(model, dead)
    d = getattr(model.config, "head_dim", None) or 16
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    before = logits(model, batches())
    planned = prune.plan_pruning(model.config, hidden_size=48)["non_embedding_after"]

    importance = prune.hidden_importance(model, batches())
    assert importance.scores.shape == (64,) and float(importance.scores[dead].abs().max()) == 0
    assert float(importance.scores.min()) == 0 < float(importance.scores.max())
    prune.prune_hidden(model, 48, importance)

    cfg = model.config
    assert (cfg.hidden_size, cfg.head_dim) == (48, d)
    assert model.get_input_embeddings().weight.shape == (VOCAB, 48)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert model.model.layers[1].mlp.down_proj.weight.shape == (48, 128)
    assert prune.non_embedding_params(model) == planned
    assert torch.allclose(logits(model, batches()), before, atol=1e-4)
    loaded = reload(model, tmp_path)
    assert loaded.config.hidden_size == 48
    assert torch.allclose(logits(loaded, batches()), before, atol=1e-4)


def _first_norm_output(model: Any, data: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Block 0's input norm output at every position: it reads the embedding alone."""
    out: list[torch.Tensor] = []
    handle = model.model.layers[0].input_layernorm.register_forward_hook(lambda m, a, o: out.append(o))
    logits(model, data)
    handle.remove()
    return torch.cat(out)


def test_hidden_pruning_rescales_norms_to_what_the_kept_channels_had() -> None:
    """Where the removed channels carried a little (a tenth of the others' size, as a real model's quiet
    channels do), an RMS norm over the kept ones divides by a larger mean: the rescale brings the kept
    channels' normalised values back to what they were before the cut, and the cut without it does not."""
    data = batches()

    def model() -> Any:
        m = tiny("llama")
        with torch.no_grad():
            m.get_input_embeddings().weight[:, :16] *= 0.1
            for layer in m.model.layers:
                for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                    linear.weight[:16] *= 0.1
                    linear.bias[:16] *= 0.1
        return m

    before = _first_norm_output(model(), data)
    importance = prune.hidden_importance(model(), data)
    assert set(importance.scores.argsort()[:16].tolist()) == set(range(16))
    plain = prune.HiddenImportance(
        importance.scores, {k: torch.ones_like(v) for k, v in importance.energy.items()}
    )
    errors = {}
    for name, imp in (("rescaled", importance), ("plain", plain)):
        pruned = model()
        prune.prune_hidden(pruned, 48, imp)
        errors[name] = float((_first_norm_output(pruned, data) - before[..., 16:]).pow(2).mean())
    assert errors["rescaled"] < 0.1 * errors["plain"]


def test_hidden_pruning_refuses_sizes_transformers_cannot_load() -> None:
    # SmolLM2-135M: 9 heads; Llama configs need a hidden size that is a multiple of the head count.
    with pytest.raises(
        EdgesftError,
        match=r"hidden_size 512 with 9 attention heads gives a llama config .*multiples of 256: none",
    ):
        prune.plan_pruning(smollm2_135m_config(), target_fraction=0.25, mlp=True, hidden_size=512)
    # The heads left by KV-group pruning are what the hidden size must divide: 513 = 9 x 57, not a multiple of 6.
    with pytest.raises(EdgesftError, match=r"hidden_size 513 with 6 attention heads"):
        prune.plan_pruning(smollm2_135m_config(), kv_groups=1, hidden_size=513)
    assert prune.plan_pruning(smollm2_135m_config(), kv_groups=1, hidden_size=570)["hidden_size"] == 570
    model = tiny("llama")
    with pytest.raises(EdgesftError, match=r"hidden_size 50 with 4 attention heads gives a llama config"):
        prune.prune_hidden(model, 50, prune.hidden_importance(model, batches()))
    with pytest.raises(EdgesftError, match=r"hidden_size must be in 1\.\.64"):
        prune.plan_pruning(model.config, hidden_size=80)


def test_pruning_rejects_mismatched_requests() -> None:
    model = tiny_llama()
    with pytest.raises(EdgesftError, match="MLP width"):
        prune.prune_mlp(model, 0, [torch.ones(192)] * 6)
    with pytest.raises(EdgesftError, match="importance vectors"):
        prune.prune_mlp(model, 64, [torch.ones(192)] * 5)
    with pytest.raises(EdgesftError, match="KV groups"):
        prune.prune_kv_groups(model, 3, [torch.ones(2)] * 6)


def test_unsupported_architecture_is_refused() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2))
    with pytest.raises(EdgesftError, match="unsupported architecture 'gpt2'"):
        prune.block_influence(model, batches())


def test_a_block_with_weights_the_layout_does_not_know_is_refused() -> None:
    model = tiny("qwen3")
    model.model.layers[2].mlp.register_parameter("scale", torch.nn.Parameter(torch.ones(128)))
    with pytest.raises(
        EdgesftError, match=r"block 2 of this qwen3 model .*unexpected: mlp\.scale; missing: none"
    ):
        prune.mlp_importance(model, batches())
    model = tiny("llama", attention_bias=False)
    model.config.attention_bias = True  # the config promises biases the weights do not have
    with pytest.raises(EdgesftError, match=r"missing: self_attn\.k_proj\.bias"):
        prune.head_group_importance(model, batches())


# --------------------------------------------------------------------------------------------------------
# Save, reload with stock transformers, same logits


def _apply(model: Any, kind: str, width: int = 64) -> None:
    data = batches()
    if kind in ("kv", "all"):
        prune.prune_kv_groups(model, 1, prune.head_group_importance(model, data))
    if kind in ("mlp", "all"):
        prune.prune_mlp(model, width, prune.mlp_importance(model, data))
    if kind in ("layers", "all"):
        removed, _ = prune.choose_layers("block_influence", model, data, 2)
        prune.remove_layers(model, removed)


def _config_dict(model: Any) -> dict[str, Any]:
    """The config as saved, less what saving itself adds."""
    skip = {"transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype"}
    return {k: v for k, v in model.config.to_dict().items() if k not in skip}


def _generates_alike(model: Any, data: list[dict[str, torch.Tensor]]) -> bool:
    """Greedy generation with the KV cache equals it without: each block reads its own cache entry."""
    prompt = data[0]["input_ids"][:1, :8]
    kwargs: dict[str, Any] = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        return torch.equal(
            model.generate(prompt, **kwargs), model.generate(prompt, use_cache=False, **kwargs)
        )


@pytest.mark.parametrize("kind", ["layers", "mlp", "kv", "all"])
def test_pruned_llama_reloads_with_the_same_logits(kind: str, tmp_path: Path) -> None:
    model = tiny_llama()
    _apply(model, kind, width=96)
    loaded = reload(model, tmp_path)
    cfg = loaded.config
    expect = {
        "layers": (4, 192, 2, 4),
        "mlp": (6, 96, 2, 4),
        "kv": (6, 192, 1, 2),
        "all": (4, 96, 1, 2),
    }[kind]
    assert (
        cfg.num_hidden_layers,
        cfg.intermediate_size,
        cfg.num_key_value_heads,
        cfg.num_attention_heads,
    ) == expect
    assert len(loaded.model.layers) == expect[0]
    assert loaded.model.layers[-1].mlp.down_proj.weight.shape == (64, expect[1])
    assert torch.allclose(logits(loaded, batches()), logits(model, batches()), atol=1e-5)


@pytest.mark.parametrize("kind", ["layers", "mlp", "kv", "all"])
@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_model_reloads_with_the_same_logits(arch: str, kind: str, tmp_path: Path) -> None:
    model = tiny(arch)
    original = _config_dict(model)
    _apply(model, kind)
    loaded = reload(model, tmp_path)
    assert type(loaded) is type(model)
    cfg = loaded.config
    expect = {"layers": (2, 128, 2, 4), "mlp": (4, 64, 2, 4), "kv": (4, 128, 1, 2), "all": (2, 64, 1, 2)}[
        kind
    ]
    got = (cfg.num_hidden_layers, cfg.intermediate_size, cfg.num_key_value_heads, cfg.num_attention_heads)
    assert got == expect
    assert len(loaded.model.layers) == expect[0]
    assert loaded.model.layers[-1].mlp.down_proj.weight.shape == (64, expect[1])
    assert prune.non_embedding_params(loaded) == prune.non_embedding_params(model)
    # Everything but the pruned sizes and per-block lists is the original config: head_dim, multipliers,
    # soft-capping, partial RoPE, sliding window.
    saved = _config_dict(loaded)
    assert saved == _config_dict(model)
    changed = {k for k in original if saved.get(k) != original[k]}
    assert changed <= {
        "num_hidden_layers",
        "intermediate_size",
        "num_key_value_heads",
        "num_attention_heads",
        "layer_types",
        "no_rope_layers",
        "max_window_layers",
        "head_dim",  # written out where the config had none (hidden / heads no longer gives it)
    }
    assert (getattr(cfg, "head_dim", None) or 16) == ARCHS[arch].get("head_dim", 16)
    assert torch.allclose(logits(loaded, batches()), logits(model, batches()), atol=1e-5)
    if kind == "all":
        assert [layer.self_attn.layer_idx for layer in loaded.model.layers] == [0, 1]
        assert _generates_alike(loaded, batches())


def test_qwen2_biases_and_layer_types_survive_pruning(tmp_path: Path) -> None:
    model = tiny_qwen2()
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    data = batches()
    prune.prune_kv_groups(model, 2, prune.head_group_importance(model, data))
    prune.prune_mlp(model, 64, prune.mlp_importance(model, data))
    prune.remove_layers(model, [1])
    cfg = model.config
    assert cfg.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert (cfg.max_window_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (
        1,
        4,
        2,
        16,
    )
    assert model.model.layers[0].self_attn.q_proj.bias.shape == (64,)  # 4 heads of 16, not 96 / 4

    loaded = reload(model, tmp_path)
    assert loaded.config.layer_types == cfg.layer_types
    assert [layer.self_attn.sliding_window for layer in loaded.model.layers] == [None, 4, 4]
    assert torch.allclose(logits(loaded, data), logits(model, data), atol=1e-5)
    prompt = data[0]["input_ids"][:1]
    kwargs: dict[str, Any] = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert torch.equal(
            loaded.generate(prompt, **kwargs), loaded.generate(prompt, use_cache=False, **kwargs)
        )


def _block_kinds(model: Any) -> list[Any]:
    """What each block's attention module took from the per-block config lists when it was built."""
    return [
        (getattr(layer.self_attn, "sliding_window", None), getattr(layer.self_attn, "use_rope", None))
        for layer in model.model.layers
    ]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "gemma2", "gemma3_text", "smollm3"])
def test_per_block_config_lists_follow_the_kept_blocks(arch: str, tmp_path: Path) -> None:
    model = tiny(arch, num_hidden_layers=8)
    lists = {
        n: list(getattr(model.config, n))
        for n in ("layer_types", "no_rope_layers")
        if hasattr(model.config, n)
    }
    assert "sliding_attention" in lists["layer_types"] or arch == "smollm3"
    kinds = _block_kinds(model)
    # SmolLM3, Gemma: removals that keep llama.cpp's fixed grid (no-RoPE every 4th, global every 2nd / 6th)
    drop = {"smollm3": [4, 5, 6, 7], "gemma2": [0, 1, 7], "gemma3_text": [5, 6, 7]}.get(arch, [0, 3, 6])
    kept = [i for i in range(8) if i not in drop]
    prune.remove_layers(model, drop)
    for name, values in lists.items():
        assert getattr(model.config, name) == [values[i] for i in kept]
    if hasattr(model.config, "max_window_layers"):
        assert model.config.max_window_layers == sum(1 for i in kept if i < 2)

    loaded = reload(model, tmp_path)
    for name in lists:
        assert getattr(loaded.config, name) == getattr(model.config, name)
    assert _block_kinds(loaded) == [kinds[i] for i in kept]  # rebuilt from the saved lists, as before
    assert torch.allclose(logits(loaded, batches()), logits(model, batches()), atol=1e-5)
    assert _generates_alike(loaded, batches())


# --------------------------------------------------------------------------------------------------------
# SmolLM3: llama.cpp's fixed no-RoPE grid


def _smollm3(n_layers: int = 8) -> Any:
    model = tiny("smollm3", num_hidden_layers=n_layers)
    assert model.config.no_rope_layers == [0 if (i + 1) % 4 == 0 else 1 for i in range(n_layers)]
    return model


def _on_grid(flags: list[int]) -> bool:
    return flags == [0 if (i + 1) % 4 == 0 else 1 for i in range(len(flags))]


def test_smollm3_depth_pruning_off_the_no_rope_grid_is_refused() -> None:
    model = _smollm3()
    with pytest.raises(EdgesftError, match=r"removing blocks \[1\] would move blocks \[3, 4, 7\]") as err:
        prune.remove_layers(model, [1])
    assert "\n" not in str(err.value) and "every 4th block" in str(err.value)
    assert len(model.model.layers) == 8 and model.config.num_hidden_layers == 8  # nothing changed


@pytest.mark.parametrize("drop", [[7], [6, 7], [1, 2, 3, 4], [3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7]])
def test_smollm3_depth_pruning_on_the_grid_reloads(drop: list[int], tmp_path: Path) -> None:
    model = _smollm3()
    prune.remove_layers(model, drop)
    assert _on_grid(model.config.no_rope_layers)
    loaded = reload(model, tmp_path)
    assert loaded.config.no_rope_layers == model.config.no_rope_layers
    assert [bool(layer.self_attn.use_rope) for layer in loaded.model.layers] == [
        bool(f) for f in model.config.no_rope_layers
    ]
    assert torch.allclose(logits(loaded, batches()), logits(model, batches()), atol=1e-5)


def test_smollm3_block_influence_takes_the_cheapest_removal_on_the_grid() -> None:
    model = _smollm3()
    make_identity(model, 1, 2)
    removed, scores = prune.choose_layers("block_influence", model, batches(), 2)
    assert sorted(sorted(range(8), key=lambda i: scores[i])[:2]) == [1, 2]  # the two least influential ...
    # ... would break the grid; the chosen pair is the cheapest of those that keep it, by brute force.
    valid = [
        list(c)
        for c in itertools.combinations(range(8), 2)
        if _on_grid([f for i, f in enumerate(model.config.no_rope_layers) if i not in c])
    ]
    assert removed == min(valid, key=lambda c: (sum(scores[i] for i in c), c))
    prune.remove_layers(model, removed)
    assert _on_grid(model.config.no_rope_layers)


def test_smollm3_angular_distance_takes_the_least_distant_run_on_the_grid() -> None:
    model = _smollm3()
    make_identity(model, 2, 3, 4, 5)
    assert prune.choose_layers("angular", model, batches(), 4)[0] == [2, 3, 4, 5]
    # Runs of 2 stay on the grid only at the end.
    assert prune.choose_layers("angular", model, batches(), 2)[0] == [6, 7]


# --------------------------------------------------------------------------------------------------------
# Planning


def smollm2_135m_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        tie_word_embeddings=True,
    )


def test_plan_mlp_width_for_smollm2() -> None:
    cfg = smollm2_135m_config()
    plan = prune.plan_pruning(cfg, target_fraction=0.25, mlp=True, multiple=64)
    assert plan["non_embedding_before"] == 106_203_456
    # 1024 removes 24.99%: just short of the target, so the next multiple of 64 down.
    assert plan["intermediate_size"] == 960 and plan["removed_fraction"] >= 0.25
    assert (plan["num_hidden_layers"], plan["num_key_value_heads"], plan["layers_removed"]) == (30, 3, 0)
    assert prune.plan_pruning(cfg, target_fraction=0.24, mlp=True, multiple=64)["intermediate_size"] == 1024


def test_plan_depth_for_smollm2() -> None:
    plan = prune.plan_pruning(smollm2_135m_config(), target_fraction=0.25, depth=True)
    assert (plan["layers_removed"], plan["num_hidden_layers"], plan["intermediate_size"]) == (8, 22, 1536)
    assert plan["removed_fraction"] >= 0.25


@pytest.mark.parametrize("hidden", [None, 48])
@pytest.mark.parametrize("variant", ["llama6", "llama6_biases", "qwen2_96", *ARCHS])
def test_planned_params_match_the_pruned_model(variant: str, hidden: int | None) -> None:
    if variant == "qwen2_96":
        model = tiny_qwen2()
    elif variant.startswith("llama6"):
        extra = {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": False}
        model = tiny_llama(**(extra if variant == "llama6_biases" else {}))
    else:
        model = tiny(variant)
    before = prune.non_embedding_params(model)
    plan = prune.plan_pruning(
        model.config,
        target_fraction=0.4,
        depth_layers=1,
        depth=True,
        mlp=True,
        kv_groups=1,
        multiple=16,
        hidden_size=hidden,
    )
    assert plan["non_embedding_before"] == before

    data = batches()
    prune.prune_kv_groups(model, plan["num_key_value_heads"], prune.head_group_importance(model, data))
    prune.prune_mlp(model, plan["intermediate_size"], prune.mlp_importance(model, data))
    removed, _ = prune.choose_layers("angular", model, data, plan["layers_removed"])
    prune.remove_layers(model, removed)
    prune.prune_hidden(model, plan["hidden_size"], prune.hidden_importance(model, data))
    assert prune.non_embedding_params(model) == plan["non_embedding_after"]
    assert plan["removed_fraction"] >= 0.4 and plan["intermediate_size"] % 16 == 0
    if hidden:
        assert plan["hidden_size"] == hidden == model.config.hidden_size


def test_plan_target_params_and_explicit_counts() -> None:
    cfg = smollm2_135m_config()
    plan = prune.plan_pruning(cfg, target_params=80_000_000, depth=True)
    assert plan["non_embedding_after"] <= 80_000_000
    assert (
        prune.plan_pruning(cfg, target_params=80_000_000, depth=True, depth_layers=plan["layers_removed"])
        == plan
    )
    explicit = prune.plan_pruning(cfg, depth=True, depth_layers=2, kv_groups=1)
    assert (
        explicit["num_hidden_layers"],
        explicit["num_attention_heads"],
        explicit["num_key_value_heads"],
    ) == (
        28,
        6,
        2,
    )


def test_plan_refuses_unreachable_or_undetermined_targets() -> None:
    cfg = smollm2_135m_config()
    with pytest.raises(EdgesftError, match="cannot reach .* by MLP width"):
        prune.plan_pruning(cfg, target_fraction=0.9, mlp=True, multiple=64)
    with pytest.raises(EdgesftError, match="cannot reach .* by depth"):
        prune.plan_pruning(cfg, target_params=1000, depth=True)
    with pytest.raises(EdgesftError, match="explicit counts"):
        prune.plan_pruning(cfg, target_fraction=0.5, depth=True, depth_layers=1)
    with pytest.raises(EdgesftError, match="not both"):
        prune.plan_pruning(cfg, target_fraction=0.2, target_params=10, mlp=True)
    with pytest.raises(EdgesftError, match="set depth_layers"):
        prune.plan_pruning(cfg, target_fraction=0.2, depth=True, mlp=True)
    with pytest.raises(EdgesftError, match="target"):
        prune.plan_pruning(cfg, mlp=True)
    with pytest.raises(EdgesftError, match="kv_groups"):
        prune.plan_pruning(cfg, kv_groups=3)


def test_plan_refuses_head_counts_transformers_cannot_load() -> None:
    from transformers import LlamaConfig

    # Llama-3.2-1B's proportions (32 heads in 8 KV groups over hidden 2048), scaled down: 8 heads, 4 groups
    # over hidden 64. Removing 1 group leaves 6 heads: 64 % 6 != 0.
    cfg = LlamaConfig(
        hidden_size=64,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=128,
        num_hidden_layers=2,
    )
    with pytest.raises(EdgesftError, match=r"leaves 6 attention heads.*kv_groups that fit: 0, 2, 3"):
        prune.plan_pruning(cfg, kv_groups=1)
    assert prune.plan_pruning(cfg, kv_groups=2)["num_attention_heads"] == 4


def test_plan_refuses_kv_groups_that_break_phi3_long_rope() -> None:
    # Phi-4-mini's proportions: long-RoPE factors for head_dim * 0.75 rotary dims, which transformers checks
    # against hidden_size / num_attention_heads: any change of the head count fails that check on reload.
    factors = [1.0] * 6  # 16 * 0.75 / 2
    rope = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.75,
        "short_factor": factors,
        "long_factor": factors,
        "original_max_position_embeddings": 128,
    }
    model = tiny("phi3", rope_parameters=rope)
    with pytest.raises(
        EdgesftError, match=r"refuses that phi3 config .*short_factor.*kv_groups that fit: 0$"
    ):
        prune.plan_pruning(model.config, kv_groups=1)
    with pytest.raises(EdgesftError, match="refuses that phi3 config"):
        prune.prune_kv_groups(model, 1, prune.head_group_importance(model, batches()))
    assert model.model.layers[0].self_attn.qkv_proj.weight.shape == (128, 64)  # refused before any cut
    assert prune.plan_pruning(model.config, target_fraction=0.2, mlp=True)["intermediate_size"] < 128


def test_plan_refuses_gemma_head_counts_even_with_an_explicit_head_dim() -> None:
    cfg = tiny("gemma2", num_attention_heads=8, num_key_value_heads=4).config
    with pytest.raises(EdgesftError, match=r"leaves 6 attention heads.*gemma2.*kv_groups that fit: 0, 2, 3"):
        prune.plan_pruning(cfg, kv_groups=1)
