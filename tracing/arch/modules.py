"""Filling transformers' modules from logical tensors (the in-memory layout of each family)."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from .layout import place


def module_state(arch, names: Iterable[str], read: Callable[[str], torch.Tensor],
                 shapes: dict[str, torch.Size], strip: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a module (keys of ``shapes``, relative to ``strip``) holding the logical
    tensors ``names``: a role of a fused module tensor (qkv, gate_up, stacked experts) is written
    into its place; a tied lm_head is the embedding."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        ref = arch.ref(name)
        key, index = ref.module
        if strip:
            if not key.startswith(strip):
                continue
            key = key[len(strip):]
        t = read(name)
        if index is None:
            out[key] = t
            continue
        if key not in out:
            out[key] = torch.empty(shapes[key], dtype=t.dtype, device=t.device)
        place(out[key], index, t)
    if arch.tied and "lm_head.weight" in shapes and not strip:
        out["lm_head.weight"] = out[arch.ref(arch.embed).module[0]]
    return out


def materialise_buffers(model: torch.nn.Module, config, device) -> None:
    """Rebuild the non-persistent buffers a model built on the meta device lacks
    (rotary frequencies, Gemma's embedding scale)."""
    for name, module in list(model.named_modules()):
        if name.endswith("rotary_emb") or type(module).__name__.endswith("RotaryEmbedding"):
            if any(b.is_meta for b in module.buffers()):
                parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
                setattr(parent, name.rsplit(".", 1)[-1], type(module)(config=config).to(device))
        elif hasattr(module, "scalar_embed_scale") and module.embed_scale.is_meta:
            module.embed_scale = torch.tensor(module.scalar_embed_scale, device=device)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"buffers left on the meta device: {left[:3]}")
