"""The number of fixed points of a matching and its exact law under independence.

A matching of θ₁'s rows to θ₂'s rows has a fixed point where row i of θ₁ is matched to row i of θ₂.
Units copied at the same positions (a model initialised partly from another) are fixed points
wherever they sit in the index range, whereas Spearman against the identity weighs a matched pair
by its distance from the middle of the range.

The law: let R be the set of θ₁'s matched rows and Q that of θ₂'s (m each; equal to all rows for a
square matching with nothing dropped), and c = |R ∩ Q| the indices that can be fixed. Under the null
θ₂'s units are exchangeable, so given R and Q the matching R → Q is a uniformly random bijection and

    P(F ≥ k) = Σ_{j ≥ k} C(c, j) · (m − j)! / m! · q(m − j, c − j),
    q(n, r) = Σ_{i=0}^{r} (−1)^i C(r, i) (n − i)! / n!

(q(n, r): the probability that a uniform permutation of n elements fixes none of r given ones). For
c = m this is Σ_{j ≥ k} C(m, j) D(m − j) / m! with D the derangement numbers, and always
P(F ≥ k) ≤ 1/k!. The sums are evaluated in log space; the terms of q fall like 1/i! and those over
j like 1/j!, so both are cut where the rest is below 1e-40 of the sum (exact to float precision).
F is discrete: P(p ≤ α) ≤ α for every α, with equality at the attainable levels.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, logsumexp

from . import pvalues
from .pvalues import format_pvalue
from .verdict import is_dependent

_TERMS = 40  # terms of the alternating sum q and of the tail over j (the rest is below 1/40! ≈ 1e-48)


def _log_q(n: np.ndarray, r: np.ndarray) -> np.ndarray:
    """log q(n, r) elementwise (−inf where q = 0, i.e. n = r = 1)."""
    i = np.arange(_TERMS + 1)
    t = np.arange(_TERMS)
    # ratio (r − t) / (n − t) for t < i ≤ r; beyond r the terms are 0 (C(r, i) = 0)
    ok = t[None, :] < r[:, None]
    ratio = np.where(ok, (r[:, None] - t[None, :]) / np.maximum(n[:, None] - t[None, :], 1), 0.0)
    prod = np.concatenate([np.ones((len(n), 1)), np.cumprod(ratio, axis=1)], axis=1)
    terms = prod * ((-1.0) ** i / np.exp(gammaln(i + 1)))[None, :]
    q = terms.sum(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(q > 0, np.log(np.maximum(q, 1e-300)), -np.inf)


def log10_tail(k: int, m: int, c: int | None = None) -> float:
    """log10 P(F ≥ k) for the fixed points F of a uniform bijection between two m-sets sharing c
    elements (``c=None``: c = m, a uniform permutation)."""
    c = m if c is None else int(c)
    k, m = int(k), int(m)
    if not 0 <= c <= m:
        raise ValueError(f"need 0 <= c <= m, got c={c}, m={m}")
    if k <= 0:
        return 0.0
    if k > c:
        return -math.inf
    j = np.arange(k, min(c, k + _TERMS) + 1)
    log_a = (gammaln(c + 1) - gammaln(j + 1) - gammaln(c - j + 1) + gammaln(m - j + 1) - gammaln(m + 1)
             + _log_q(m - j, c - j))
    return float(min(0.0, logsumexp(log_a) / math.log(10)))


def count(rows: np.ndarray, cols: np.ndarray) -> tuple[int, int, int]:
    """``(F, m, c)`` of matched pairs ``(rows[k], cols[k])``: fixed points, pairs, indices that can be fixed."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    return (int(np.count_nonzero(rows == cols)), int(rows.shape[0]),
            int(np.intersect1d(rows, cols, assume_unique=True).shape[0]))


def layer(rows: np.ndarray, cols: np.ndarray) -> dict:
    """One matching's fixed points, pairs, candidates and exact log10 P(F ≥ observed)."""
    f, m, c = count(rows, cols)
    lp = log10_tail(f, m, c) if m else float("nan")
    return {"fixed_points": f, "n_pairs": m, "candidates": c, "log10_pvalue": lp}


# ---- as the statistics record and explain them ----------------------------------------------
def fixed_layers(matched: dict) -> list[dict]:
    """One row per block of ``{block: MatchResult}``: fixed points, pairs, candidates, exact log10 p."""
    rows = []
    for i, m in sorted(matched.items()):
        row = {"layer": int(i), **layer(m.rows, m.cols),
               "dropped": {"base": int(m.dropped1), "ft": int(m.dropped2)}}
        row["statistic"] = row["fixed_points"]
        rows.append(row)
    return rows


def fixed_summary(matched: dict) -> dict:
    """What ``cos`` records of its own matching: total fixed points and pairs, Fisher log10 p."""
    rows = fixed_layers(matched)
    _, lp = pvalues.fisher([r["log10_pvalue"] for r in rows])
    return {"count": sum(r["fixed_points"] for r in rows), "n_pairs": sum(r["n_pairs"] for r in rows),
            "log10_pvalue": None if math.isnan(lp) else float(lp)}


def explain_beside(rec: dict) -> list[str]:
    """For a ``cos`` record: a line when the fixed-point test and cos reach different verdicts."""
    fp = (rec.get("extra") or {}).get("fixed_points")
    lp, sig = (fp or {}).get("log10_pvalue"), (rec.get("args") or {}).get("significance", 0.01)
    if lp is None or rec.get("log10_pvalue") is None or is_dependent(lp, sig) == is_dependent(rec["log10_pvalue"], sig):
        return []
    both = min(0.0, math.log10(2) + min(lp, rec["log10_pvalue"]))
    what = ("units copied at their own positions amid independent ones: partial sharing (a model initialised "
            "partly from another)" if is_dependent(lp, sig) else
            "the matching follows the identity order without units at their exact positions")
    return [f"fixed points of the same matching: {fp['count']} of {fp['n_pairs']} pairs, p-value {format_pvalue(lp)} "
            f"(exact; --stat fixed) — {what}; both tests together (Bonferroni): p-value {format_pvalue(both)}"]
