"""φ_U: per block, Spearman(MATCH(U₁, U₂), identity) on the rows of ``mlp.up_proj``; Fisher over blocks.

Rows that are zero or hold a non-finite value are dropped from each side before matching (the
record counts them per layer); the p-value is the rank correlation of the matched pairs' indices.

Models of different depths are compared block pair by block pair (the block map,
:mod:`tracing.blockmap`; also with ``--localized``).

Each layer also records the median cosine of its matched up rows (``median_cos``); the result's
``extra["median_cos"]`` is the mean of those over layers.
"""
import numpy as np

from . import register
from .spec import Cost


def _check(a, b, options):
    from ..blockmap import require_cos_width
    require_cos_width(a, b)  # depth and MLP width may differ (block map, rectangular matching), not d


def _cost(s):
    from ..blockmap import chosen, cos_cost
    if chosen("cos", s.a, s.b, s.options):
        return cos_cost(s)
    return Cost(s.weight_stream + s.solves * s.per_solve, s.read_s + s.L * s.block_match_s, True)


@register("cos", aliases=("csu",), check=_check, cost=_cost, localized=True, reads=("localized",),
          description="cosine similarity of MLP up-projection rows (φ_U), exact p-value under independent init",
          meaning="φ_U (`cos`): up_proj rows matched per block, Spearman against the identity, Fisher over blocks; "
                  "the p-value is exact under the null that the two models were initialised independently, "
                  "whatever training followed.")
def cos(ctx, base, ft):
    from .. import blockmap
    from ..align import match_layers
    from .base import pairs_of, spearman_layers
    _check(base.arch, ft.arch, ctx.options)
    if blockmap.chosen("cos", base.arch, ft.arch, ctx.options):
        return blockmap.cos_map(ctx, base, ft)

    def load(i):
        name = base.arch.block_name(i, "up")
        return base.get(name), ft.get(name)

    matched = match_layers(range(base.arch.L), load, mem_budget_bytes=ctx.mem_budget_bytes, pairs=True,
                           desc="cos: match up_proj rows" if ctx.progress else None)
    res = spearman_layers({i: pairs_of(m) for i, m in matched.items()}, ctx, "cos")
    medians = {i: float(np.median(m.cos)) if m.n_pairs else float("nan") for i, m in matched.items()}
    for row in res.per_layer:
        row["median_cos"] = medians[row["layer"]]
    res.extra["median_cos"] = float(np.nanmean(list(medians.values())))
    return res
