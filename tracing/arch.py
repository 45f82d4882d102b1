"""Architecture adapter: the name and role of every tensor of a Llama-family checkpoint.

Everything is read from the model's config: nothing is hard-coded to one size.  Supported
families share the Llama block layout (pre-norm, RMSNorm, gated MLP, rotary attention):
Llama (with optional ``attention_bias`` / ``mlp_bias``), Mistral (GQA, sliding window) and
Qwen2 (q/k/v biases).
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from .errors import TracingError

#: model_type -> class-name prefix used by transformers' modeling module
SUPPORTED = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}

# Roles of the per-block tensors, relative to "model.layers.{i}."
BLOCK_TENSORS = {
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "q_bias": "self_attn.q_proj.bias",
    "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias",
    "o_bias": "self_attn.o_proj.bias",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
    "gate_bias": "mlp.gate_proj.bias",
    "up_bias": "mlp.up_proj.bias",
    "down_bias": "mlp.down_proj.bias",
    "in_norm": "input_layernorm.weight",
    "post_norm": "post_attention_layernorm.weight",
}
ATTN_ROLES = ("q", "k", "v", "o", "q_bias", "k_bias", "v_bias", "o_bias")
MLP_ROLES = ("gate", "up", "down", "gate_bias", "up_bias", "down_bias")
NORM_ROLES = ("in_norm", "post_norm")

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class Arch:
    """Shapes and tensor names of one checkpoint (derived from its config)."""

    model_type: str
    d: int  # residual width (hidden_size)
    h: int  # MLP width (intermediate_size)
    L: int  # number of blocks
    V: int  # vocabulary size
    n_heads: int
    n_kv_heads: int
    head_dim: int
    tied: bool  # lm_head shares the embedding tensor
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool

    # ---- names -------------------------------------------------------------------------
    def block_name(self, i: int, role: str) -> str:
        return f"model.layers.{i}.{BLOCK_TENSORS[role]}"

    def block_roles(self) -> list[str]:
        """Roles present in every block of this architecture."""
        roles = ["q", "k", "v", "o"]
        if self.qkv_bias:
            roles += ["q_bias", "k_bias", "v_bias"]
        if self.o_bias:
            roles.append("o_bias")
        roles += ["gate", "up", "down"]
        if self.mlp_bias:
            roles += ["gate_bias", "up_bias", "down_bias"]
        return roles + ["in_norm", "post_norm"]

    def block_names(self, i: int) -> dict[str, str]:
        return {role: self.block_name(i, role) for role in self.block_roles()}

    @property
    def lm_head(self) -> str:
        """Name to read the output projection from (the embedding when tied)."""
        return EMBED if self.tied else LM_HEAD

    def names(self) -> list[str]:
        """Every distinct tensor, in model order (a tied lm_head is not listed twice)."""
        out = [EMBED]
        for i in range(self.L):
            out += list(self.block_names(i).values())
        out.append(FINAL_NORM)
        if not self.tied:
            out.append(LM_HEAD)
        return out

    def role_of(self, name: str) -> tuple[str, int | None]:
        """(role, block index or None) of a tensor name; raises KeyError for unknown names."""
        if name == EMBED:
            return "embed", None
        if name == FINAL_NORM:
            return "final_norm", None
        if name == LM_HEAD:
            return "lm_head", None
        if name.startswith("model.layers."):
            rest = name[len("model.layers."):]
            idx, _, local = rest.partition(".")
            for role, suffix in BLOCK_TENSORS.items():
                if suffix == local:
                    return role, int(idx)
        raise KeyError(name)

    def shape(self, name: str) -> tuple[int, ...]:
        role, _ = self.role_of(name)
        d, h, q_out, kv_out = self.d, self.h, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return {
            "embed": (self.V, d), "lm_head": (self.V, d), "final_norm": (d,),
            "q": (q_out, d), "k": (kv_out, d), "v": (kv_out, d), "o": (d, q_out),
            "q_bias": (q_out,), "k_bias": (kv_out,), "v_bias": (kv_out,), "o_bias": (d,),
            "gate": (h, d), "up": (h, d), "down": (d, h),
            "gate_bias": (h,), "up_bias": (h,), "down_bias": (d,),
            "in_norm": (d,), "post_norm": (d,),
        }[role]

    # ---- sizes -------------------------------------------------------------------------
    def num_params(self) -> int:
        total = 0
        for name in self.names():
            n = 1
            for s in self.shape(name):
                n *= s
            total += n
        return total

    def largest_tensor_numel(self) -> int:
        return max(self.V * self.d, self.h * self.d, self.n_heads * self.head_dim * self.d)

    def block_numel(self) -> int:
        n = 0
        for name in self.block_names(0).values():
            k = 1
            for s in self.shape(name):
                k *= s
            n += k
        return n

    def untied(self) -> "Arch":
        return dataclasses.replace(self, tied=False)

    def describe(self) -> str:
        return (f"{self.model_type}: L={self.L} d={self.d} h={self.h} V={self.V} "
                f"heads={self.n_heads}/{self.n_kv_heads} tied={self.tied}")

    # ---- modules for forward passes -----------------------------------------------------
    def modeling_module(self):
        return importlib.import_module(f"transformers.models.{self.model_type}.modeling_{self.model_type}")

    def module_class(self, suffix: str):
        """e.g. ``module_class("DecoderLayer")`` -> ``LlamaDecoderLayer``."""
        return getattr(self.modeling_module(), SUPPORTED[self.model_type] + suffix)


def _get(config: Any, key: str, default=None):
    return getattr(config, key, default) if not isinstance(config, dict) else config.get(key, default)


def _size(config: Any, key: str, where: str, required: bool = True) -> int | None:
    """A positive integer size from the config, or a one-line error naming the key and the file."""
    value = _get(config, key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        found = "it is missing" if value is None else f"found {value!r}"
        raise TracingError(f"{where} needs a positive integer {key} ({found}); "
                           f"use the config.json that came with the weights")
    return value


def arch_from_config(config: Any, where: str = "the model config") -> Arch:
    """Build an :class:`Arch` from a transformers config object or a config.json dict
    (``where`` names the config in error messages, e.g. its file)."""
    model_type = _get(config, "model_type")
    if model_type not in SUPPORTED:
        raise TracingError(
            f"unsupported architecture {model_type!r}: model-tracing supports "
            f"{', '.join(sorted(SUPPORTED))} (Llama-family) checkpoints")
    d = _size(config, "hidden_size", where)
    n_heads = _size(config, "num_attention_heads", where)
    n_kv = _size(config, "num_key_value_heads", where, required=False) or n_heads
    head_dim = _size(config, "head_dim", where, required=False) or d // n_heads
    attention_bias = bool(_get(config, "attention_bias", False))
    if model_type == "qwen2":
        qkv_bias, o_bias = True, False
    else:
        qkv_bias = o_bias = attention_bias
    tied = _get(config, "tie_word_embeddings")
    if tied is None:
        tied = model_type not in ("llama", "mistral", "qwen2")
    return Arch(
        model_type=model_type, d=d, h=_size(config, "intermediate_size", where),
        L=_size(config, "num_hidden_layers", where), V=_size(config, "vocab_size", where),
        n_heads=n_heads, n_kv_heads=n_kv, head_dim=int(head_dim), tied=bool(tied),
        qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=bool(_get(config, "mlp_bias", False)),
    )


def require_same_blocks(a: Arch, b: Arch, what: str) -> None:
    """Raise a clear error when an operation needs equal block shapes and they differ."""
    diffs = [f"{k} {getattr(a, k)} vs {getattr(b, k)}" for k in ("L", "d", "h") if getattr(a, k) != getattr(b, k)]
    if diffs:
        raise TracingError(
            f"{what} needs models with the same block shapes, but they differ ({', '.join(diffs)}); "
            f"use a statistic that allows different shapes (e.g. match) or compare same-size models")
