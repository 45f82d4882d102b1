"""Architecture adapter: the name, role and permutation behaviour of every tensor of a checkpoint.

This package is the only place that knows Hugging Face tensor names.  Everything else works
with *logical names* (see :class:`~tracing.arch.layout.TensorRef`) and their *roles*: the
on-disk name of a tensor, or ``<fused name>#<role>`` for a role's rows of a fused tensor
(Phi-3 ``qkv_proj`` / ``gate_up_proj``, GPT-NeoX ``query_key_value``).  Shapes come from the
config; nothing is hard-coded to one size.

Roles: attention ``q k v o`` (+ ``_bias``), ``q_norm k_norm``; multi-head latent attention
``q_a kv_a`` (read the residual stream), ``q_a_norm kv_a_norm`` (on the latents), ``q_b kv_b``, the
DeepSeek-V3.2 indexer's ``indexer_k indexer_weights`` (read the residual stream), ``indexer_q_b``
(reads the q latent), ``indexer_k_norm indexer_k_norm_shift``; linear attention (Gated DeltaNet)
``lin_qkv lin_z lin_b lin_a`` / ``lin_qkvz lin_ba`` (read the residual stream), ``lin_out`` (writes
it), ``lin_conv lin_A_log lin_dt_bias lin_norm`` (internal); MLP ``gate up down`` (+ ``_bias``);
mixture of experts ``router``, ``router_bias`` (per expert), ``expert_gate expert_up expert_down`` (one per expert,
with ``_bias`` for gpt-oss), attention ``sinks`` (per head),
``shared_gate shared_up shared_down shared_router``; norms ``in_norm`` (read by attention),
``post_norm`` (read by the MLP), ``attn_out_norm`` / ``mlp_out_norm`` (post-norms on a
sublayer's output), ``*_bias`` of LayerNorms; ``embed``, ``final_norm``, ``lm_head``; Gemma 4's per-layer
embeddings ``ple_embed``, ``ple_proj`` (reads the embedded input), ``ple_norm`` and per block ``ple_gate``
(reads the residual stream), ``ple_out`` (writes it), ``ple_out_norm`` (its post-norm), ``layer_scalar``, and in
its mixture-of-experts blocks ``router_scale`` (a gain over the residual stream), ``router_expert_scale``,
``experts_in_norm`` (the experts' own input norm), ``mlp_out_norm_1`` / ``experts_out_norm`` (post-norms).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from ..errors import TracingError
from . import families as _families  # noqa: F401  (registers the supported families)
from .family import FAMILIES, Family, register
from .layout import TensorRef, block_refs, global_refs, wrapped_refs
from .moe_shapes import get as _get, size as _size

# Legacy Llama names (kept for callers that only handle Llama-family checkpoints).
EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"

SUPPORTED = tuple(FAMILIES)

#: the input projections of a linear-attention block (they read the residual stream)
LINEAR_READERS = ("lin_qkv", "lin_z", "lin_b", "lin_a", "lin_qkvz", "lin_ba")
ATTN_ROLES = frozenset({"q", "k", "v", "o", "q_bias", "k_bias", "v_bias", "o_bias", "q_norm", "k_norm",
                        "q_a", "q_a_norm", "q_b", "kv_a", "kv_a_norm", "kv_b", "indexer_q_b", "indexer_k",
                        "indexer_k_norm", "indexer_k_norm_shift", "indexer_weights",
                        "lin_conv", "lin_A_log", "lin_dt_bias", "lin_norm", "lin_out", "sinks", *LINEAR_READERS})
MLP_ROLES = frozenset({"gate", "up", "down", "gate_bias", "up_bias", "down_bias", "router", "router_bias",
                       "expert_gate", "expert_up", "expert_down", "expert_gate_bias", "expert_up_bias",
                       "expert_down_bias", "shared_gate", "shared_up", "shared_down", "shared_router",
                       "ple_gate", "ple_out", "router_scale", "router_expert_scale"})
#: a router's tensors indexed by expert: ``router`` by its rows, the others (one value per expert) by their last axis
EXPERT_INDEXED = ("router", "router_bias", "router_expert_scale")
NORM_ROLES = frozenset({"in_norm", "post_norm", "attn_out_norm", "mlp_out_norm", "in_norm_bias",
                        "post_norm_bias", "attn_out_norm_bias", "mlp_out_norm_bias", "ple_out_norm",
                        "mlp_out_norm_1", "experts_in_norm", "experts_out_norm"})
#: columns index the residual stream
READ_RESIDUAL = frozenset({"q", "k", "v", "q_a", "kv_a", "indexer_k", "indexer_weights", "gate", "up", "embed",
                           "lm_head", "router", "expert_gate", "expert_up", "shared_gate", "shared_up",
                           "shared_router", "ple_gate", "ple_proj", *LINEAR_READERS})
#: rows index the residual stream
WRITE_RESIDUAL = frozenset({"o", "lin_out", "down", "expert_down", "shared_down", "ple_out"})
#: vectors over the residual stream
RES_VECTORS = NORM_ROLES | {"final_norm", "final_norm_bias", "o_bias", "down_bias", "expert_down_bias", "router_scale"}
#: rows (resp. columns) index the hidden units of an MLP or expert
UNIT_ROWS = frozenset({"gate", "up", "gate_bias", "up_bias", "expert_gate", "expert_up", "expert_gate_bias",
                       "expert_up_bias", "shared_gate", "shared_up"})
UNIT_COLS = frozenset({"down", "expert_down", "shared_down"})
#: which norm each reader of the residual stream reads through (for folding gains)
READS_THROUGH = {"q": "in_norm", "k": "in_norm", "v": "in_norm", "q_a": "in_norm", "kv_a": "in_norm",
                 "indexer_k": "in_norm", "indexer_weights": "in_norm", **{r: "in_norm" for r in LINEAR_READERS},
                 "gate": "post_norm", "up": "post_norm",
                 "router": "post_norm", "expert_gate": "post_norm", "expert_up": "post_norm",
                 "shared_gate": "post_norm", "shared_up": "post_norm", "shared_router": "post_norm"}


@dataclass(frozen=True)
class Unit:
    """One MLP (dense, routed expert or shared expert) of a block: its permutation key and roles."""
    key: object  # block index, (block, expert) or (block, "shared")
    expert: object  # None, an expert index, or "shared"
    width: int
    gate: str | None
    up: str
    down: str


@dataclass(frozen=True)
class Arch:
    """Shapes and tensor names of one checkpoint (derived from its config)."""

    model_type: str
    d: int  # residual width (hidden_size)
    h: int  # dense MLP width (intermediate_size)
    L: int  # number of blocks
    V: int  # vocabulary size
    n_heads: int
    n_kv_heads: int
    head_dim: int
    tied: bool  # lm_head shares the embedding tensor
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    n_experts: int = 0
    h_expert: int = 0
    h_shared: int = 0
    moe_blocks: tuple = ()
    final_softcap: float | None = None
    dims: tuple = ()  # further sizes of the family's layout, as sorted (key, value) pairs
    wrapper: str | None = None  # the vision-language wrapper whose language model this is
    layer_types: tuple = ()  # a hybrid's kind of each block (linear or full attention)
    qk_norm: str | None = None  # q/k norms: None, "head" (over head_dim) or "full" (over the projected width)

    def dim(self, key: str) -> int:
        """A further size of the family's layout (e.g. MLA's latent ranks)."""
        return dict(self.dims)[key]

    # ---- family facts ------------------------------------------------------------------
    @property
    def fam(self) -> Family:
        """The family record of this checkpoint's model_type."""
        return FAMILIES[self.model_type]

    @property
    def family(self) -> str:
        """The layout group (checkpoints of one group name their tensors alike)."""
        return self.fam.group

    @property
    def norm_layout(self) -> str:
        return self.fam.norms

    @property
    def gain_offset(self) -> float:
        """Norms compute x̂·(offset + w): 1 for Gemma's (1 + w), else 0."""
        return self.fam.gain_offset

    @property
    def norm_bias(self) -> bool:
        return self.fam.norm_bias

    @property
    def gated(self) -> bool:
        return self.fam.gated

    @property
    def has_experts(self) -> bool:
        return any(self.moe_blocks)

    def is_moe_block(self, i: int) -> bool:
        return bool(self.moe_blocks) and bool(self.moe_blocks[i])

    @property
    def layers_prefix(self) -> str:
        return self.fam.layers_prefix

    @property
    def embed(self) -> str:
        return self.fam.embed

    @property
    def final_norm(self) -> str:
        return self.fam.final_norm

    @property
    def embed_scale(self) -> float:
        return self.d ** 0.5 if self.fam.embed_scaled else 1.0

    def rotation_problem(self) -> str | None:
        """Why a residual rotation is not function-preserving here, or None when it is exact."""
        return self.fam.rotation_problem

    # ---- names -------------------------------------------------------------------------
    def block_refs(self, i: int) -> list[TensorRef]:
        return _block_refs(self, i)

    def ref(self, name: str) -> TensorRef:
        try:
            return _index(self)[name]
        except KeyError:
            raise KeyError(name) from None

    def block_name(self, i: int, role: str, expert=None) -> str:
        for r in self.block_refs(i):
            if r.role == role and (expert is None or r.unit == (i, expert)):
                return r.name
        raise KeyError(f"block {i} of {self.model_type} has no {role}" + (f" of expert {expert}" if expert is not None else ""))

    def units(self, i: int) -> list[Unit]:
        """The MLPs of block i: one dense MLP, or every routed expert (and the shared expert)."""
        by_unit: dict = {}
        for r in self.block_refs(i):
            if r.unit is not None and r.role in UNIT_ROWS | UNIT_COLS and not r.role.endswith("_bias"):
                by_unit.setdefault(r.unit, {})[r.role.split("_")[-1]] = r
        out = []
        for key, roles in by_unit.items():
            expert = key[1] if isinstance(key, tuple) else None
            out.append(Unit(key, expert, roles["up"].shape[0], roles["gate"].name if "gate" in roles else None,
                            roles["up"].name, roles["down"].name))
        return out

    @property
    def lm_head(self) -> str:
        """Name to read the output projection from (the embedding when tied)."""
        return self.embed if self.tied else LM_HEAD

    def names(self) -> list[str]:
        """Every distinct tensor, in model order (a tied lm_head is not listed twice)."""
        g = _global_refs(self)
        out = [g[0].name]
        for i in range(self.L):
            out += [r.name for r in self.block_refs(i)]
        out += [r.name for r in g[1:] if r.role != "lm_head" or not self.tied]
        return out

    def role_of(self, name: str) -> tuple[str, int | None]:
        """(role, block index or None) of a tensor name; raises KeyError for unknown names."""
        r = self.ref(name)
        return r.role, r.block

    def shape(self, name: str) -> tuple[int, ...]:
        return self.ref(name).shape

    # ---- sizes -------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(_numel(self.shape(n)) for n in self.names())

    def largest_tensor_numel(self) -> int:
        return max(_numel(self.shape(n)) for n in self.names())

    def block_numel(self) -> int:
        return max(sum(_numel(r.shape) for r in self.block_refs(i)) for i in range(self.L))

    def untied(self) -> "Arch":
        return dataclasses.replace(self, tied=False)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@functools.lru_cache(maxsize=4096)
def _block_refs(a: Arch, i: int) -> list[TensorRef]:
    refs = block_refs(a, i)
    return wrapped_refs(refs, FAMILIES[a.wrapper]) if a.wrapper else refs


def _global_refs(a: Arch) -> list[TensorRef]:
    refs = global_refs(a)
    return wrapped_refs(refs, FAMILIES[a.wrapper]) if a.wrapper else refs


@functools.lru_cache(maxsize=64)
def _index(a: Arch) -> dict[str, TensorRef]:
    out = {r.name: r for r in _global_refs(a)}
    for i in range(a.L):
        out.update({r.name: r for r in a.block_refs(i)})
    return out


def files_read(a: Arch, weight_map: dict[str, str]) -> set[str]:
    """The files of a sharded checkpoint (its index's ``weight_map``: stored name -> file) that hold a
    tensor the model ``a`` reads: one of its stored names, or a part stored beside one under the same
    module (a quantized layer's packed weight and scales). A file holding only other tensors (a
    vision-language wrapper's vision tower, a multi-token-prediction block) is not among them."""
    stored = {s for n in a.names() for s, _ in a.ref(n).stores}
    modules = {s.rpartition(".")[0] for s in stored if "." in s}

    def read(t: str) -> bool:
        return t in stored or any(t[:k] in modules for k, c in enumerate(t) if c == ".")
    return {f for t, f in weight_map.items() if read(t)}


def arch_from_config(config: Any, where: str = "the model config") -> Arch:
    """Build an :class:`Arch` from a transformers config object or a config.json dict
    (``where`` names the config in error messages, e.g. its file)."""
    model_type = _get(config, "model_type")
    if model_type not in FAMILIES:
        raise TracingError(
            f"unsupported architecture {model_type!r}: model-tracing supports {', '.join(sorted(FAMILIES))} "
            f"checkpoints (see docs/architectures.md)")
    fam = FAMILIES[model_type]
    if fam.text_of:  # a vision-language wrapper: its language model
        text = _get(config, fam.text_of)
        if text is None:
            raise TracingError(f"{where} is a {model_type} config without its {fam.text_of}; "
                               f"use the config.json that came with the weights")
        arch = arch_from_config(text, where)
        tied = _get(config, "tie_word_embeddings")  # the wrapper's own flag decides, when it has one
        return dataclasses.replace(arch, wrapper=model_type, tied=arch.tied if tied is None else bool(tied))
    _check_layer_types(config, fam, where)
    d = _size(config, "hidden_size", where)
    n_heads = _size(config, "num_attention_heads", where)
    n_kv = (_size(config, fam.kv_heads_key, where, required=False) if fam.kv_heads_key else None) or n_heads
    head_dim = _size(config, "head_dim", where, required=False) or d // n_heads
    tied = _get(config, "tie_word_embeddings")
    if tied is None:
        tied = fam.tied_default
    L = _size(config, "num_hidden_layers", where)
    cap = _get(config, "final_logit_softcapping")
    moe = fam.moe_shape(config, fam, L, where) if fam.moe_shape else {}
    dims = tuple(sorted(fam.dims(config, where).items())) if fam.dims else ()
    hybrid = "linear_attention" in fam.layer_types
    layer_types = tuple(_get(config, "layer_types") or ()) if hybrid else ()
    if hybrid and len(layer_types) != L:
        raise TracingError(f"{where} needs layer_types with one entry per block ({L}), found {len(layer_types)}; "
                           f"use the config.json that came with the weights")
    return Arch(
        model_type=model_type, d=d, h=_size(config, fam.dense_width, where), L=L,
        V=_size(config, "vocab_size", where),
        n_heads=n_heads, n_kv_heads=n_kv, head_dim=int(head_dim), tied=bool(tied),
        qkv_bias=fam.bias("qkv_bias", config, _get), o_bias=fam.bias("o_bias", config, _get),
        mlp_bias=fam.bias("mlp_bias", config, _get), final_softcap=float(cap) if cap else None, dims=dims, layer_types=layer_types,
        qk_norm=fam.qk_norm_of(config, _get),
        **moe,
    )


def _check_layer_types(config: Any, fam: Family, where: str) -> None:
    """Every entry of ``layer_types`` is a kind of block this family has."""
    for t in _get(config, "layer_types") or ():
        if t not in fam.layer_types:
            raise TracingError(f"{where} names a layer type {t!r} that {fam.model_type} models do not have (they have "
                               f"{', '.join(sorted(fam.layer_types))}); use the config.json that came with the weights")


@functools.lru_cache(maxsize=256)
def expert_slots(a: Arch, i: int) -> dict:
    """Block i's per-expert tensors both ways: name -> (role, expert) and (role, expert) -> name
    (a family lists each role's experts in expert order)."""
    out: dict = {}
    seen: dict = {}
    for r in a.block_refs(i):
        if r.role.startswith("expert_"):
            e = seen[r.role] = seen.get(r.role, -1) + 1
            out[r.name], out[r.role, e] = (r.role, e), r.name
    return out


def require_same_blocks(a: Arch, b: Arch, what: str) -> None:
    """Raise a clear error when an operation needs equal block shapes and they differ."""
    diffs = [f"{k} {getattr(a, k)} vs {getattr(b, k)}" for k in ("L", "d", "h") if getattr(a, k) != getattr(b, k)]
    if diffs:
        raise TracingError(
            f"{what} needs models with the same block shapes, but they differ ({', '.join(diffs)}); "
            f"use a statistic that allows different shapes (e.g. match) or compare same-size models")


def require_same_layout(a: Arch, b: Arch, what: str) -> None:
    """Raise when an operation pairs tensors by name and the two checkpoints name them differently."""
    require_same_blocks(a, b, what)
    keys = ("family", "norm_layout", "moe_blocks", "n_experts", "h_expert", "h_shared", "qk_norm", "qkv_bias",
            "o_bias", "mlp_bias", "n_heads", "n_kv_heads", "head_dim")
    if any(getattr(a, k) != getattr(b, k) for k in keys):
        raise TracingError(f"{what} needs two checkpoints of the same architecture, got {a.model_type} and "
                           f"{b.model_type}; use cos, which compares MLPs across families")


def require_same_depth(a: Arch, b: Arch, what: str) -> None:
    """Raise when an operation pairs blocks one to one and the depth or residual width differ."""
    if a.L != b.L or a.d != b.d:
        raise TracingError(f"{what} needs the same number of blocks and residual width (L {a.L} vs {b.L}, "
                           f"d {a.d} vs {b.d}); compare models of the same depth and width")


def require_gated(a: Arch, b: Arch, what: str) -> None:
    """Raise when an operation compares gate activations and a model's MLP has no gate."""
    for arch in (a, b):
        if not arch.gated:
            raise TracingError(f"{what} needs a gated MLP (gate and up projections), but {arch.model_type} has a "
                               f"non-gated MLP; use csh")


def require_expert_width(a: Arch, b: Arch, what: str) -> None:
    """Dense against MoE: raise when no expert (nor shared expert) has the dense MLP's width, so that
    an activation statistic, which pairs only MLPs of equal width, would have nothing to test."""
    if a.has_experts == b.has_experts:
        return
    dense, moe = (b, a) if a.has_experts else (a, b)
    widths = sorted({u.width for i in range(moe.L) if moe.is_moe_block(i) for u in moe.units(i)})
    if dense.h not in widths:
        raise TracingError(f"{what}: no expert has the dense MLP's width (h {dense.h} vs experts "
                           f"{', '.join(map(str, widths))}), so no expert can be paired with it; for fine-grained "
                           f"upcycling (experts narrower than the dense MLP) use --stat cos --align, which matches "
                           f"each expert's units to the dense units whatever their order")


__all__ = ["Arch", "Family", "TensorRef", "Unit", "register", "arch_from_config", "files_read", "expert_slots", "require_same_blocks",
           "require_same_layout",
           "require_same_depth", "require_gated", "require_expert_width",
           "SUPPORTED", "FAMILIES", "EXPERT_INDEXED", "EMBED", "FINAL_NORM", "LM_HEAD", "ATTN_ROLES", "MLP_ROLES", "NORM_ROLES",
           "READ_RESIDUAL", "WRITE_RESIDUAL", "RES_VECTORS", "UNIT_ROWS", "UNIT_COLS", "READS_THROUGH"]
