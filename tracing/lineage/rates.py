"""Error rates against a known lineage.

Two models are *dependent* when they share a root in the known lineage, *independent* otherwise.
Per grid (statistic × transform × raw/aligned) and per basis (raw p-values, or Holm-adjusted
across the grid):

- false-positive rate: independent pairs called dependent / independent pairs;
- true-positive rate: dependent pairs called dependent / dependent pairs;

each with an exact (Clopper–Pearson) 95% interval. :func:`edge_scores` gives the precision and
recall of reconstructed tree edges.
"""
from __future__ import annotations


import numpy as np

from .. import pvalues
from ..results import finite, variant_of
from ..verdict import is_dependent
from .known import align_truth, roots_of


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials; (nan, nan) when n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def _rate(k: int, n: int) -> tuple[float, float, float]:
    lo, hi = clopper_pearson(k, n)
    return (k / n if n else float("nan")), lo, hi


def error_rates(df, truth: dict, level: float | None = None, confidence: float = 0.95):
    """One row per grid × basis (``raw`` / ``holm``): counts, ``fpr`` and ``tpr`` with ``*_lo`` /
    ``*_hi`` interval bounds. ``truth``: known lineage ``{model: parent}``. Pairs with a model the
    lineage does not name, failed results and results without a p-value are left out."""
    import pandas as pd
    rows = [r for r in df.to_dict("records") if r.get("status", "ok") == "ok" and finite(r.get("log10_pvalue"))
            and isinstance(r.get("base"), str) and isinstance(r.get("ft"), str)]
    models = sorted({m for r in rows for m in (r["base"], r["ft"])})
    roots = roots_of(align_truth(truth, models)) if truth else {}
    grids: dict[str, list[dict]] = {}
    for r in rows:
        grids.setdefault(r.get("variant") or variant_of(r), []).append(r)
    out = []
    for grid, rs in grids.items():
        lp = np.array([float(r["log10_pvalue"]) for r in rs])
        lv = [float(level) if level is not None else (float(r["significance"]) if finite(r.get("significance"))
                                                     else 0.01) for r in rs]
        dep = [None if (r["base"] not in roots or r["ft"] not in roots) else roots[r["base"]] == roots[r["ft"]]
               for r in rs]
        for basis, vals in (("raw", lp), ("holm", pvalues.holm(lp))):
            called = [bool(is_dependent(v, x)) for v, x in zip(vals, lv)]
            n_ind = sum(d is False for d in dep)
            fp = sum(c for c, d in zip(called, dep) if d is False)
            n_dep = sum(d is True for d in dep)
            tp = sum(c for c, d in zip(called, dep) if d is True)
            fpr, fpr_lo, fpr_hi = _rate(fp, n_ind)
            tpr, tpr_lo, tpr_hi = _rate(tp, n_dep)
            out.append({"grid": grid, "stat": rs[0].get("stat"), "basis": basis,
                        "level": lv[0] if len(set(lv)) == 1 else float("nan"),
                        "independent_pairs": n_ind, "false_positives": fp, "fpr": fpr, "fpr_lo": fpr_lo,
                        "fpr_hi": fpr_hi, "dependent_pairs": n_dep, "true_positives": tp, "tpr": tpr,
                        "tpr_lo": tpr_lo, "tpr_hi": tpr_hi, "unknown_pairs": sum(d is None for d in dep),
                        "confidence": confidence})
    return pd.DataFrame(out)


def edge_scores(edges, truth: dict, models: list[str] | None = None) -> dict:
    """Precision and recall of reconstructed tree edges against the known parent edges.

    ``edges``: dicts with ``a`` / ``b`` (and, for directed ones, ``parent`` / ``child``) — the
    ``edges`` of a :class:`~tracing.lineage.reconstruct.Reconstruction` — or ``(a, b)`` tuples.
    Only models that both sides know are scored; ``models`` (default: those in ``edges``) are the
    models that were run, so a known edge between two of them that the tree lacks counts as missed.
    ``directed_correct`` counts directed edges whose direction matches the lineage."""
    norm = [e if isinstance(e, dict) else {"a": e[0], "b": e[1], "directed": False} for e in edges]
    models = sorted(set(models or ()) | {m for e in norm for m in (e["a"], e["b"])})
    t = align_truth(truth, models)
    true_edges = {frozenset((c, p)) for c, p in t.items() if p is not None}
    pred = [e for e in norm if e["a"] in t and e["b"] in t]
    hits = [e for e in pred if frozenset((e["a"], e["b"])) in true_edges]
    directed = [e for e in hits if e.get("directed")]
    ok_dir = sum(t.get(e["child"]) == e["parent"] for e in directed)
    n_pred, n_true = len(pred), len(true_edges)
    return {"edges_predicted": n_pred, "edges_true": n_true, "edges_correct": len(hits),
            "precision": len(hits) / n_pred if n_pred else float("nan"),
            "recall": len(hits) / n_true if n_true else float("nan"),
            "directed_edges": len(directed), "directed_correct": ok_dir}
