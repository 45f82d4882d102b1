"""Shared types of the statistics (these use torch; the registry in ``spec.py`` does not)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .. import pvalues
from ..engine import Engine
from .spec import StatSpec  # noqa: F401  (re-exported for older imports)

if TYPE_CHECKING:  # the type of a field only
    from ..options import Options


@dataclass
class StatResult:
    """A statistic's outcome. ``log10_pvalue`` is authoritative and always finite when present;
    ``pvalue`` is ``10**log10_pvalue`` for convenience and may underflow to 0.0, except when the
    statistic knows it exactly (a permutation test's (1+k)/(T+1)): then ``exact_pvalue``."""

    stat: str
    statistic: float | None
    log10_pvalue: float | None = None
    per_layer: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    exact_pvalue: float | None = None

    @property
    def pvalue(self) -> float | None:
        if self.log10_pvalue is None:
            return None
        if self.exact_pvalue is not None:
            return float(self.exact_pvalue)
        return pvalues.log10_to_float(self.log10_pvalue)

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
    vocab: Callable[[], object] | None = None  # lazily: a VocabMap, or None when the ids agree

    def vocab_map(self):
        """The two vocabularies mapped by token string, or None when the token ids agree."""
        return self.vocab() if self.vocab is not None else None

    def shared_vocab(self, base, ft) -> int:
        """How many leading token ids mean the same token in both models as a data statistic sees
        them: min(V₁, V₂), or the shared tokens' count when the vocabularies are matched by string
        (the models' ids are then relabelled shared tokens first)."""
        vm = self.vocab_map()
        return vm.shared if vm is not None and not vm.by_id else min(base.arch.V, ft.arch.V)

    def engine(self) -> Engine:
        return Engine(device=self.device, dtype=self.dtype, batch_size=self.options.batch_size,
                      progress=self.progress)

    def data(self) -> torch.Tensor:
        return self.tokens()

    @property
    def mem_budget_bytes(self) -> int | None:
        gb = self.options.mem_budget_gb
        return None if gb is None else int(gb * (1 << 30))


def spearman_layers(pairs: dict, ctx: Context, stat: str) -> StatResult:
    """Per-layer SPEARMAN of matched pairs, combined over layers with Fisher's method.

    ``pairs[i] = (x, y, dropped)``: the two index sequences of layer i's m matched pairs and the
    number of degenerate rows left out, ``{"base": k1, "ft": k2}``.  A layer with fewer than
    ``pvalues.MIN_PAIRS`` pairs has a NaN p-value (Fisher skips it) and says why.
    """
    from ..errors import TracingError
    per_layer, total = [], {"base": 0, "ft": 0}
    for i, (x, y, dropped) in sorted(pairs.items()):
        r, lp = pvalues.spearman_pairs(x, y, alternative=ctx.options.alternative)
        row = {"layer": int(i), "statistic": float(r), "log10_pvalue": float(lp), "n_pairs": int(len(x)),
               "dropped": {k: int(v) for k, v in dropped.items()}}
        if math.isnan(lp):
            row["skipped"] = (f"only {len(x)} matched pairs (at least {pvalues.MIN_PAIRS} needed) after "
                              f"dropping {dropped['base']} + {dropped['ft']} zero, non-finite or copied rows")
        for k in total:
            total[k] += int(dropped[k])
        per_layer.append(row)
    X, lp = pvalues.fisher([row["log10_pvalue"] for row in per_layer])
    if math.isnan(lp):
        raise TracingError(f"{stat}: no layer has {pvalues.MIN_PAIRS} or more matched rows with nonzero finite "
                           f"values ({total['base']} + {total['ft']} rows dropped); the models cannot be compared")
    extra = {"combine": "fisher", "dropped_rows": total,
             "skipped_layers": [row["layer"] for row in per_layer if "skipped" in row]}
    return StatResult(stat, float(X), float(lp), per_layer, extra)


ROWS_STREAM = 0x5A3D  # keeps the row draw apart from the other uses of --seed


def sampled_rows(n: int, k: int, seed: int) -> np.ndarray:
    """The sampled test's unit indices: ``k`` of ``0..n-1`` drawn from ``seed`` alone (never from
    the weights), sorted. The same indices are read in both models."""
    from ..errors import TracingError
    if not 1 <= k <= n:
        raise TracingError(f"--rows {k} is outside 1..{n} (the number of units it samples from)")
    rng = np.random.default_rng([ROWS_STREAM, int(seed)])
    return np.sort(rng.choice(n, size=int(k), replace=False)).astype(np.int64)


def rows_extra(options, n: int) -> dict:
    """What a sampled result records: K, the seed of the draw, and how many units it drew from."""
    return {"rows": int(options.rows), "rows_seed": int(options.seed), "rows_of": int(n)}


def gate_up_pairs(g, u) -> tuple:
    """The (x, y, dropped) pairs of one block's gate and up matchings (see :mod:`tracing.stats.match`)."""
    n1, n2 = g.kept
    if n1 <= n2:  # keys: θ₁'s kept units, both matchings list them in ascending order
        x, y = g.cols, u.cols
    else:  # keys: θ₂'s kept units
        og, ou = np.argsort(g.cols, kind="stable"), np.argsort(u.cols, kind="stable")
        x, y = g.rows[og], u.rows[ou]
    return x, y, {"base": g.dropped1, "ft": g.dropped2}


def pairs_of(res) -> tuple:
    """``(x, y, dropped)`` of a :class:`tracing.align.MatchResult` for :func:`spearman_layers`."""
    return res.rows, res.cols, {"base": res.dropped1, "ft": res.dropped2}


def median_cos(res, matched: dict) -> None:
    """Each result row's median matched cosine (rows follow the sorted keys of ``matched``), and
    their mean in ``extra``."""
    medians = [float(np.median(m.cos)) if m.n_pairs else float("nan") for _, m in sorted(matched.items())]
    for row, med in zip(res.per_layer, medians):
        row["median_cos"] = med
    res.extra["median_cos"] = float(np.nanmean(medians))
