"""Language-model loss and perplexity, computed with the block-by-block engine."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .engine import Engine
from .models import WeightSource


def lm_losses(engine: Engine, lanes: Sequence[WeightSource], ids: torch.Tensor, desc: str = "loss") -> list[float]:
    """Mean next-token cross-entropy of every lane on the same blocks (the HF ``labels`` loss)."""
    totals = [0.0] * len(lanes)
    count = 0

    def on_logits(_b, logits, ids_b):
        nonlocal count
        target = ids_b[:, 1:].reshape(-1)
        for k, lg in enumerate(logits):
            totals[k] += float(F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), target, reduction="sum"))
        count += target.numel()

    engine.run(lanes, ids, on_logits=on_logits, desc=desc)
    return [t / count for t in totals]


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")
