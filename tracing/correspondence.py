"""The block map's claim: which block pairs are matched and the inferred block correspondence
(importable without torch; the report uses it too).

A correspondence is a claim about individual cells of the L₁×L₂ grid, so it is made only from cells
that survive a family-wise correction over the whole grid at the verdict level: a cell (i, j) is
**matched** when its Holm-adjusted p-value over the L₁·L₂ cells is ≤ the significance level *and*
its own p-value is below the paper's threshold 1e-4.  Holm's first step is the Bonferroni bound
min(1, L₁L₂·min p), the pair's overall p-value, so a cell survives only when the pair itself is
significant: an independent pair shows a correspondence with probability at most the level.
Cells without a p-value (NaN) count as p = 1 in the correction (L₁·L₂ tests, as in the overall
bound).  For each block j of θ₂ its source is the matched block i of θ₁ with the smallest p, or none.
"""
from __future__ import annotations

import math

import numpy as np

from . import pvalues
from .verdict import is_dependent

#: a cell must also be below this p-value (log10), the paper's threshold for matched blocks
MATCHED_LOG10 = -4.0
#: what the summary, the record and the report say when the pair is not significant
NOT_SIGNIFICANT = "no block correspondence (pair not significant)"
#: ... when it is significant but no cell is matched (possible only on small grids)
NONE_MATCHED = "no block correspondence (no block pair below 1e-4 after the correction)"
#: how matched cells are chosen (recorded beside them)
RULE = "holm at the verdict level, and p < 1e-4"


def matched_cells(grid, significance: float) -> np.ndarray:
    """Boolean L₁×L₂ mask of the matched cells of a grid of log10 p (NaN: no p-value)."""
    g = np.asarray(grid, dtype=float)
    if g.size == 0:
        return np.zeros(g.shape, dtype=bool)
    adj = pvalues.holm(np.where(np.isnan(g), 0.0, g).ravel()).reshape(g.shape)
    surv = np.array([bool(is_dependent(v, significance)) for v in adj.ravel()]).reshape(g.shape)
    return surv & ~np.isnan(g) & (np.nan_to_num(g, nan=0.0) < MATCHED_LOG10)


def correspondence(grid, significance: float) -> list[tuple[int, int, float]]:
    """[(i, j, log10 p)]: for each block j of θ₂ with a matched cell, its source block i of θ₁."""
    g = np.asarray(grid, dtype=float)
    ok = matched_cells(g, significance)
    out = []
    for j in range(g.shape[1] if g.ndim == 2 else 0):
        col = np.where(ok[:, j], g[:, j], np.inf)
        if np.isfinite(col).any():
            i = int(np.argmin(col))
            out.append((i, j, float(g[i, j])))
    return out


def overall_log10(grid) -> float:
    """The pair's overall p-value (log10): the Bonferroni bound min(1, L₁L₂ · min p) over the grid."""
    g = np.asarray(grid, dtype=float)
    return min(0.0, math.log10(g.size) + float(np.nanmin(g)))


def note(grid, significance: float, corr) -> str | None:
    """Why there is no correspondence (None when there is one)."""
    if corr:
        return None
    return NONE_MATCHED if is_dependent(overall_log10(grid), significance) else NOT_SIGNIFICANT


def text(corr, L2: int, why: str | None = None) -> str:
    """``"0→0, 2→1, none→2"`` (θ₁ block → θ₂ block), or why there is none."""
    if not corr:
        return why or NOT_SIGNIFICANT
    src = {int(c[1]): int(c[0]) for c in corr}
    return ", ".join(f"{src[j] if j in src else 'none'}→{j}" for j in range(L2))
