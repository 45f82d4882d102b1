"""Fixed points of the up-row matching: per block, the number of θ₁ rows matched to the θ₂ row of
the same index, with its exact tail under independence (:mod:`tracing.fixedpoints`); Fisher over blocks.

It reads the same matching as ``cos`` (up_proj rows; rectangular when the MLP widths differ; zero or
non-finite rows dropped; ``--rows K`` for the sampled form). ``cos`` asks whether the matching follows
the identity order as a whole, Spearman weighing each pair by its distance from the middle of the
index range; this asks how many units sit exactly at their own index, wherever they are — the
signature of a model initialised partly from another (some units copied, the rest independent).
``cos`` records the same count in ``extra["fixed_points"]``, and its summary and the report show it
when the two verdicts differ.
"""
from __future__ import annotations

import math

from . import register


def _check(a, b, options):
    from ..errors import TracingError
    from .cos import _check as cos_check
    if a.has_experts or b.has_experts:
        raise TracingError("fixed compares dense MLPs block by block; for mixtures of experts use --stat cos")
    if a.L != b.L:
        raise TracingError(f"fixed needs the same number of blocks (L {a.L} vs {b.L}); for models of different "
                           f"depth use --stat cos (its block map)")
    cos_check(a, b, options)


def _cost(s):
    from .cos import _cost as cos_cost
    return cos_cost(s)


def fixed_layers(matched: dict) -> list[dict]:
    """One row per block of ``{block: MatchResult}``: fixed points, pairs, candidates, exact log10 p."""
    from .. import fixedpoints
    rows = []
    for i, m in sorted(matched.items()):
        row = {"layer": int(i), **fixedpoints.layer(m.rows, m.cols),
               "dropped": {"base": int(m.dropped1), "ft": int(m.dropped2)}}
        row["statistic"] = row["fixed_points"]
        rows.append(row)
    return rows


def fixed_summary(matched: dict) -> dict:
    """What ``cos`` records of its own matching: total fixed points and pairs, Fisher log10 p."""
    from .. import pvalues
    rows = fixed_layers(matched)
    _, lp = pvalues.fisher([r["log10_pvalue"] for r in rows])
    return {"count": sum(r["fixed_points"] for r in rows), "n_pairs": sum(r["n_pairs"] for r in rows),
            "log10_pvalue": None if math.isnan(lp) else float(lp)}


def explain_beside(rec: dict) -> list[str]:
    """For a ``cos`` record: a line when the fixed-point test and cos reach different verdicts."""
    from ..verdict import is_dependent
    fp = (rec.get("extra") or {}).get("fixed_points")
    lp, sig = (fp or {}).get("log10_pvalue"), (rec.get("args") or {}).get("significance", 0.01)
    if lp is None or rec.get("log10_pvalue") is None or is_dependent(lp, sig) == is_dependent(rec["log10_pvalue"], sig):
        return []
    from ..pvalues import format_pvalue
    both = min(0.0, math.log10(2) + min(lp, rec["log10_pvalue"]))
    what = ("units copied at their own positions amid independent ones: partial sharing (a model initialised "
            "partly from another)" if is_dependent(lp, sig) else
            "the matching follows the identity order without units at their exact positions")
    return [f"fixed points of the same matching: {fp['count']} of {fp['n_pairs']} pairs, p-value {format_pvalue(lp)} "
            f"(exact; --stat fixed) — {what}; both tests together (Bonferroni): p-value {format_pvalue(both)}"]


@register("fixed", per_block=True, check=_check, cost=_cost, reads=("rows",), variant_flags=("rows",),
          value_name="fixed points",
          description="fixed points of the up-row matching: units at their own index (partial sharing)",
          meaning="fixed points (`fixed`): up_proj rows matched per block as in `cos`; the number of units matched "
                  "to the same index, with its exact tail under a uniformly random matching, Fisher over blocks. "
                  "It finds units copied at the same positions wherever they sit in the index range (a model "
                  "initialised partly from another). The per-block p-value is exact (discrete: P(p ≤ α) ≤ α), "
                  "so Fisher's combination is valid and conservative.")
def fixed(ctx, base, ft):
    from .. import pvalues
    from ..errors import TracingError
    from .base import StatResult, rows_extra
    from .cos import up_matchings
    _check(base.arch, ft.arch, ctx.options)
    matched, S, h = up_matchings(ctx, base, ft, "fixed")
    rows = fixed_layers(matched)
    X, lp = pvalues.fisher([r["log10_pvalue"] for r in rows])
    if math.isnan(lp):
        raise TracingError("fixed: no block has a matched row with nonzero finite values; the models cannot be "
                           "compared")
    total = {k: sum(r["dropped"][k] for r in rows) for k in ("base", "ft")}
    res = StatResult("fixed", sum(r["fixed_points"] for r in rows), float(lp), rows,
                     {"combine": "fisher", "fisher_statistic": float(X), "dropped_rows": total,
                      "n_pairs": sum(r["n_pairs"] for r in rows)})
    if S is not None:
        res.extra.update(rows_extra(ctx.options, h))
    return res
