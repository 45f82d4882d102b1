"""Tiny random models of every supported family, built with transformers (for tests)."""
from __future__ import annotations

import torch
from transformers import AutoConfig

from helpers import finetuned, logits, rel_diff, tiny_model  # noqa: F401  (re-exported for the family tests)

DENSE = ("qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "gpt_neox")
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")
FRONTIER_MOE = ("deepseek_v3", "deepseek_v32", "qwen3_5_moe_text", "qwen3_next", "gpt_oss", "olmoe", "glm4_moe", "minimax_m2",
                "llama4_text", "ernie4_5_moe")
STACKED_ON_DISK = ("gpt_oss", "llama4_text")  # experts stored stacked, as transformers holds them
FRONTIER = FRONTIER_MOE + ("qwen3_5_text", "gemma4_text")  # mixtures of experts with dense first blocks, MLA, ...
FAMILIES = ("llama", "mistral", "qwen2") + DENSE + MOE + FRONTIER
POST_NORM = ("gemma2", "gemma3_text", "olmo2", "gpt_neox", "gemma4_text")  # rotation is not exact
GATED = tuple(f for f in FAMILIES if f != "gpt_neox")


def family_config(family: str, d: int = 32, h: int = 64, L: int = 2, V: int = 96, E: int = 4, **kw):
    common = dict(vocab_size=V, hidden_size=d, intermediate_size=h, num_hidden_layers=L,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=d // 4, max_position_embeddings=128,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    # MLA with latents of rank 16, a dense first block, then experts and one shared expert
    deepseek = dict(n_routed_experts=E, num_experts_per_tok=2, moe_intermediate_size=h // 2, n_shared_experts=1,
                    first_k_dense_replace=1, n_group=1, topk_group=1, num_key_value_heads=4, q_lora_rank=16,
                    kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8, head_dim=None,
                    L=max(L, 3))
    # Gated DeltaNet linear attention, then gated full attention
    hybrid = dict(linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                  linear_num_value_heads=4, layer_types=(["linear_attention", "full_attention"] * L)[:L])
    qwen_moe = dict(num_experts=E, num_experts_per_tok=2, moe_intermediate_size=h // 2,
                    shared_expert_intermediate_size=h // 2)
    extra = {
        "gemma2": dict(sliding_window=8, final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
        "gemma3_text": dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"][:L] + ["full_attention"] * max(0, L - 2)),
        "mistral": dict(sliding_window=8),
        "gpt_neox": dict(num_key_value_heads=None, head_dim=None, rotary_pct=0.5),
        "mixtral": dict(num_local_experts=E, num_experts_per_tok=2),
        "qwen2_moe": dict(num_experts=E, num_experts_per_tok=2, moe_intermediate_size=h // 2,
                          shared_expert_intermediate_size=h),
        "qwen3_moe": dict(num_experts=E, num_experts_per_tok=2, moe_intermediate_size=h // 2),
        "deepseek_v3": deepseek,
        "deepseek_v32": dict(deepseek, index_head_dim=8, index_n_heads=2, index_topk=4),  # + the indexer
        "qwen3_5_text": hybrid,
        "qwen3_5_moe_text": dict(hybrid, **qwen_moe),
        "qwen3_next": dict(hybrid, **qwen_moe),
        # fused interleaved experts with biases, attention sinks, alternating sliding windows
        # a dense block, then an MoE block (interleaved); chunked attention shorter than the test sequences
        "llama4_text": dict(num_local_experts=E, num_experts_per_tok=1, intermediate_size=h // 2, intermediate_size_mlp=h,
                            interleave_moe_layer_step=2, attention_chunk_size=8),
        "ernie4_5_moe": dict(moe_num_experts=E, moe_num_shared_experts=1, moe_intermediate_size=h // 2,
                             moe_layer_start_index=1, num_experts_per_tok=2, L=max(L, 3)),
        "olmoe": dict(num_experts=E, num_experts_per_tok=2, intermediate_size=h // 2),
        "minimax_m2": dict(num_local_experts=E, num_experts_per_tok=2, intermediate_size=h // 2),
        # DeepSeek-style experts (dense first block, shared expert, correction bias), q/k norms, qkv biases
        "glm4_moe": dict(n_routed_experts=E, num_experts_per_tok=2, moe_intermediate_size=h // 2, n_shared_experts=1,
                         first_k_dense_replace=1, n_group=1, topk_group=1, use_qk_norm=True, attention_bias=True,
                         L=max(L, 3)),
        # sliding and global blocks of different head sizes, values = keys in global blocks, the last two
        # blocks sharing keys and values (with double-width MLPs), per-layer embeddings of width 8
        "gemma4_text": dict(L=max(L, 4), layer_types=["sliding_attention", "full_attention"] * (max(L, 4) // 2),
                            sliding_window=8, global_head_dim=16, num_global_key_value_heads=1,
                            attention_k_eq_v=True, num_kv_shared_layers=2, use_double_wide_mlp=True,
                            hidden_size_per_layer_input=8, vocab_size_per_layer_input=V,
                            final_logit_softcapping=30.0),
        "gpt_oss": dict(num_local_experts=E, num_experts_per_tok=2, intermediate_size=h // 2, sliding_window=8,
                        layer_types=(["sliding_attention", "full_attention"] * L)[:L]),
    }.get(family, {})
    common.update(extra)
    common["num_hidden_layers"] = common.pop("L", L)
    common.update(kw)
    common = {k: v for k, v in common.items() if v is not None}
    return AutoConfig.for_model(family, **common)


def family_model(config, seed: int = 0, std: float = 0.08):
    """A random model with non-trivial norm gains and biases (Gemma's gains ``1 + w`` around w = 0)."""
    one_plus_w = config.model_type in ("gemma", "gemma2", "gemma3_text")  # Gemma 4's gains are plain w
    model = tiny_model(config, seed, std, norm_center=0.0 if one_plus_w else 1.0)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a router's correction bias and Gemma 4's block scalars are buffers: non-trivial too
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("layer_scalar"):
                b.copy_(0.7 + 0.6 * torch.rand(b.shape, generator=g))
    return model


def noisy(model, seed: int = 1, noise: float = 0.05):
    """θ₂ = θ₁ + noise, the noise scaled per tensor to ``noise`` × its mean absolute value."""
    return finetuned(model, seed, noise)


def save_trio(folder, family: str, **config) -> tuple:
    """``(base model, {"base", "ft", "indep": folder})``: a base of ``family``, base + 5% noise and an
    independent model, saved under ``folder``."""
    cfg = family_config(family, **config)
    base = family_model(cfg, seed=1)
    paths = {}
    for tag, model in (("base", base), ("ft", noisy(base, seed=2)), ("indep", family_model(cfg, seed=3))):
        model.save_pretrained(folder / tag)
        paths[tag] = folder / tag
    return base, paths


def random_ids(V: int, n: int = 2, T: int = 16, seed: int = 0):
    return torch.randint(3, V, (n, T), generator=torch.Generator().manual_seed(seed))


def upcycle(dense, E: int, seed: int, noise: float = 0.05, split: bool = False, shuffle: bool = False):
    """A Mixtral built from a Mistral (attention and norms copied): every expert is the dense MLP
    plus noise, or with ``split`` the E experts split its units among them (expert e: units
    [e·h/E, (e+1)·h/E), plus noise; fine-grained upcycling). ``shuffle``: the dense units are put in
    a random order (from ``seed``) before splitting, as a random or clustering-based partition does;
    returns ``(model, order)`` then, ``order[e·w + j]`` the dense unit of expert e's unit j."""
    c = dense.config
    w = c.intermediate_size // E if split else c.intermediate_size
    cfg = family_config("mixtral", d=c.hidden_size, h=w, L=c.num_hidden_layers, V=c.vocab_size, E=E)
    moe = family_model(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    sd = moe.state_dict()
    for k, v in dense.state_dict().items():
        if k in sd and ".mlp." not in k:
            sd[k] = v.clone()
    orders = []
    for i, layer in enumerate(dense.model.layers):
        m = layer.mlp
        order = torch.randperm(c.intermediate_size, generator=g) if shuffle else torch.arange(c.intermediate_size)
        orders.append(order)
        for e in range(E):
            units = order[e * w:(e + 1) * w] if split else order
            gate_up = torch.cat([m.gate_proj.weight[units], m.up_proj.weight[units]]).detach()
            down = m.down_proj.weight[:, units].detach()
            for key, t in (("gate_up_proj", gate_up), ("down_proj", down)):
                sd[f"model.layers.{i}.mlp.experts.{key}"][e] = t + noise * t.abs().mean() * torch.randn(t.shape, generator=g)
    moe.load_state_dict(sd)
    return (moe, orders) if shuffle else moe
