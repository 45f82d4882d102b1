"""ERNIE 4.5 MoE: experts from ``moe_layer_start_index`` every ``moe_layer_interval`` blocks up to
``moe_layer_end_index``, shared experts fused into one MLP, and a router correction bias [1, E]
stored as ``mlp.moe_statics.e_score_correction_bias`` (``mlp.gate.moe_statics.*`` in transformers)."""
from __future__ import annotations

from typing import Any

from ..errors import TracingError
from .layout import TensorRef, moe_refs
from .moe_shapes import get, size


def ernie_shape(config: Any, fam, L: int, where: str) -> dict:
    if get(config, "use_bias", False):
        raise TracingError(f"{where}: ERNIE 4.5 checkpoints with use_bias (biases on every linear layer, lm_head "
                           f"included) are not supported; compare checkpoints without them")
    E = int(get(config, "moe_num_experts") or 0)
    if not E:
        return {}
    h = size(config, "moe_intermediate_size", where)
    start, step = int(get(config, "moe_layer_start_index", 0)), int(get(config, "moe_layer_interval", 1))
    end = get(config, "moe_layer_end_index", L - 1)
    end = L - 1 if end is None or end < 0 else int(end)
    blocks = tuple((i + 1) % step == 0 and start <= i <= end for i in range(L))
    return dict(n_experts=E, h_expert=h, moe_blocks=blocks, h_shared=h * int(get(config, "moe_num_shared_experts") or 0))


def ernie_moe(a, p: str, i: int) -> list[TensorRef]:
    disk, mem = f"{p}mlp.moe_statics.e_score_correction_bias", f"{p}mlp.gate.moe_statics.e_score_correction_bias"
    return moe_refs(a, p, i) + [TensorRef(disk, "router_bias", i, (1, a.n_experts), [(disk, None), (mem, None)])]
