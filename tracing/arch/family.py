"""The description of one architecture family: a :class:`Family` record per ``model_type``.

A family says, as data, how its checkpoints name and lay out their tensors and which transforms
are exact for it.  The layout functions it names (attention, dense MLP, mixture of experts) live
in :mod:`tracing.arch.layout` or, for a family with its own layout, in a module of its own; the
records themselves are registered in :mod:`tracing.arch.families`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

#: a bias flag: a constant, or ``(config key, default)`` read from the config
BiasRule = bool | tuple[str, bool]

FAMILIES: dict[str, "Family"] = {}


@dataclass(frozen=True)
class Family:
    """Everything the adapter needs to know about one ``model_type`` (no sizes: those come from
    each checkpoint's config)."""

    model_type: str
    #: checkpoints of one layout group name their tensors alike (pairing tensors by name needs it)
    group: str = "llama"
    #: norm layout: ``llama`` (pre-norms), ``gemma2`` (pre- and post-norms), ``olmo2`` (post-norms)
    norms: str = "llama"
    #: norms compute x̂·(offset + w): 1 for Gemma's (1 + w)
    gain_offset: float = 0.0
    #: q/k norms: None, ``head`` (over head_dim) or ``full`` (over the projected width), or
    #: ``(config key, kind)`` when the config switches them on (GLM-4.5's ``use_qk_norm``)
    qk_norm: str | tuple[str, str] | None = None
    #: why a residual rotation is not function-preserving, or None when it is exact after folding
    rotation_problem: str | None = None
    #: norms carry a bias (LayerNorm)
    norm_bias: bool = False
    #: the MLP has a gate (``match`` needs one)
    gated: bool = True
    qkv_bias: BiasRule = ("attention_bias", False)
    o_bias: BiasRule = ("attention_bias", False)
    mlp_bias: BiasRule = False
    #: config key of the number of key/value heads (None: as many as query heads)
    kv_heads_key: str | None = "num_key_value_heads"
    #: ``tie_word_embeddings`` when the config does not say
    tied_default: bool = False
    #: embeddings are multiplied by √d (Gemma)
    embed_scaled: bool = False
    layers_prefix: str = "model.layers"
    embed: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    #: names an untied output projection may be stored under, tried in order
    lm_head_stores: tuple[str, ...] = ("lm_head.weight",)
    #: layout functions ``(arch, block prefix, block) -> [TensorRef]`` (set in families.py)
    attention: Callable | None = None
    mlp: Callable | None = None
    moe: Callable | None = None
    #: ``(config, family, L, where) -> dict`` of the Arch's expert fields, or None (dense)
    moe_shape: Callable | None = None
    #: config key of the shared expert's width (None: no shared expert)
    shared_expert_key: str | None = None
    #: the ``layer_types`` a config of this family may name (hybrids list theirs)
    layer_types: frozenset = frozenset({"full_attention", "sliding_attention"})
    #: config key of the dense MLP's width
    dense_width: str = "intermediate_size"
    #: the attribute of a decoder layer holding its MLP (activation captures hook its input)
    mlp_module: str = "mlp"
    #: the attribute holding the routed experts when they read another input than the MLP (Gemma 4)
    experts_module: str | None = None
    #: q_proj also holds a per-head output gate (twice the rows)
    q_gated: bool = False
    #: run forward passes with transformers' eager attention (no sdpa path, e.g. attention sinks)
    eager: bool = False
    #: its layers read the attention mask themselves (a causal mask is always built, never skipped)
    explicit_mask: bool = False
    #: ``(config, where) -> dict`` of further sizes a layout function reads with ``arch.dim(key)``
    dims: Callable | None = None
    #: further tensors of a block ``(arch, block prefix, block) -> [TensorRef]`` and of the model
    #: ``(arch) -> [TensorRef]`` (Gemma 4's per-layer embeddings and block scalars)
    block_extra: Callable | None = None
    global_extra: Callable | None = None
    #: what a block's forward call takes besides hidden states, mask and positions:
    #: ``(lane, skeleton, ids, embedded input, dtype) -> ((block, batch slice) -> keyword arguments)``
    layer_inputs: Callable | None = None
    #: where a block's experts live on disk, and the file names of gate, up and down
    expert_prefix: str = "mlp."
    expert_files: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    #: the shared expert's prefix in a block, and its gate (None: no gate)
    shared_prefix: str = "mlp.shared_expert."
    shared_gate: str | None = "mlp.shared_expert_gate.weight"
    #: the router's per-expert bias (e.g. DeepSeek's correction bias), relative to the experts' prefix, or None
    router_bias: str | None = None

    #: a vision-language wrapper: the config key of its language model's config (the family read)
    text_of: str | None = None
    #: a wrapper's prefixes of the language model's tensors, on disk and in transformers' modules:
    #: ``(text model prefix, wrapped prefix)`` pairs, tried in order
    wrapped: tuple[tuple[str, str], ...] = ()

    def qk_norm_of(self, config: Any, get: Callable) -> str | None:
        if isinstance(self.qk_norm, tuple):
            key, kind = self.qk_norm
            return kind if get(config, key, False) else None
        return self.qk_norm

    def bias(self, rule: str, config: Any, get: Callable) -> bool:
        value = getattr(self, rule)
        if isinstance(value, tuple):
            key, default = value
            return bool(get(config, key, default))
        return bool(value)


def register(family: Family) -> Family:
    """Make ``family`` known to the adapter (one line per family in families.py)."""
    FAMILIES[family.model_type] = family
    return family
