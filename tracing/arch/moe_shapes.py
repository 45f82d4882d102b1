"""The expert fields of an :class:`~tracing.arch.Arch` read from a mixture-of-experts config."""
from __future__ import annotations

from typing import Any

from ..errors import TracingError


def get(config: Any, key: str, default=None):
    """A config value from a transformers config object or a config.json dict (a value that varies per
    block, e.g. Gemma 4's ``head_dim``, is the config's global one, as config.json holds it)."""
    if isinstance(config, dict):
        return config.get(key, default)
    try:
        return getattr(config, key, default)
    except Exception as e:  # transformers refuses a global read of a per-layer attribute
        if type(e).__name__ != "AmbiguousGlobalPerLayerAttributeError":
            raise
        return config.to_dict().get(key, default)


def size(config: Any, key: str, where: str, required: bool = True) -> int | None:
    """A positive integer size from the config, or a one-line error naming the key and the file."""
    value = get(config, key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        found = "it is missing" if value is None else f"found {value!r}"
        raise TracingError(f"{where} needs a positive integer {key} ({found}); "
                           f"use the config.json that came with the weights")
    return value


def n_experts(config: Any) -> int:
    return int(get(config, "num_local_experts") or get(config, "num_experts") or 0)


def mixtral_shape(config: Any, fam, L: int, where: str) -> dict:
    E = n_experts(config)
    return dict(n_experts=E, h_expert=size(config, "intermediate_size", where), moe_blocks=(True,) * L if E else ())


def qwen_moe_shape(config: Any, fam, L: int, where: str) -> dict:
    """Qwen MoE: dense blocks listed in ``mlp_only_layers`` or off the ``decoder_sparse_step``;
    Qwen2-MoE's shared expert."""
    E = n_experts(config)
    only = set(get(config, "mlp_only_layers") or [])
    step = size(config, "decoder_sparse_step", where, required=False) or 1
    blocks = tuple(E > 0 and i not in only and (i + 1) % step == 0 for i in range(L))
    shared = int(get(config, fam.shared_expert_key) or 0) if fam.shared_expert_key else 0
    return dict(n_experts=E, h_expert=size(config, "moe_intermediate_size", where) if E else 0,
                moe_blocks=blocks, h_shared=shared)


def expert_groups(config: Any) -> int:
    """How many groups grouped routing splits the experts into (DeepSeek-V3's ``n_group``: the
    router first picks groups of consecutive experts); 1 without grouped routing."""
    text = get(config, "text_config")
    n = get(config, "n_group") or (get(text, "n_group") if text is not None else None)
    return int(n or 1)
