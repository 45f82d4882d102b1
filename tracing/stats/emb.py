"""Embedding similarity: Spearman(MATCH(E₁ᵀ, E₂ᵀ), identity) over the shared vocabulary.

Residual dimensions whose embedding column is zero or holds a non-finite value are dropped from
each side before matching; the p-value is the rank correlation of the matched pairs' indices.
"""
import numpy as np

from .. import pvalues
from ..align import match_pairs
from ..arch import EMBED
from ..errors import TracingError
from . import register
from .base import StatResult


@register("emb", needs_data=False, has_pvalue=True,
          description="matching of embedding dimensions over the shared vocabulary")
def emb(ctx, base, ft):
    if base.arch.d != ft.arch.d:
        raise TracingError(f"emb needs equal residual widths, got d={base.arch.d} and d={ft.arch.d}")
    n = min(base.arch.V, ft.arch.V)
    m = match_pairs(base.get(EMBED)[:n].T, ft.get(EMBED)[:n].T)
    r, lp = pvalues.spearman_pairs(m.rows, m.cols, alternative=ctx.options.alternative)
    if np.isnan(lp):
        raise TracingError(f"emb: only {m.n_pairs} embedding dimensions have nonzero finite values "
                           f"(at least {pvalues.MIN_PAIRS} needed)")
    return StatResult("emb", float(r), float(lp), [],
                      {"median_cos": float(np.median(m.cos)), "shared_vocab": int(n), "n_pairs": m.n_pairs,
                       "dropped": {"base": m.dropped1, "ft": m.dropped2}})
