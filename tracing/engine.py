"""Block-by-block forward passes over weights streamed from their sources.

Several *lanes* (models, or views of models: permuted, aligned, interpolated at some α) run in
lockstep through the network, one block at a time: for block i every lane's block weights are
read from its source, every cached hidden state is pushed through, the block's MLP activations
are handed to a callback and dropped, and the weights are freed before block i+1.  So a forward
statistic holds, per lane, one block's weights, its hidden states and one block's activations —
never a whole model, and never more than one block's activations (``max_live_blocks``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .arch import BLOCK_TENSORS, EMBED, FINAL_NORM, LM_HEAD, require_same_blocks
from .models import WeightSource, config_for


@functools.cache
def _no_cache_kwargs() -> dict:
    """``create_causal_mask`` takes the (absent) cache as ``cache`` in recent transformers and as
    ``past_key_values`` before; pass whichever this version names, so no deprecation warning fires."""
    import inspect

    from transformers.masking_utils import create_causal_mask
    params = inspect.signature(create_causal_mask).parameters
    return {"cache": None} if "cache" in params else {"past_key_values": None}


@dataclass
class Capture:
    """One block's MLP activations of one lane: rows are tokens, columns are hidden units."""
    gate: torch.Tensor  # [tokens, h] output of gate_proj
    up: torch.Tensor  # [tokens, h] output of up_proj


class Engine:
    def __init__(self, device: str = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 4,
                 progress: bool = True):
        self.device, self.dtype, self.batch_size, self.progress = device, dtype, batch_size, progress
        self.max_live_blocks = 0
        self._live = 0

    # ---- pieces --------------------------------------------------------------------------
    def _layer(self, source: WeightSource, i: int, config):
        cls = source.arch.module_class("DecoderLayer")
        with torch.device("meta"):
            layer = cls(config, i)
        state = {}
        for role in source.arch.block_roles():
            state[BLOCK_TENSORS[role]] = source.get(source.arch.block_name(i, role), self.dtype).to(self.device)
        layer.load_state_dict(state, strict=True, assign=True)
        return layer.eval()

    def _masks(self, config, x: torch.Tensor, pos: torch.Tensor) -> dict:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
        kw = dict(config=config, inputs_embeds=x, attention_mask=None, position_ids=pos, **_no_cache_kwargs())
        masks = {"full_attention": create_causal_mask(**kw)}
        if any(self._layer_type(config, i) == "sliding_attention" for i in range(config.num_hidden_layers)):
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
        return masks

    @staticmethod
    def _layer_type(config, i: int) -> str:
        types = getattr(config, "layer_types", None)
        if types:
            return types[i]
        return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"

    def _final_norm(self, source: WeightSource, config):
        norm = source.arch.module_class("RMSNorm")(source.arch.d, eps=config.rms_norm_eps)
        norm.weight.data = source.get(FINAL_NORM, self.dtype).to(self.device)
        return norm

    # ---- the pass ------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, lanes: Sequence[WeightSource], ids: torch.Tensor,
            on_block: Callable[[int, list[Capture]], None] | None = None,
            on_logits: Callable[[slice, list[torch.Tensor], torch.Tensor], None] | None = None,
            desc: str = "forward") -> None:
        """Push ``ids`` [N, T] through every lane.

        ``on_block(i, captures)`` receives block i's activations of every lane (only when given);
        ``on_logits(batch, logits_per_lane, ids[batch])`` receives the final logits batch by batch.
        """
        first = lanes[0]
        for lane in lanes[1:]:
            require_same_blocks(first.arch, lane.arch, "a lockstep forward pass")
        configs = [config_for(lane.config, lane.arch) for lane in lanes]
        for cfg in configs:
            cfg._attn_implementation = getattr(configs[0], "_attn_implementation", None) or "sdpa"
        ids = ids.to(self.device)
        N, T = ids.shape
        batches = [slice(b, min(b + self.batch_size, N)) for b in range(0, N, self.batch_size)]
        pos = torch.arange(T, device=self.device)[None]

        hidden = []
        for lane in lanes:
            E = lane.get(EMBED, self.dtype).to(self.device)
            hidden.append(F.embedding(ids, E))
            del E
            lane.release()
        rotary = first.arch.module_class("RotaryEmbedding")(config=configs[0]).to(self.device)
        pos_emb = rotary(hidden[0][:1], pos)
        masks = {}

        L = first.arch.L
        bar = tqdm(total=L, desc=desc, disable=not self.progress, leave=False)
        try:
            for i in range(L):
                captures: list[Capture] = []
                for k, lane in enumerate(lanes):
                    layer = self._layer(lane, i, configs[k])
                    store: dict[str, list] = {"gate": [], "up": []}
                    handles = []
                    if on_block is not None:
                        for kind in ("gate", "up"):
                            mod = getattr(layer.mlp, f"{kind}_proj")
                            handles.append(mod.register_forward_hook(
                                lambda _m, _inp, out, kind=kind: store[kind].append(out.reshape(-1, out.shape[-1]).float())))
                    try:
                        for b in batches:
                            x = hidden[k][b]
                            if x.shape[0] not in masks:
                                masks[x.shape[0]] = self._masks(configs[k], x, pos)
                            mask = masks[x.shape[0]][self._layer_type(configs[k], i)]
                            out = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=pos_emb)
                            hidden[k][b] = out[0] if isinstance(out, tuple) else out
                    finally:
                        for hnd in handles:
                            hnd.remove()
                    del layer
                    lane.release()
                    if on_block is not None:
                        captures.append(Capture(gate=torch.cat(store["gate"]), up=torch.cat(store["up"])))
                        del store
                if on_block is not None:
                    self._live += 1
                    self.max_live_blocks = max(self.max_live_blocks, self._live)
                    on_block(i, captures)
                    del captures
                    self._live -= 1
                bar.update()
        finally:
            bar.close()

        if on_logits is None:
            return
        heads = []
        for k, lane in enumerate(lanes):
            heads.append((self._final_norm(lane, configs[k]), lane.get(LM_HEAD, self.dtype).to(self.device)))
            lane.release()
        for b in batches:
            logits = [F.linear(norm(hidden[k][b]), W).float() for k, (norm, W) in enumerate(heads)]
            on_logits(b, logits, ids[b])
