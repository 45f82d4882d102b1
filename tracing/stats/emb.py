"""Embedding similarity: Spearman(MATCH(E₁ᵀ, E₂ᵀ), identity) over the shared vocabulary.

The shared vocabulary is the first min(V₁, V₂) ids when the tokenizers agree on them; otherwise the
tokens both have, mapped by token string (``tracing.vocab``), and the record gives the overlap and
which of θ₂'s own tokens look transplanted (sparse combinations of the shared tokens' rows).

Residual dimensions whose embedding column is zero, holds a non-finite value or copies an earlier
column exactly are dropped from each side before matching; the p-value is the rank correlation of
the matched pairs' indices.

With ``--rows K`` the test is sampled over residual dimensions: the embedding's shared vocabulary is
read whole (a column cannot be read alone from a row-major file) and K of its d columns, drawn from
the seed and the same in both models, are matched K × K.
"""
from . import register
from .cost import READ_BYTES_PER_S
from .spec import ROWS, Cost, Flag, Similarity, same_width


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
    extra = rec.get("extra") or {}
    m = extra.get("median_cos")
    if m is None:
        return []
    out = []
    if extra.get("vocab"):
        from ..vocab import transplant_meaning
        v = extra["vocab"]
        out.append(f"the vocabularies differ: rows matched by token string over the {v['shared_tokens']} tokens both "
                   f"have ({100 * v['shared_fraction_base']:.1f}% of the base's {v['base_vocab']}, "
                   f"{100 * v['shared_fraction_ft']:.1f}% of the other's {v['ft_vocab']}); the p-value is exact over "
                   f"them (null: independent initialisation, under which the other model's embedding columns are "
                   f"exchangeable whatever rows are chosen; the shared rows are chosen and ordered by token string "
                   f"only, never by weights)")
        out += [t for t in [transplant_meaning(extra.get("transplant"))] if t]
    return out + [f"median matched cosine {m:.4f}: near 1 the embedding columns match one to one, near 0 they "
                  f"are unrelated (a residual-permuted copy is 'not significant' by design — the test compares the "
                  f"matching with the identity order — yet its median cosine stays near 1)"]


TRANSPLANT = Flag("transplant", "{users}, when the vocabularies differ: --transplant checks every sampled token only "
                                "the second model has (up to 128) for a tokenizer transplant, --no-transplant skips the "
                                "check; default: as many tokens as a fixed budget of work allows (at least 16)", "switch")


@register("emb", check=_check, cost=_cost, reads=("rows", "transplant"), variant_flags=("rows",), aligned=False,
          options=(ROWS, TRANSPLANT), sampled="residual", screens=True, similarity=Similarity("median_cos", "median_cos"),
          aligned_pvalue=False, spearman=True, explain=_explain,
          description="matching of embedding dimensions over the shared vocabulary",
          meaning="embeddings (`emb`): embedding dimensions matched over the shared vocabulary, Spearman against "
                  "the identity; the p-value is exact under the null that the two embedding matrices were "
                  "initialised independently. It has no aligned variant: its matching is the residual "
                  "alignment itself.")
def emb(ctx, base, ft):
    import numpy as np

    from .. import pvalues
    from ..align import match_pairs, shared_embeddings
    from ..errors import TracingError
    from .base import StatResult, rows_extra, sampled_rows
    if base.arch.d != ft.arch.d:
        raise TracingError(f"emb needs equal residual widths, got d={base.arch.d} and d={ft.arch.d}")
    o = ctx.options
    vm = ctx.vocab_map()
    S = None if o.rows is None else sampled_rows(base.arch.d, o.rows, o.seed)  # K residual dimensions, both sides
    E1, E2 = shared_embeddings(base, ft, vm, columns=S)
    m = match_pairs(E1.T, E2.T)
    del E1, E2
    r, lp = pvalues.spearman_pairs(m.rows, m.cols, alternative=ctx.options.alternative)
    if np.isnan(lp):
        raise TracingError(f"emb: only {m.n_pairs} embedding dimensions have nonzero finite values "
                           f"(at least {pvalues.MIN_PAIRS} needed)")
    extra = {"median_cos": float(np.median(m.cos)), "shared_vocab": min(base.arch.V, ft.arch.V) if vm is None
             else vm.shared, "n_pairs": m.n_pairs, "dropped": {"base": m.dropped1, "ft": m.dropped2},
             **(rows_extra(o, base.arch.d) if o.rows is not None else {})}
    if vm is not None:
        from ..vocab import transplant_check
        extra["vocab"] = vm.record()
        E2 = None if o.transplant is False else ft.get(ft.arch.embed)  # switched off: not even read
        extra["transplant"] = transplant_check(E2, vm, mode=o.transplant)
    return StatResult("emb", float(r), float(lp), [], extra)
