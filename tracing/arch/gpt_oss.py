"""gpt-oss: experts stored fused and transposed, with biases; attention with biases and sinks.

``mlp.experts.gate_up_proj`` [E, d, 2h] interleaves gate and up along its last axis (gate =
``[..., 0::2]``, up = ``[..., 1::2]``) and ``gate_up_proj_bias`` [E, 2h] likewise;
``down_proj`` [E, h, d] with ``down_proj_bias`` [E, d].  The router (``mlp.router``) has a bias
per expert.  ``self_attn.sinks`` holds one value per head.  This is the layout on the hub and in
transformers' modules alike.
"""
from __future__ import annotations

from typing import Any

from .layout import TensorRef, Transposed, attention_refs
from .moe_shapes import n_experts, size


def gpt_oss_shape(config: Any, fam, L: int, where: str) -> dict:
    return dict(n_experts=n_experts(config), h_expert=size(config, "intermediate_size", where), moe_blocks=(True,) * L)


def attention_sinks(a, p: str, i: int) -> list[TensorRef]:
    return attention_refs(a, p, i) + [TensorRef(f"{p}self_attn.sinks", "sinks", i, (a.n_heads,))]


def gpt_oss_moe(a, p: str, i: int) -> list[TensorRef]:
    d, h, E = a.d, a.h_expert, a.n_experts
    m = f"{p}mlp."
    gu, gub, dn, dnb = (f"{m}experts.{k}" for k in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"))
    out = [TensorRef(f"{m}router.weight", "router", i, (E, d)), TensorRef(f"{m}router.bias", "router_bias", i, (E,))]
    for e in range(E):
        for role, stored, index, shape in (
                ("expert_gate", gu, Transposed((e, slice(None), slice(0, None, 2))), (h, d)),
                ("expert_up", gu, Transposed((e, slice(None), slice(1, None, 2))), (h, d)),
                ("expert_down", dn, Transposed((e,)), (d, h)),
                ("expert_gate_bias", gub, (e, slice(0, None, 2)), (h,)),
                ("expert_up_bias", gub, (e, slice(1, None, 2)), (h,)),
                ("expert_down_bias", dnb, (e,), (d,))):
            out.append(TensorRef(f"{stored}#{role}.{e}", role, i, shape, [(stored, index)],
                                 unit=None if role == "expert_down_bias" else (i, e)))
    return out
