"""Embedding similarity: Spearman(MATCH(E₁ᵀ, E₂ᵀ), identity) over the shared vocabulary.

Residual dimensions whose embedding column is zero, holds a non-finite value or copies an earlier
column exactly are dropped from each side before matching; the p-value is the rank correlation of
the matched pairs' indices.

With ``--rows K`` the test is sampled over residual dimensions: the embedding's shared vocabulary is
read whole (a column cannot be read alone from a row-major file) and K of its d columns, drawn from
the seed and the same in both models, are matched K × K.
"""
from . import register
from .cost import READ_BYTES_PER_S
from .spec import Cost, same_width


def _check(a, b, options):
    same_width("emb")(a, b, options)
    if options.rows is not None and options.rows > a.d:
        from ..errors import TracingError
        raise TracingError(f"--rows {options.rows} is larger than the residual width d={a.d}; give at most "
                           f"{a.d} (or leave --rows out for the full test)")


def _cost(s):
    K = getattr(s.options, "rows", None)
    if not K:
        return Cost(s.weight_stream + min(s.solves, 2) * s.d * s.d * 12,
                    s.read_s + s.mm(s.d, s.d, s.Vs) + s.solve_s(s.d))
    K = min(int(K), s.d)  # both embeddings' shared rows are read; the product and solve shrink to K × K
    read = s.Vs * s.d * (s.a_bytes + s.b_bytes) / READ_BYTES_PER_S
    return Cost(2 * s.Vs * s.d * 4 + K * K * 12, read + s.mm(K, K, s.Vs) + s.solve_s(K))


def _explain(rec):
    m = (rec.get("extra") or {}).get("median_cos")
    if m is None:
        return []
    return [f"median matched cosine {m:.4f}: near 1 the embedding columns match one to one, near 0 they are "
            f"unrelated (a residual-permuted copy is 'not significant' by design — the test compares the "
            f"matching with the identity order — yet its median cosine stays near 1)"]


@register("emb", check=_check, cost=_cost, reads=("rows",), variant_flags=("rows",), aligned=False,
          aligned_pvalue=False, spearman=True, explain=_explain,
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
    from .base import StatResult, rows_extra, sampled_rows
    if base.arch.d != ft.arch.d:
        raise TracingError(f"emb needs equal residual widths, got d={base.arch.d} and d={ft.arch.d}")
    n = min(base.arch.V, ft.arch.V)
    o = ctx.options
    if o.rows is None:
        E1, E2 = base.get(base.arch.embed)[:n], ft.get(ft.arch.embed)[:n]
    else:  # K residual dimensions, the same columns in both embeddings
        S = sampled_rows(base.arch.d, o.rows, o.seed)
        E1, E2 = base.get_columns(base.arch.embed, S)[:n], ft.get_columns(ft.arch.embed, S)[:n]
    m = match_pairs(E1.T, E2.T)
    del E1, E2
    r, lp = pvalues.spearman_pairs(m.rows, m.cols, alternative=ctx.options.alternative)
    if np.isnan(lp):
        raise TracingError(f"emb: only {m.n_pairs} embedding dimensions have nonzero finite values "
                           f"(at least {pvalues.MIN_PAIRS} needed)")
    return StatResult("emb", float(r), float(lp), [],
                      {"median_cos": float(np.median(m.cos)), "shared_vocab": int(n), "n_pairs": m.n_pairs,
                       "dropped": {"base": m.dropped1, "ft": m.dropped2},
                       **(rows_extra(o, base.arch.d) if o.rows is not None else {})})
