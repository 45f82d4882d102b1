"""Shared types of the statistics."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import pvalues
from ..engine import Engine
from ..options import Options


@dataclass
class StatSpec:
    name: str
    fn: Callable
    needs_data: bool
    has_pvalue: bool
    description: str


@dataclass
class StatResult:
    """A statistic's outcome. ``log10_pvalue`` is authoritative and always finite when present;
    ``pvalue`` is ``10**log10_pvalue`` for convenience and may underflow to 0.0."""

    stat: str
    statistic: float | None
    log10_pvalue: float | None = None
    per_layer: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def pvalue(self) -> float | None:
        return None if self.log10_pvalue is None else pvalues.log10_to_float(self.log10_pvalue)

    def to_dict(self) -> dict:
        return {"stat": self.stat, "statistic": _plain(self.statistic), "pvalue": self.pvalue,
                "log10_pvalue": _plain(self.log10_pvalue), "per_layer": _plain(self.per_layer),
                "extra": _plain(self.extra)}

    def legacy_value(self):
        """The value existing scripts read as ``non-aligned test stat``: the p-value, else the statistic."""
        return self.pvalue if self.log10_pvalue is not None else _plain(self.statistic)


def _plain(x):
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if hasattr(x, "item") and not isinstance(x, (list, dict)):
        try:
            x = x.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return float("nan")
    return x


@dataclass
class Context:
    """What a statistic may use besides the two models."""

    options: Options
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    progress: bool = True
    tokens: Callable[[], torch.Tensor] | None = None  # lazily built evaluation ids [N, T]

    def engine(self) -> Engine:
        return Engine(device=self.device, dtype=self.dtype, batch_size=self.options.batch_size,
                      progress=self.progress)

    def data(self) -> torch.Tensor:
        return self.tokens()

    @property
    def mem_budget_bytes(self) -> int | None:
        gb = self.options.mem_budget_gb
        return None if gb is None else int(gb * (1 << 30))


def require_gated(stat: str, base, ft) -> None:
    """``match`` compares gate activations: a non-gated MLP has none."""
    from ..errors import TracingError
    for arch in (base.arch, ft.arch):
        if not arch.gated:
            raise TracingError(f"{stat} needs a gated MLP (gate and up projections), but {arch.model_type} has a "
                               f"non-gated MLP; use csh")


def spearman_layers(perms: dict, ctx: Context, stat: str, reference: dict | None = None) -> StatResult:
    """Per-layer Spearman p-values of ``perms[i]`` against ``reference[i]`` (identity by default),
    combined with Fisher's method."""
    per_layer = []
    for i, p in sorted(perms.items()):
        r, lp = pvalues.spearman(p, None if reference is None else reference[i], alternative=ctx.options.alternative)
        per_layer.append({"layer": int(i), "statistic": float(r), "log10_pvalue": float(lp)})
    X, lp = pvalues.fisher([row["log10_pvalue"] for row in per_layer])
    return StatResult(stat, float(X), float(lp), per_layer, {"combine": "fisher"})
