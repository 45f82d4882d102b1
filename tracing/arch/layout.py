"""Where each role of each block lives: in the checkpoint files and in transformers' modules.

A :class:`TensorRef` names one logical tensor (a role of a block, possibly of one expert) and says
how to read it: a list of *stores* — a stored tensor name plus an optional index selecting the
role's part of a fused tensor — tried in order (the on-disk layout first, then the in-memory
layout of transformers' modules), and the single *module* location used when building modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

Index = tuple | None  # a tuple of ints/slices, or (LongTensor,) for scattered rows


class Transposed(tuple):
    """An index whose part is stored transposed: the role's rows are the part's columns
    (gpt-oss stores its experts as [E, in, out])."""


def select(t: torch.Tensor, index: Index) -> torch.Tensor:
    """A role's part of a stored tensor (``index`` of a :class:`TensorRef` store)."""
    if index is None:
        return t
    if isinstance(index, Transposed):
        return t[tuple(index)].T
    return t[index]


def place(t: torch.Tensor, index: Index, part: torch.Tensor) -> None:
    """Write a role's part into its place in a fused tensor (the inverse of :func:`select`)."""
    if isinstance(index, Transposed):
        t[tuple(index)] = part.T
    else:
        t[index] = part


@dataclass
class TensorRef:
    name: str  # logical name (the on-disk name of an unfused tensor)
    role: str
    block: int | None
    shape: tuple[int, ...]
    stores: list[tuple[str, Index]] = field(default_factory=list)
    module: tuple[str, Index] | None = None
    unit: object = None  # key of the MLP permutation this tensor follows (block, or (block, expert))

    def __post_init__(self):
        if not self.stores:
            self.stores = [(self.name, None)]
        if self.module is None:
            self.module = self.stores[-1]


def _rows(a: int, b: int) -> tuple:
    return (slice(a, b),)


def attention_fused_qkv(a, p: str, i: int) -> list[TensorRef]:
    """Phi-3: q, k, v rows stacked in one ``qkv_proj``."""
    d, qo, kvo = a.d, a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    fused = f"{p}self_attn.qkv_proj.weight"
    out = [TensorRef(f"{fused}#{role}", role, i, (hi - lo, d), [(fused, _rows(lo, hi))])
           for role, lo, hi in (("q", 0, qo), ("k", qo, qo + kvo), ("v", qo + kvo, qo + 2 * kvo))]
    out.append(TensorRef(f"{p}self_attn.o_proj.weight", "o", i, (d, qo)))
    return out


def attention_neox(a, p: str, i: int) -> list[TensorRef]:
    """GPT-NeoX: q, k, v interleaved per head in one ``query_key_value`` (weight and bias)."""
    d, hd, n = a.d, a.head_dim, a.n_heads
    out: list[TensorRef] = []
    base = torch.arange(n)[:, None] * 3 * hd
    for k, role in enumerate(("q", "k", "v")):
        rows = (base + k * hd + torch.arange(hd)[None]).reshape(-1)
        for suffix, shape in (("weight", (n * hd, d)), ("bias", (n * hd,))):
            if suffix == "bias" and not a.qkv_bias:
                continue
            fused = f"{p}attention.query_key_value.{suffix}"
            r = role if suffix == "weight" else f"{role}_bias"
            out.append(TensorRef(f"{fused}#{role}", r, i, shape, [(fused, (rows,))]))
    out.append(TensorRef(f"{p}attention.dense.weight", "o", i, (d, n * hd)))
    if a.o_bias:
        out.append(TensorRef(f"{p}attention.dense.bias", "o_bias", i, (d,)))
    return out


def attention_refs(a, p: str, i: int) -> list[TensorRef]:
    """q/k/v/o (and biases, q/k norms) of block i, one tensor each; ``p`` is the block prefix."""
    d, qo, kvo = a.d, a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    out: list[TensorRef] = []
    # a per-head output gate stacked into q_proj (Qwen3-Next, Qwen3.5) doubles its rows
    for role, rows in (("q", qo * (2 if a.fam.q_gated else 1)), ("k", kvo), ("v", kvo)):
        out.append(TensorRef(f"{p}self_attn.{role}_proj.weight", role, i, (rows, d)))
    out.append(TensorRef(f"{p}self_attn.o_proj.weight", "o", i, (d, qo)))
    if a.qkv_bias:
        for role, rows in (("q", qo), ("k", kvo), ("v", kvo)):
            out.append(TensorRef(f"{p}self_attn.{role}_proj.bias", f"{role}_bias", i, (rows,)))
    if a.o_bias:
        out.append(TensorRef(f"{p}self_attn.o_proj.bias", "o_bias", i, (d,)))
    if a.qk_norm == "head":
        out += [TensorRef(f"{p}self_attn.q_norm.weight", "q_norm", i, (a.head_dim,)),
                TensorRef(f"{p}self_attn.k_norm.weight", "k_norm", i, (a.head_dim,))]
    elif a.qk_norm == "full":
        out += [TensorRef(f"{p}self_attn.q_norm.weight", "q_norm", i, (qo,)),
                TensorRef(f"{p}self_attn.k_norm.weight", "k_norm", i, (kvo,))]
    return out


def norm_refs(a, p: str, i: int) -> list[TensorRef]:
    """Norms of block i by function: ``in_norm`` read by attention, ``post_norm`` read by the
    MLP, ``attn_out_norm`` / ``mlp_out_norm`` applied to a sublayer's output (post-norms)."""
    d = a.d
    names = {
        "llama": {"in_norm": "input_layernorm", "post_norm": "post_attention_layernorm"},
        "gemma2": {"in_norm": "input_layernorm", "attn_out_norm": "post_attention_layernorm",
                   "post_norm": "pre_feedforward_layernorm", "mlp_out_norm": "post_feedforward_layernorm"},
        "olmo2": {"attn_out_norm": "post_attention_layernorm", "mlp_out_norm": "post_feedforward_layernorm"},
    }[a.norm_layout]
    out = []
    for role, mod in names.items():
        out.append(TensorRef(f"{p}{mod}.weight", role, i, (d,)))
        if a.norm_bias:
            out.append(TensorRef(f"{p}{mod}.bias", f"{role}_bias", i, (d,)))
    return out


def mlp_fused_gate_up(a, p: str, i: int, h: int) -> list[TensorRef]:
    """Phi-3: gate rows then up rows in one ``gate_up_proj``."""
    fused = f"{p}mlp.gate_up_proj.weight"
    return [TensorRef(f"{fused}#gate", "gate", i, (h, a.d), [(fused, _rows(0, h))], unit=i),
            TensorRef(f"{fused}#up", "up", i, (h, a.d), [(fused, _rows(h, 2 * h))], unit=i),
            TensorRef(f"{p}mlp.down_proj.weight", "down", i, (a.d, h), unit=i)]


def mlp_neox(a, p: str, i: int, h: int) -> list[TensorRef]:
    """GPT-NeoX: a non-gated MLP with biases."""
    d = a.d
    return [TensorRef(f"{p}mlp.dense_h_to_4h.weight", "up", i, (h, d), unit=i),
            TensorRef(f"{p}mlp.dense_h_to_4h.bias", "up_bias", i, (h,), unit=i),
            TensorRef(f"{p}mlp.dense_4h_to_h.weight", "down", i, (d, h), unit=i),
            TensorRef(f"{p}mlp.dense_4h_to_h.bias", "down_bias", i, (d,))]


def dense_mlp_refs(a, p: str, i: int, h: int, prefix: str = "mlp.", roles=("gate", "up", "down"),
                   unit=None) -> list[TensorRef]:
    """A gated MLP stored as separate gate/up/down projections (a dense MLP or a shared expert)."""
    d = a.d
    unit = i if unit is None else unit
    g, u, dn = roles
    out = [TensorRef(f"{p}{prefix}gate_proj.weight", g, i, (h, d), unit=unit),
           TensorRef(f"{p}{prefix}up_proj.weight", u, i, (h, d), unit=unit),
           TensorRef(f"{p}{prefix}down_proj.weight", dn, i, (d, h), unit=unit)]
    if a.mlp_bias and prefix == "mlp.":
        out += [TensorRef(f"{p}{prefix}gate_proj.bias", f"{g}_bias", i, (h,), unit=unit),
                TensorRef(f"{p}{prefix}up_proj.bias", f"{u}_bias", i, (h,), unit=unit),
                TensorRef(f"{p}{prefix}down_proj.bias", f"{dn}_bias", i, (d,))]
    return out


def moe_refs(a, p: str, i: int) -> list[TensorRef]:
    """Router, routed experts (on disk one tensor per expert; in transformers' modules stacked
    as ``experts.gate_up_proj`` [E, 2h, d] and ``experts.down_proj`` [E, d, h]) and shared expert."""
    d, h, E = a.d, a.h_expert, a.n_experts
    disk, mem = f"{p}{a.fam.expert_prefix}", f"{p}mlp."
    out = [TensorRef(f"{disk}gate.weight", "router", i, (E, d), [(f"{disk}gate.weight", None), (f"{mem}gate.weight", None)])]
    files = a.fam.expert_files
    gu, dn = f"{mem}experts.gate_up_proj", f"{mem}experts.down_proj"
    for e in range(E):
        for role, f, shape, fused in (("expert_gate", files[0], (h, d), (gu, (e, slice(0, h)))),
                                      ("expert_up", files[1], (h, d), (gu, (e, slice(h, 2 * h)))),
                                      ("expert_down", files[2], (d, h), (dn, (e,)))):
            name = f"{disk}experts.{e}.{f}.weight"
            out.append(TensorRef(name, role, i, shape, [(name, None), fused], unit=(i, e)))
    if a.fam.router_bias:  # relative to the experts' prefix (on disk, then in transformers' modules)
        rb = [(f"{disk}{a.fam.router_bias}", None)] + ([(f"{mem}{a.fam.router_bias}", None)] if disk != mem else [])
        out.append(TensorRef(rb[0][0], "router_bias", i, (E,), rb))
    if a.h_shared:
        out += dense_mlp_refs(a, p, i, a.h_shared, prefix=a.fam.shared_prefix,
                              roles=("shared_gate", "shared_up", "shared_down"), unit=(i, "shared"))
        if a.fam.shared_gate:
            out.append(TensorRef(f"{p}{a.fam.shared_gate}", "shared_router", i, (1, d)))
    return out


def block_refs(a, i: int) -> list[TensorRef]:
    p = f"{a.layers_prefix}.{i}."
    fam = a.fam
    mlp = fam.moe(a, p, i) if a.is_moe_block(i) else fam.mlp(a, p, i, a.h)
    return fam.attention(a, p, i) + mlp + norm_refs(a, p, i) + (fam.block_extra(a, p, i) if fam.block_extra else [])


def global_refs(a) -> list[TensorRef]:
    d, V = a.d, a.V
    out = [TensorRef(a.embed, "embed", None, (V, d)), TensorRef(a.final_norm, "final_norm", None, (d,))]
    if a.norm_bias:
        out.append(TensorRef(a.final_norm.replace(".weight", ".bias"), "final_norm_bias", None, (d,)))
    stores = [(name, None) for name in a.fam.lm_head_stores]
    out.append(TensorRef("lm_head.weight", "lm_head", None, (V, d), stores, module=("lm_head.weight", None)))
    return out + (a.fam.global_extra(a) if a.fam.global_extra else [])


def wrapped_refs(refs: list[TensorRef], wrapper) -> list[TensorRef]:
    """The language model's references inside a vision-language wrapper: each stored name is also
    looked for under the wrapper's prefixes (``model.language_model.``, ``language_model.model.``);
    the module location stays the text model's."""
    out = []
    for r in refs:
        stores = list(r.stores)
        for stored, index in r.stores:
            stores += [(wrapped + stored[len(text):], index) for text, wrapped in wrapper.wrapped
                       if stored.startswith(text)]
        out.append(TensorRef(r.name, r.role, r.block, r.shape, stores, r.module, r.unit))
    return out
