"""Gemma 4 (text): per-layer embeddings, a scalar per block, layers that share keys and values.

Per block, as in Gemma 2 / 3, pre- and post-norms around attention and the MLP (norms compute
x̂·w, not Gemma 1-3's x̂·(1 + w)); q/k norms over the head dimension and a gain-free v norm.
What differs per block, from the config:

- sliding-window blocks use ``head_dim`` and ``num_key_value_heads``, full-attention blocks
  ``global_head_dim`` and (with ``attention_k_eq_v``) ``num_global_key_value_heads``, and with
  ``attention_k_eq_v`` a full-attention block has no ``v_proj`` (values are the keys);
- the last ``num_kv_shared_layers`` blocks reuse the keys and values of an earlier block of their
  kind: they have no ``k_proj``, ``v_proj``, ``k_norm``; with ``use_double_wide_mlp`` their MLP is
  twice ``intermediate_size`` wide;
- per-layer embeddings (``hidden_size_per_layer_input`` p > 0): a second embedding
  ``model.embed_tokens_per_layer`` [V_p, L·p] and a projection of the embedded input
  ``model.per_layer_model_projection`` [L·p, d] (then ``per_layer_projection_norm`` over p) give every
  block an input of width p; the block gates it with ``per_layer_input_gate`` [p, d] (reads the
  residual stream) and writes it back through ``per_layer_projection`` [d, p] and the post-norm
  ``post_per_layer_input_norm``;
- ``layer_scalar`` [1] multiplies the block's output;
- with ``enable_moe_block``, routed experts beside the dense MLP in every block (see :func:`gemma4_moe`).

Checkpoints name these tensors alike on the hub and in transformers' modules (``model.language_model.*``
inside the vision-language model ``gemma4``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .layout import TensorRef, dense_mlp_refs
from .moe_shapes import get, size

PLE_EMBED = "model.embed_tokens_per_layer.weight"
PLE_PROJ = "model.per_layer_model_projection.weight"
PLE_NORM = "model.per_layer_projection_norm.weight"


def _layer_types(config: Any, L: int) -> list[str]:
    types = list(get(config, "layer_types") or ["sliding_attention" if (i + 1) % 6 else "full_attention"
                                                 for i in range(L)])
    return types[:-1] + ["full_attention"] if types else types  # transformers makes the last block global


def _overrides(config: Any, i: int, full: bool) -> dict:
    """Block i's head_dim / num_key_value_heads overrides (transformers' ``per_layer_config``, or the
    ``global_head_dim`` / ``num_global_key_value_heads`` keys a config.json carries instead)."""
    per = get(config, "per_layer_config")
    if per is not None and not isinstance(per, dict):  # a transformers config: its per-layer view
        layer = per[i]
        return {"head_dim": layer.head_dim, "num_key_value_heads": layer.num_key_value_heads}
    if per is not None:  # a config.json's keys: "1", or zero-padded ("01") when one has two digits
        return dict(next((v for k, v in per.items() if int(k) == i), None) or {})
    if not full:
        return {}
    out = {"head_dim": get(config, "global_head_dim", 512)}
    if get(config, "attention_k_eq_v", False) and get(config, "num_global_key_value_heads") is not None:
        out["num_key_value_heads"] = get(config, "num_global_key_value_heads")
    return out


def gemma4_dims(config: Any, where: str) -> dict:
    """Per block: (head_dim, key/value heads, shares keys and values, keys are values, MLP width);
    the per-layer embeddings' width p and vocabulary."""
    L, h = size(config, "num_hidden_layers", where), size(config, "intermediate_size", where)
    hd, kv = size(config, "head_dim", where), size(config, "num_key_value_heads", where)
    first_shared = L - int(get(config, "num_kv_shared_layers", 0) or 0)
    wide = bool(get(config, "use_double_wide_mlp", False))
    k_eq_v = bool(get(config, "attention_k_eq_v", False))
    layers = []
    for i, kind in enumerate(_layer_types(config, L)):
        o = _overrides(config, i, kind == "full_attention")
        shared = i >= first_shared
        layers.append((int(o.get("head_dim") or hd), int(o.get("num_key_value_heads") or kv), shared,
                       k_eq_v and kind != "sliding_attention", h * (2 if wide and shared else 1)))
    p = int(get(config, "hidden_size_per_layer_input", 0) or 0)
    return {"layers": tuple(layers), "ple": p,
            "ple_vocab": size(config, "vocab_size_per_layer_input", where) if p else 0}


def attention_gemma4(a, p: str, i: int) -> list[TensorRef]:
    hd, kv, shared, k_eq_v, _ = a.dim("layers")[i]
    d, qo, kvo, s = a.d, a.n_heads * hd, kv * hd, f"{p}self_attn."
    own = [("q", qo)] + ([] if shared else [("k", kvo)] + ([] if k_eq_v else [("v", kvo)]))
    out = [TensorRef(f"{s}{r}_proj.weight", r, i, (rows, d)) for r, rows in own]
    out.append(TensorRef(f"{s}o_proj.weight", "o", i, (d, qo)))
    if a.qkv_bias:
        out += [TensorRef(f"{s}{r}_proj.bias", f"{r}_bias", i, (rows,)) for r, rows in own]
    if a.o_bias:
        out.append(TensorRef(f"{s}o_proj.bias", "o_bias", i, (d,)))
    return out + [TensorRef(f"{s}{r}_norm.weight", f"{r}_norm", i, (hd,)) for r in ("q", "k")[:1 if shared else 2]]


def mlp_gemma4(a, p: str, i: int, h: int) -> list[TensorRef]:
    return dense_mlp_refs(a, p, i, a.dim("layers")[i][4])


def gemma4_moe_shape(config: Any, fam, L: int, where: str) -> dict:
    """With ``enable_moe_block`` every block holds ``num_experts`` routed experts beside its dense MLP,
    which is always active: it is the block's shared expert."""
    if not get(config, "enable_moe_block", False):
        return {}
    return dict(n_experts=size(config, "num_experts", where), h_expert=size(config, "moe_intermediate_size", where),
                moe_blocks=(True,) * L, h_shared=size(config, "intermediate_size", where))


def gemma4_moe(a, p: str, i: int) -> list[TensorRef]:
    """A Gemma 4 mixture-of-experts block: the dense MLP (as the shared expert, reading
    ``pre_feedforward_layernorm``), the router (``router.proj`` with its gain ``router.scale`` over
    the residual stream and ``per_expert_scale``), the experts stacked as in transformers
    (``experts.gate_up_proj`` [E, 2h, d], gate rows first; ``experts.down_proj`` [E, d, h]) reading
    ``pre_feedforward_layernorm_2``, and the post-norms of both outputs."""
    d, h, E = a.d, a.h_expert, a.n_experts
    out = dense_mlp_refs(a, p, i, a.dim("layers")[i][4], roles=("shared_gate", "shared_up", "shared_down"),
                         unit=(i, "shared"))
    out += [TensorRef(f"{p}router.proj.weight", "router", i, (E, d)),
            TensorRef(f"{p}router.scale", "router_scale", i, (d,)),
            TensorRef(f"{p}router.per_expert_scale", "router_expert_scale", i, (E,))]
    gu, dn = f"{p}experts.gate_up_proj", f"{p}experts.down_proj"
    for e in range(E):
        for role, stored, index, shape in (("expert_gate", gu, (e, slice(0, h)), (h, d)),
                                           ("expert_up", gu, (e, slice(h, 2 * h)), (h, d)),
                                           ("expert_down", dn, (e,), (d, h))):
            out.append(TensorRef(f"{stored}#{role}.{e}", role, i, shape, [(stored, index)], unit=(i, e)))
    return out + [TensorRef(f"{p}{name}.weight", role, i, (d,)) for name, role in (
        ("post_feedforward_layernorm_1", "mlp_out_norm_1"), ("pre_feedforward_layernorm_2", "experts_in_norm"),
        ("post_feedforward_layernorm_2", "experts_out_norm"))]


def block_extra(a, p: str, i: int) -> list[TensorRef]:
    """The per-layer input's gate, projection and post-norm, and the block's output scalar."""
    out = [TensorRef(f"{p}layer_scalar", "layer_scalar", i, (1,))]
    P = a.dim("ple")
    if P:
        out += [TensorRef(f"{p}per_layer_input_gate.weight", "ple_gate", i, (P, a.d)),
                TensorRef(f"{p}per_layer_projection.weight", "ple_out", i, (a.d, P)),
                TensorRef(f"{p}post_per_layer_input_norm.weight", "ple_out_norm", i, (a.d,))]
    return out


def global_extra(a) -> list[TensorRef]:
    P = a.dim("ple")
    if not P:
        return []
    return [TensorRef(PLE_EMBED, "ple_embed", None, (a.dim("ple_vocab"), a.L * P)),
            TensorRef(PLE_PROJ, "ple_proj", None, (a.L * P, a.d)),
            TensorRef(PLE_NORM, "ple_norm", None, (P,))]


def layer_inputs(lane, skel, ids: torch.Tensor, x: torch.Tensor, dtype: torch.dtype):
    """What a block takes besides its hidden states, as transformers computes it: the per-layer
    inputs (from the token ids and the embedded input ``x``) and, per batch, the keys and values
    shared from earlier blocks. Returns ``(block, batch slice) -> keyword arguments``.

    Block i's per-layer input is computed when block i runs, from its own slice of the per-layer
    embedding (the rows of the tokens present, columns i·p to (i+1)·p) and of the projection (rows
    i·p to (i+1)·p): what stays in memory is a copy of the embedded input and one block's inputs,
    not the L·p values per token that all blocks take together.  The numbers equal those of
    transformers' whole-model computation (each value of a matrix product is the same dot product)."""
    a = lane.arch
    P, shared = a.dim("ple"), {}
    current: dict = {}  # block -> its per-layer inputs [N, T, P] (the block running now only)
    if P:
        x = x.clone()  # the engine updates the hidden states in place
        tokens, where = torch.unique(ids, sorted=True, return_inverse=True)
        tokens = tokens.cpu().numpy()
        norm = skel.module(lane, [PLE_NORM], PLE_NORM.rsplit(".", 1)[0])

    def per_layer_input(i: int) -> torch.Tensor:
        if i not in current:
            current.clear()
            cols = slice(i * P, (i + 1) * P)
            table = lane.get_rows(PLE_EMBED, tokens, dtype)[:, cols].contiguous().to(x.device)
            tok = F.embedding(where, table) * torch.tensor(P ** 0.5).to(dtype)
            W = lane.get_rows(PLE_PROJ, range(cols.start, cols.stop), dtype).to(x.device)
            proj = F.linear(x, W) * a.d ** -0.5
            current[i] = (norm(proj) + tok) * 2.0 ** -0.5
        return current[i]

    def kwargs(i: int, b: slice) -> dict:
        out = {"shared_kv_states": shared.setdefault(b.start, {})}
        if P:
            out["per_layer_input"] = per_layer_input(i)[b]
        return out
    return kwargs
