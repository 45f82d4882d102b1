"""DeepSeek-V3 (and Kimi K2 / K2.5, which declare it): multi-head latent attention, dense first
blocks, then mixture-of-experts blocks with a shared expert and a router correction bias.

MLA: ``q_a_proj`` [r_q × d] and ``kv_a_proj_with_mqa`` [(r_kv + rope) × d] read the residual
stream; ``q_a_layernorm`` / ``kv_a_layernorm`` act on the latents, which ``q_b_proj`` and
``kv_b_proj`` read; ``o_proj`` writes the residual stream.  Without a q latent (``q_lora_rank``
null) the queries come from one ``q_proj``.
"""
from __future__ import annotations

from typing import Any

from .layout import TensorRef
from .moe_shapes import get, size

MLA_DIMS = ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def mla_dims(config: Any, where: str) -> dict:
    """The latent and per-head sizes of multi-head latent attention (``q_lora_rank`` may be null)."""
    out = {"q_lora_rank": size(config, "q_lora_rank", where, required=False) or 0}
    for key in MLA_DIMS[1:]:
        out[key] = size(config, key, where)
    return out


def attention_mla(a, p: str, i: int) -> list[TensorRef]:
    d, H = a.d, a.n_heads
    rq, rkv, rope, nope, v = (a.dim(k) for k in MLA_DIMS)
    s = f"{p}self_attn."
    if rq:
        out = [TensorRef(f"{s}q_a_proj.weight", "q_a", i, (rq, d)),
               TensorRef(f"{s}q_a_layernorm.weight", "q_a_norm", i, (rq,)),
               TensorRef(f"{s}q_b_proj.weight", "q_b", i, (H * (nope + rope), rq))]
    else:
        out = [TensorRef(f"{s}q_proj.weight", "q", i, (H * (nope + rope), d))]
    return out + [TensorRef(f"{s}kv_a_proj_with_mqa.weight", "kv_a", i, (rkv + rope, d)),
                  TensorRef(f"{s}kv_a_layernorm.weight", "kv_a_norm", i, (rkv,)),
                  TensorRef(f"{s}kv_b_proj.weight", "kv_b", i, (H * (nope + v), rkv)),
                  TensorRef(f"{s}o_proj.weight", "o", i, (d, H * v))]


def indexer_dims(config: Any, where: str) -> dict:
    """MLA's sizes and those of DeepSeek-V3.2's sparse-attention indexer."""
    return {**mla_dims(config, where), "index_head_dim": size(config, "index_head_dim", where),
            "index_n_heads": size(config, "index_n_heads", where)}


def attention_mla_indexed(a, p: str, i: int) -> list[TensorRef]:
    """DeepSeek-V3.2: MLA plus the indexer, whose ``wk`` and ``weights_proj`` read the residual
    stream, ``wq_b`` reads the q latent and ``k_norm`` (a LayerNorm) acts over its head dimension."""
    s, hd, n = f"{p}self_attn.indexer.", a.dim("index_head_dim"), a.dim("index_n_heads")
    return attention_mla(a, p, i) + [
        TensorRef(f"{s}wq_b.weight", "indexer_q_b", i, (n * hd, a.dim("q_lora_rank"))),
        TensorRef(f"{s}wk.weight", "indexer_k", i, (hd, a.d)),
        TensorRef(f"{s}k_norm.weight", "indexer_k_norm", i, (hd,)),
        TensorRef(f"{s}k_norm.bias", "indexer_k_norm_shift", i, (hd,)),
        TensorRef(f"{s}weights_proj.weight", "indexer_weights", i, (n, a.d))]


def deepseek_moe_shape(config: Any, fam, L: int, where: str) -> dict:
    """Blocks from ``first_k_dense_replace`` on hold ``n_routed_experts`` experts and
    ``n_shared_experts`` shared experts fused into one MLP (as transformers builds it)."""
    E = int(get(config, "n_routed_experts") or 0)
    if not E:
        return {}
    h = size(config, "moe_intermediate_size", where)
    first = int(get(config, "first_k_dense_replace") or 0)
    return dict(n_experts=E, h_expert=h, moe_blocks=tuple(i >= first for i in range(L)),
                h_shared=h * int(get(config, "n_shared_experts") or 0))
