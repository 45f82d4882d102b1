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

from ..errors import TracingError
from . import get, register
from .spec import ROWS
from .cos import up_matchings


def _check(a, b, options):
    if a.has_experts or b.has_experts:
        raise TracingError("fixed compares dense MLPs block by block; for mixtures of experts use --stat cos")
    if a.L != b.L:
        raise TracingError(f"fixed needs the same number of blocks (L {a.L} vs {b.L}); for models of different "
                           f"depth use --stat cos (its block map)")
    get("cos").run_check(a, b, options)  # the same up rows as cos reads


def _cost(s):
    return get("cos").cost(s)  # the matchings of cos, then the fixed points


@register("fixed", per_block=True, check=_check, cost=_cost, reads=("rows",), variant_flags=("rows",), sampled="units",
          options=(ROWS,),
          value_name="fixed points",
          description="fixed points of the up-row matching: units at their own index (partial sharing)",
          meaning="fixed points (`fixed`): up_proj rows matched per block as in `cos`; the number of units matched "
                  "to the same index, with its exact tail under a uniformly random matching, Fisher over blocks. "
                  "It finds units copied at the same positions wherever they sit in the index range (a model "
                  "initialised partly from another). The per-block p-value is exact (discrete: P(p ≤ α) ≤ α), "
                  "so Fisher's combination is valid and conservative.")
def fixed(ctx, base, ft):
    from .. import pvalues  # loads scipy
    from .base import StatResult, rows_extra  # loads torch
    _check(base.arch, ft.arch, ctx.options)
    matched, S, h = up_matchings(ctx, base, ft, "fixed")
    from ..fixedpoints import fixed_layers  # scipy: the registry (and --help) loads without it
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
