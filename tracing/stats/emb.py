"""Embedding similarity: Spearman(MATCH(E₁ᵀ, E₂ᵀ), identity) over the shared vocabulary.

Residual dimensions whose embedding column is zero or holds a non-finite value are dropped from
each side before matching; the p-value is the rank correlation of the matched pairs' indices.
"""
from . import register
from .spec import Cost, same_width


def _cost(s):
    return Cost(s.weight_stream + min(s.solves, 2) * s.d * s.d * 12, s.read_s + s.mm(s.d, s.d, s.Vs) + s.solve_s(s.d))


def _explain(rec):
    m = (rec.get("extra") or {}).get("median_cos")
    if m is None:
        return []
    return [f"median matched cosine {m:.4f}: near 1 the embedding columns match one to one, near 0 they are "
            f"unrelated (a residual-permuted copy is 'not significant' by design — the test compares the "
            f"matching with the identity order — yet its median cosine stays near 1)"]


@register("emb", check=same_width("emb"), cost=_cost, aligned=False, aligned_pvalue=False, spearman=True,
          explain=_explain,
          description="matching of embedding dimensions over the shared vocabulary",
          meaning="embeddings (`emb`): embedding dimensions matched over the shared vocabulary, Spearman against "
                  "the identity; the p-value is exact under the null that the two embedding matrices were "
                  "initialised independently. It has no aligned variant: its matching is the residual "
                  "alignment itself.")
def emb(ctx, base, ft):
    import numpy as np

    from .. import pvalues
    from ..align import match_pairs
    from ..errors import TracingError
    from .base import StatResult
    if base.arch.d != ft.arch.d:
        raise TracingError(f"emb needs equal residual widths, got d={base.arch.d} and d={ft.arch.d}")
    n = min(base.arch.V, ft.arch.V)
    m = match_pairs(base.get(base.arch.embed)[:n].T, ft.get(ft.arch.embed)[:n].T)
    r, lp = pvalues.spearman_pairs(m.rows, m.cols, alternative=ctx.options.alternative)
    if np.isnan(lp):
        raise TracingError(f"emb: only {m.n_pairs} embedding dimensions have nonzero finite values "
                           f"(at least {pvalues.MIN_PAIRS} needed)")
    return StatResult("emb", float(r), float(lp), [],
                      {"median_cos": float(np.median(m.cos)), "shared_vocab": int(n), "n_pairs": m.n_pairs,
                       "dropped": {"base": m.dropped1, "ft": m.dropped2}})
