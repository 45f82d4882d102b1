"""Qwen3-Next and Qwen3.5: Gated DeltaNet linear attention interleaved with gated full attention.

A ``linear_attention`` block reads the residual stream through its input projections
(Qwen3.5: ``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a``; Qwen3-Next: the fused
``in_proj_qkvz`` and ``in_proj_ba``) and writes it through ``out_proj``; its causal ``conv1d``,
``A_log``, ``dt_bias`` and gated ``norm`` act inside the block.  A ``full_attention`` block is
Qwen3's attention with a per-head output gate stacked into ``q_proj`` (twice the rows).  Norms
compute x̂·(1 + w).
"""
from __future__ import annotations

from typing import Any

from .layout import TensorRef, attention_refs
from .moe_shapes import size

LINEAR_DIMS = ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
               "linear_conv_kernel_dim")


def linear_dims(config: Any, where: str) -> dict:
    return {k: size(config, k, where) for k in LINEAR_DIMS}


def _linear_refs(a, p: str, i: int, fused: bool) -> list[TensorRef]:
    d = a.d
    nk, nv, kd, vd, K = (a.dim(k) for k in LINEAR_DIMS)
    s = f"{p}linear_attn."
    qkv, v = 2 * nk * kd + nv * vd, nv * vd
    if fused:  # Qwen3-Next: q, k, v, z (and b, a) grouped per key head in two tensors
        readers = [TensorRef(f"{s}in_proj_qkvz.weight", "lin_qkvz", i, (qkv + v, d)),
                   TensorRef(f"{s}in_proj_ba.weight", "lin_ba", i, (2 * nv, d))]
    else:
        readers = [TensorRef(f"{s}in_proj_qkv.weight", "lin_qkv", i, (qkv, d)),
                   TensorRef(f"{s}in_proj_z.weight", "lin_z", i, (v, d)),
                   TensorRef(f"{s}in_proj_b.weight", "lin_b", i, (nv, d)),
                   TensorRef(f"{s}in_proj_a.weight", "lin_a", i, (nv, d))]
    return readers + [TensorRef(f"{s}conv1d.weight", "lin_conv", i, (qkv, 1, K)),
                      TensorRef(f"{s}A_log", "lin_A_log", i, (nv,)),
                      TensorRef(f"{s}dt_bias", "lin_dt_bias", i, (nv,)),
                      TensorRef(f"{s}norm.weight", "lin_norm", i, (vd,)),
                      TensorRef(f"{s}out_proj.weight", "lin_out", i, (d, v))]


def attention_qwen3_5(a, p: str, i: int) -> list[TensorRef]:
    if a.layer_types[i] == "linear_attention":
        return _linear_refs(a, p, i, fused=False)
    return attention_refs(a, p, i)


def attention_qwen3_next(a, p: str, i: int) -> list[TensorRef]:
    if a.layer_types[i] == "linear_attention":
        return _linear_refs(a, p, i, fused=True)
    return attention_refs(a, p, i)
