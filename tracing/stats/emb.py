"""Embedding similarity: Spearman(MATCH(E₁ᵀ, E₂ᵀ), identity) over the shared vocabulary."""
import torch

from .. import pvalues
from ..align import argmax_shortcut, cosine_matrix, negated_cost, solve
from ..errors import TracingError
from . import register
from .base import StatResult


@register("emb", needs_data=False, has_pvalue=True,
          description="matching of embedding dimensions over the shared vocabulary")
def emb(ctx, base, ft):
    if base.arch.d != ft.arch.d:
        raise TracingError(f"emb needs equal residual widths, got d={base.arch.d} and d={ft.arch.d}")
    n = min(base.arch.V, ft.arch.V)
    C = cosine_matrix(base.get(base.arch.embed)[:n].T, ft.get(ft.arch.embed)[:n].T)
    perm = argmax_shortcut(C)
    if perm is None:
        perm = solve(negated_cost(C))
    matched = C[torch.arange(C.shape[0]), torch.from_numpy(perm)]
    r, lp = pvalues.spearman(perm, alternative=ctx.options.alternative)
    return StatResult("emb", float(r), float(lp), [],
                      {"median_cos": float(matched.median()), "shared_vocab": int(n)})
