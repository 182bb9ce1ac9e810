"""Structured pruning on tiny random models: scores find planted redundancy, surgery survives a reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from edgesft import prune
from edgesft.errors import EdgesftError

VOCAB = 256


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
    assert prune.param_counts(tied)["embedding"] == emb
    assert prune.param_counts(untied)["embedding"] == 2 * emb
    for model in (tied, untied):
        counts = prune.param_counts(model)
        assert counts["total"] == counts["embedding"] + counts["non_embedding"]
        assert prune.non_embedding_params(model) == counts["non_embedding"]
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


def test_mlp_pruning_drops_planted_dead_neurons_without_changing_logits() -> None:
    model = tiny_llama()
    dead = [5, 17, 100]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, dead] = 0
    gate_before = model.model.layers[0].mlp.gate_proj.weight.clone()
    before = logits(model, batches())

    importance = prune.mlp_importance(model, batches())
    assert len(importance) == 6 and importance[0].shape == (192,)
    assert all(float(imp[dead].abs().max()) == 0 and float(imp.min()) == 0 for imp in importance)
    prune.prune_mlp(model, 189, importance)

    kept = [j for j in range(192) if j not in dead]
    mlp = model.model.layers[0].mlp
    assert torch.equal(mlp.gate_proj.weight, gate_before[kept])
    assert model.config.intermediate_size == 189
    assert (mlp.gate_proj.weight.shape, mlp.up_proj.weight.shape, mlp.down_proj.weight.shape) == (
        (189, 64),
        (189, 64),
        (64, 189),
    )
    assert torch.allclose(logits(model, batches()), before, atol=1e-5)


def test_mlp_pruning_to_full_size_changes_nothing() -> None:
    model = tiny_llama()
    before = logits(model, batches())
    prune.prune_mlp(model, 192, prune.mlp_importance(model, batches()))
    assert torch.equal(logits(model, batches()), before)


def test_kv_group_pruning_drops_planted_silent_groups_without_changing_logits() -> None:
    model = tiny_llama()
    d = 16  # 64 hidden / 4 heads; 2 query heads per KV group
    silent = [i % 2 for i in range(6)]  # the group whose heads write nothing, per block
    with torch.no_grad():
        for layer, g in zip(model.model.layers, silent, strict=True):
            layer.self_attn.o_proj.weight[:, 2 * g * d : 2 * (g + 1) * d] = 0
    before = logits(model, batches())

    importance = prune.head_group_importance(model, batches())
    assert [int(imp.argmin()) for imp in importance] == silent
    assert all(float(imp.min()) == 0 < float(imp.max()) for imp in importance)
    prune.prune_kv_groups(model, 1, importance)

    cfg = model.config
    assert (cfg.num_key_value_heads, cfg.num_attention_heads, cfg.head_dim) == (1, 2, 16)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (32, 64) and attn.k_proj.weight.shape == (16, 64)
    assert attn.o_proj.weight.shape == (64, 32) and attn.num_key_value_groups == 2
    assert torch.allclose(logits(model, batches()), before, atol=1e-5)


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


# --------------------------------------------------------------------------------------------------------
# Save, reload with stock transformers, same logits


def _apply(model: Any, kind: str) -> None:
    data = batches()
    if kind in ("kv", "all"):
        prune.prune_kv_groups(model, 1, prune.head_group_importance(model, data))
    if kind in ("mlp", "all"):
        prune.prune_mlp(model, 96, prune.mlp_importance(model, data))
    if kind in ("layers", "all"):
        removed, _ = prune.choose_layers("block_influence", model, data, 2)
        prune.remove_layers(model, removed)


@pytest.mark.parametrize("kind", ["layers", "mlp", "kv", "all"])
def test_pruned_model_reloads_with_the_same_logits(kind: str, tmp_path: Path) -> None:
    model = tiny_llama()
    _apply(model, kind)
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


@pytest.mark.parametrize("variant", ["llama", "llama_biases", "qwen2"])
def test_planned_params_match_the_pruned_model(variant: str) -> None:
    if variant == "qwen2":
        model = tiny_qwen2()
    else:
        extra = {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": False}
        model = tiny_llama(**(extra if variant == "llama_biases" else {}))
    before = prune.non_embedding_params(model)
    plan = prune.plan_pruning(
        model.config, target_fraction=0.4, depth_layers=1, depth=True, mlp=True, kv_groups=1, multiple=16
    )
    assert plan["non_embedding_before"] == before

    data = batches()
    prune.prune_kv_groups(model, plan["num_key_value_heads"], prune.head_group_importance(model, data))
    prune.prune_mlp(model, plan["intermediate_size"], prune.mlp_importance(model, data))
    removed, _ = prune.choose_layers("angular", model, data, plan["layers_removed"])
    prune.remove_layers(model, removed)
    assert prune.non_embedding_params(model) == plan["non_embedding_after"]
    assert plan["removed_fraction"] >= 0.4 and plan["intermediate_size"] % 16 == 0


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
