"""Llama 4 (text): MoE and dense blocks interleaved, experts stored stacked and transposed.

Blocks listed in ``moe_layers`` (by default every ``interleave_moe_layer_step``-th) hold
``feed_forward.experts.gate_up_proj`` [E, d, 2h] (gate = ``[..., :h]``, up = ``[..., h:]``),
``feed_forward.experts.down_proj`` [E, h, d], a router ``feed_forward.router`` and a shared
expert ``feed_forward.shared_expert.*``; the other blocks a dense ``feed_forward`` MLP of width
``intermediate_size_mlp``.  Same layout on the hub and in transformers' modules.
"""
from __future__ import annotations

from typing import Any

from .layout import TensorRef, Transposed, dense_mlp_refs
from .moe_shapes import get, n_experts, size


def llama4_shape(config: Any, fam, L: int, where: str) -> dict:
    h = size(config, "intermediate_size", where)
    moe = get(config, "moe_layers")
    if moe is None:
        step = size(config, "interleave_moe_layer_step", where, required=False) or 1
        moe = list(range(step - 1, L, step))
    return dict(n_experts=n_experts(config), h_expert=h, moe_blocks=tuple(i in set(moe) for i in range(L)), h_shared=h)


def llama4_mlp(a, p: str, i: int, h: int) -> list[TensorRef]:
    return dense_mlp_refs(a, p, i, h, prefix="feed_forward.")


def llama4_moe(a, p: str, i: int) -> list[TensorRef]:
    d, h, E = a.d, a.h_expert, a.n_experts
    f = f"{p}feed_forward."
    gu, dn = f"{f}experts.gate_up_proj", f"{f}experts.down_proj"
    out = [TensorRef(f"{f}router.weight", "router", i, (E, d))]
    for e in range(E):
        for role, stored, index, shape in (("expert_gate", gu, Transposed((e, slice(None), slice(0, h))), (h, d)),
                                           ("expert_up", gu, Transposed((e, slice(None), slice(h, 2 * h))), (h, d)),
                                           ("expert_down", dn, Transposed((e,)), (d, h))):
            out.append(TensorRef(f"{stored}#{role}.{e}", role, i, shape, [(stored, index)], unit=(i, e)))
    return out + dense_mlp_refs(a, p, i, a.h_shared, prefix="feed_forward.shared_expert.",
                                roles=("shared_gate", "shared_up", "shared_down"), unit=(i, "shared"))
