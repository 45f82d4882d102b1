"""Block-by-block forward passes over weights streamed from their sources.

Several *lanes* (models, or views of models: permuted, aligned, interpolated at some α) run in
lockstep through the network, one block at a time: for block i every lane's block weights are
read from its source, every cached hidden state is pushed through, the block's MLP activations
are handed to a callback and dropped, and the weights are freed before block i+1.  So a forward
statistic holds, per lane, one block's weights, its hidden states and one block's activations —
never a whole model, and never more than one block's activations (``max_live_blocks``).
"""
from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import TracingError
from .arch.modules import materialise_buffers, module_state
from .models import WeightSource, config_for


@functools.cache
def _no_cache_kwargs() -> dict:
    """``create_causal_mask`` takes the (absent) cache as ``cache`` in recent transformers and as
    ``past_key_values`` before; pass whichever this version names, so no deprecation warning fires."""
    from transformers.masking_utils import create_causal_mask
    params = inspect.signature(create_causal_mask).parameters
    return {"cache": None} if "cache" in params else {"past_key_values": None}


@dataclass
class Capture:
    """One block's MLP activations of one lane: rows are tokens, columns are hidden units."""
    gate: torch.Tensor | None  # [tokens, h] output of gate_proj (None for a non-gated MLP)
    up: torch.Tensor | None  # [tokens, h] output of up_proj
    experts: dict | None = None  # mixture-of-experts block: expert index or "shared" -> Capture

    def unit(self, expert) -> "Capture":
        """The activations of one MLP of the block (``None``: the dense MLP), every token included."""
        return self if expert is None else self.experts[expert]


class _Skeleton:
    """A lane's model built on the meta device: the classes, shapes and non-layer modules."""

    def __init__(self, config, device, dtype):
        from transformers import AutoModelForCausalLM
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(config)
        self.config, self.device, self.dtype = config, device, dtype
        self.layer_cls = type(self.layers()[0])

    def layers(self):
        for name, mod in self.model.named_modules():
            if isinstance(mod, torch.nn.ModuleList) and name.endswith("layers"):
                return mod
        raise RuntimeError("no decoder layers found")

    def module(self, source: WeightSource, names: list[str], path: str):
        """A non-layer submodule (e.g. the final norm) filled with ``names``' tensors."""
        mod = self.model.get_submodule(path)
        shapes = {k: v.shape for k, v in mod.state_dict().items()}
        state = module_state(source.arch, names, lambda n: source.get(n, self.dtype).to(self.device),
                             shapes, strip=path + ".")
        mod = copy.deepcopy(mod)
        mod.load_state_dict(state, strict=True, assign=True)
        return mod.to(self.device).eval()


class Engine:
    def __init__(self, device: str = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 4,
                 progress: bool = True):
        self.device, self.dtype, self.batch_size, self.progress = device, dtype, batch_size, progress
        self.max_live_blocks = 0
        self._live = 0

    # ---- pieces --------------------------------------------------------------------------
    def _layer(self, source: WeightSource, i: int, skel: _Skeleton):
        """Block i as a module, and the MLP input projections (for activation captures)."""
        arch = source.arch
        with torch.device("meta"):
            layer = skel.layer_cls(skel.config, i)
        shapes = {k: v.shape for k, v in layer.state_dict().items()}
        names = [r.name for r in arch.block_refs(i)]
        read = {n: source.get(n, self.dtype).to(self.device) for n in names}
        state = module_state(arch, names, read.__getitem__, shapes, strip=f"{arch.layers_prefix}.{i}.")
        layer.load_state_dict(state, strict=True, assign=True)
        materialise_buffers(layer, skel.config, self.device)
        roles = {r.role: r.name for r in arch.block_refs(i)}
        proj = {}  # expert (None: dense MLP) -> kind -> (weight, bias)
        for u in arch.units(i):
            proj[u.expert] = {kind: (read[name], read.get(roles.get(f"{kind}_bias")) if u.expert is None else None)
                              for kind, name in (("gate", u.gate), ("up", u.up)) if name is not None}
        return layer.eval(), proj

    def _masks(self, config, x: torch.Tensor, pos: torch.Tensor, explicit: bool = False) -> dict:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
        kw = dict(config=config, inputs_embeds=x, attention_mask=None, position_ids=pos, **_no_cache_kwargs())
        if explicit:  # the layer reads the mask itself (DeepSeek-V3.2's indexer): never the is_causal shortcut
            kw["allow_is_causal_skip"] = False
        masks = {"full_attention": create_causal_mask(**kw)}
        kinds = {self._layer_type(config, i) for i in range(config.num_hidden_layers)}
        if "sliding_attention" in kinds:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
        if "chunked_attention" in kinds:  # Llama 4
            from transformers.masking_utils import create_chunked_causal_mask
            masks["chunked_attention"] = create_chunked_causal_mask(**kw)
        return masks

    @staticmethod
    def _layer_type(config, i: int) -> str:
        types = getattr(config, "layer_types", None)
        if types:
            return types[i]
        return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"

    def _position_embeddings(self, skel: _Skeleton, x: torch.Tensor, pos: torch.Tensor) -> dict:
        """Rotary cos/sin per layer type (Gemma 3 uses different bases for local and global layers)."""
        rotary = next(m for n, m in skel.model.named_modules() if n.endswith("rotary_emb"))
        rotary = type(rotary)(config=skel.config).to(self.device)
        types = {self._layer_type(skel.config, i) for i in range(skel.config.num_hidden_layers)}
        if "layer_type" in inspect.signature(rotary.forward).parameters:
            return {t: rotary(x, pos, t) for t in types}
        pe = rotary(x, pos)
        return {t: pe for t in types}

    def _embed(self, lane: WeightSource, ids: torch.Tensor) -> torch.Tensor:
        E = lane.get(lane.arch.embed, self.dtype).to(self.device)
        x = F.embedding(ids, E)
        if lane.arch.embed_scale != 1.0:  # Gemma: × √d, rounded to the compute dtype as transformers does
            x = x * torch.tensor(lane.arch.embed_scale).to(self.dtype)
        return x

    def _head(self, lane: WeightSource, skel: _Skeleton):
        arch = lane.arch
        path = arch.ref(arch.final_norm).module[0].rsplit(".", 1)[0]
        names = [r.name for r in _globals(arch) if r.role.startswith("final_norm")]
        norm = skel.module(lane, names, path)
        W = lane.get(arch.lm_head, self.dtype).to(self.device)
        cap = arch.final_softcap

        def head(x):
            logits = F.linear(norm(x), W).float()
            return torch.tanh(logits / cap) * cap if cap else logits
        return head

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
        L = lanes[0].arch.L
        for lane in lanes[1:]:
            if lane.arch.L != L:
                raise TracingError(f"a lockstep forward pass needs models with the same number of blocks "
                                   f"({L} vs {lane.arch.L}); use a weight statistic (cos) for this pair")
        skels = [_Skeleton(_forward_config(lane), self.device, self.dtype) for lane in lanes]
        ids = ids.to(self.device)
        N, T = ids.shape
        batches = [slice(b, min(b + self.batch_size, N)) for b in range(0, N, self.batch_size)]
        pos = torch.arange(T, device=self.device)[None]

        hidden, extras = [], []
        for k, lane in enumerate(lanes):
            hidden.append(self._embed(lane, ids))
            make = lane.arch.fam.layer_inputs  # further inputs of every block (Gemma 4's per-layer embeddings)
            extras.append(make(lane, skels[k], ids, hidden[-1], self.dtype) if make else None)
            lane.release()
        pos_emb = [self._position_embeddings(sk, hidden[k][:1], pos) for k, sk in enumerate(skels)]
        masks = [{} for _ in lanes]
        bar = tqdm(total=L, desc=desc, disable=not self.progress, leave=False)
        try:
            for i in range(L):
                captures = [self._block(lane, i, skels[k], hidden[k], batches, pos, pos_emb[k], masks[k],
                                        capture=on_block is not None, extra=extras[k]) for k, lane in enumerate(lanes)]
                if on_block is not None:
                    self._live += 1
                    self.max_live_blocks = max(self.max_live_blocks, self._live)
                    on_block(i, captures)
                    self._live -= 1
                del captures
                bar.update()
        finally:
            bar.close()

        if on_logits is None:
            return
        heads = []
        for k, lane in enumerate(lanes):
            heads.append(self._head(lane, skels[k]))
            lane.release()
        for b in batches:
            on_logits(b, [head(hidden[k][b]) for k, head in enumerate(heads)], ids[b])

    def _block(self, lane, i, skel, hidden, batches, pos, pos_emb, masks, capture: bool,
               extra=None) -> Capture | None:
        """Push one lane's hidden states through block i in place; its MLP activations if asked."""
        layer, proj = self._layer(lane, i, skel)
        inputs: list[torch.Tensor] = []
        expert_inputs: list[torch.Tensor] = []  # when the experts read another input (Gemma 4)
        handles = []
        if capture:
            hooks = [(lane.arch.fam.mlp_module, inputs), (lane.arch.fam.experts_module, expert_inputs)]
            handles = [getattr(layer, name).register_forward_pre_hook(
                lambda _m, args, into=into: into.append(args[0].reshape(-1, args[0].shape[-1])))
                for name, into in hooks if name and hasattr(layer, name)]
        kind = self._layer_type(skel.config, i)
        try:
            for b in batches:
                x = hidden[b]
                if x.shape[0] not in masks:
                    masks[x.shape[0]] = self._masks(skel.config, x, pos, lane.arch.fam.explicit_mask)
                # linear attention (recurrent) takes no mask; other block kinds than sliding windows
                # (e.g. DeepSeek-V3.2's indexed attention) are causal
                mask = None if kind == "linear_attention" else masks[x.shape[0]].get(kind, masks[x.shape[0]]["full_attention"])
                out = layer(x, attention_mask=mask, position_ids=pos,
                            position_embeddings=pos_emb[kind], **(extra(i, b) if extra else {}))
                hidden[b] = out[0] if isinstance(out, tuple) else out
        finally:
            for handle in handles:
                handle.remove()
        del layer
        lane.release()
        if not capture:
            return None
        x = torch.cat(inputs)
        x_experts = torch.cat(expert_inputs) if expert_inputs else x
        del inputs, expert_inputs
        caps = {}
        for expert, p in proj.items():
            xe = x if expert in (None, "shared") else x_experts
            acts = {kind: F.linear(xe, W, bias).float() for kind, (W, bias) in p.items()}
            caps[expert] = Capture(gate=acts.get("gate"), up=acts.get("up"))
        if list(caps) == [None]:
            return caps[None]
        return Capture(gate=None, up=None, experts=caps)


def _globals(arch):
    from .arch.layout import global_refs
    return global_refs(arch)


def _forward_config(lane: WeightSource):
    cfg = config_for(lane.config, lane.arch)
    # soft-capped attention scores exist only in the eager implementation
    # (as are gpt-oss's attention sinks)
    eager = getattr(cfg, "attn_logit_softcapping", None) or lane.arch.fam.eager
    cfg._attn_implementation = "eager" if eager else "sdpa"
    return cfg
