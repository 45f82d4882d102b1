"""φ_U: per block, Spearman(MATCH(U₁, U₂), identity) on the rows of ``mlp.up_proj``; Fisher over blocks.

Rows that are zero, hold a non-finite value or copy an earlier row exactly are dropped from each
side before matching (the record counts them per layer); the p-value is the rank correlation of
the matched pairs' indices.

Models of different depths are compared block pair by block pair (the block map,
:mod:`tracing.stats.blockmap`; also with ``--localized``).

Each layer also records the median cosine of its matched up rows (``median_cos``); the result's
``extra["median_cos"]`` is the mean of those over layers.

When either model has mixture-of-experts blocks, every pair of MLPs chosen by
:mod:`tracing.stats.experts` (matched experts, or each expert against a dense MLP) is tested instead;
when their depths differ, every block pair of the same kind (:mod:`tracing.stats.expert_map`).

With ``--rows K`` the test is sampled: K unit indices drawn from the seed (the same in both models
and every block) are read and matched K × K, block by block or in every cell of the block map; the
null law is unchanged (θ₂'s units are exchangeable within any fixed subset) and the per-layer floor
is −log10(K!).  With mixtures of experts, K rows of every expert (and shared expert) are read and
the experts are paired on them (:mod:`tracing.stats.experts_sampled`).
"""

from ..errors import TracingError
from . import register
from .cost import READ_BYTES_PER_S, solve_s
from .spec import (EXPERT_MAP, EXPERTS, LOCALIZED, ROWS, Cost, Similarity, Variant, block_map, expert_block_map,
                   has_experts)


def require_cos_width(a, b) -> None:
    if a.d != b.d:
        raise TracingError(f"cos compares weights and needs equal residual widths, got d={a.d} and d={b.d}; "
                           f"use --stat match, which compares activations of any width")


def _check(a, b, options):
    if options.align and a.has_experts != b.has_experts:  # aligned upcycling: expert by expert, block by block
        from ..arch import require_same_depth  # loads torch
        require_same_depth(a, b, "cos --align")
        if options.rows is not None:
            raise TracingError("cos --align between a dense model and a mixture of experts matches every unit of "
                               "each expert to the dense units; drop --rows")
        if not (a.gated and b.gated):
            raise TracingError("cos --align between a dense model and a mixture of experts aligns each expert on "
                               "gate rows, but one model has a non-gated MLP; drop --align")
    # depth and MLP width may differ (block map, rectangular matching), not d
    require_cos_width(a, b)
    if options.rows is None:
        return
    from ..pvalues import MIN_PAIRS
    if options.rows < MIN_PAIRS:
        raise TracingError(f"--rows {options.rows} is fewer than the {MIN_PAIRS} rows cos's Spearman test needs in a "
                           f"block or expert; give --rows {MIN_PAIRS} or more")
    if a.has_experts or b.has_experts:  # K rows of every expert, shared expert and dense MLP
        from .experts_sampled import narrowest
        h = min(narrowest(a), narrowest(b))
        if options.rows > h:
            raise TracingError(f"--rows {options.rows} is larger than the narrowest MLP or expert (width {h}); "
                               f"give at most {h} (or leave --rows out for the full test)")
        return
    h = min(a.h, b.h)
    if options.rows > h:
        raise TracingError(f"--rows {options.rows} is larger than the MLP width h={h}; give at most {h} "
                           f"(or leave --rows out for the full test)")


def _cost(s):
    K = getattr(s.options, "rows", None)
    if K and (s.a.has_experts or s.b.has_experts):
        from .experts_sampled import sampled_cost
        return sampled_cost(s)
    if not K:
        return Cost(s.weight_stream + s.solves * s.per_solve, s.read_s + s.L * s.block_match_s, True)
    K = min(int(K), s.h)  # K rows of each up_proj: read K·d values, a K×K product and solve per block
    read = s.L * K * s.d * (s.a_bytes + s.b_bytes) / READ_BYTES_PER_S
    return Cost(2 * K * s.d * 4 + K * K * 12, read + s.L * (s.mm(K, K, s.d) + solve_s(K)), True)


def _cos_upcycled_aligned(ctx, base, ft):
    """``--align`` for a dense model against an MoE: per expert, Spearman between the matching of
    its units to the dense units by gate rows (the alignment) and by up rows; Fisher over experts."""
    from .experts import expert_result, grid_columns, upcycled_matchings  # loads torch
    from .base import gate_up_pairs, median_cos  # loads torch
    pairs, gate, up = upcycled_matchings(ctx, base, ft)
    res = expert_result("cos", pairs, {k: gate_up_pairs(gate[k], up[k]) for k in gate}, {}, base.arch.L,
                        grid_columns(base.arch, ft.arch), ctx)
    median_cos(res, up)
    res.extra["aligned_by"] = "gate rows of each expert against the dense MLP's"
    return res


def _explain(rec):
    from ..fixedpoints import explain_beside  # scipy: the registry (and --help) loads without it
    return explain_beside(rec)


def _experts(ctx, base, ft):
    """The experts grid (below)."""
    return _cos_experts(ctx, base, ft)


# the block map when the depths differ (different MLP widths are matched rectangularly block by block)
VARIANTS = (Variant(EXPERT_MAP, expert_block_map, "tracing.stats.expert_map:cos_expert_map"),
            Variant(EXPERTS, has_experts, _experts),
            block_map(("L",), "tracing.stats.blockmap:cos_map", "tracing.stats.blockmap:cos_cost"))


@register("cos", per_block=True, aliases=("csu",), check=_check, cost=_cost, variants=VARIANTS,
          reads=("rows", "localized"), options=(ROWS, LOCALIZED), variant_flags=("rows",),
          aligned_upcycling=_cos_upcycled_aligned,
          explain=_explain, sampled="units", screens=True, robust="aligned",
          similarity=Similarity("median_cos", "median_cos"),
          description="cosine similarity of MLP up-projection rows (φ_U), exact p-value under independent init",
          meaning="φ_U (`cos`): up_proj rows matched per block, Spearman against the identity, Fisher over blocks; "
                  "the p-value is exact under the null that the two models were initialised independently, "
                  "whatever training followed.")
def cos(ctx, base, ft):
    from .base import median_cos, pairs_of, rows_extra, spearman_layers  # loads torch
    from ..fixedpoints import fixed_summary  # loads scipy
    matched, S, h = up_matchings(ctx, base, ft, "cos")
    res = spearman_layers({i: pairs_of(m) for i, m in matched.items()}, ctx, "cos")
    median_cos(res, matched)
    res.extra["fixed_points"] = fixed_summary(matched)
    if S is not None:
        res.extra.update(rows_extra(ctx.options, h))
    return res


def up_matchings(ctx, base, ft, stat: str) -> tuple:
    """``(matched, S, h)``: every block's MATCH of up_proj rows (``{block: MatchResult}``), of the
    sampled units S only with ``--rows`` (else S is None), h the width S is drawn from."""
    from ..align import match_layers  # loads torch
    from ..models import stored_rows_reader
    from .base import sampled_rows  # loads torch
    o = ctx.options
    h = min(base.arch.h, ft.arch.h)
    S = None if o.rows is None else sampled_rows(h, o.rows, o.seed)

    rows_a, rows_b = stored_rows_reader(base), stored_rows_reader(ft)  # bf16 rows stay bf16: exact for MATCH

    def load(i):
        a, b = base.arch.units(i)[0].up, ft.arch.units(i)[0].up
        if S is None:
            return base.get(a), ft.get(b)
        return rows_a(a, S), rows_b(b, S)

    what = "up_proj rows" if S is None else f"{len(S)} sampled up_proj rows"
    matched = match_layers(range(base.arch.L), load, mem_budget_bytes=ctx.mem_budget_bytes, pairs=True,
                           desc=f"{stat}: match {what}" if ctx.progress else None)
    return matched, S, h


def _cos_experts(ctx, base, ft):
    from ..align import match_layers  # loads torch
    from .base import median_cos, pairs_of  # loads torch
    from .experts import block_pairs, expert_result, expert_similarity, grid_columns  # loads torch
    if ctx.options.rows is not None:  # K sampled rows of every expert
        from .experts_sampled import sampled_experts
        return sampled_experts(ctx, base, ft)
    a, b = base.arch, ft.arch
    pairs, partners = [], {}
    for i in range(a.L):
        block, partners[i] = block_pairs(i, a.units(i), b.units(i),
                                         lambda ua, ub: expert_similarity(base.get(ua.up), ft.get(ub.up)),
                                         any_width=True)  # rectangular matching: fine-grained upcycling
        pairs += block
    if not pairs:
        raise TracingError("cos found no two experts of equal width to pair (the two models' experts differ in "
                           "width); compare each model with a dense model, or the experts' shared ancestor")
    matched = match_layers(range(len(pairs)), lambda k: (base.get(pairs[k].a.up), ft.get(pairs[k].b.up)),
                           mem_budget_bytes=ctx.mem_budget_bytes, pairs=True,
                           desc="cos: match expert up rows" if ctx.progress else None)
    res = expert_result("cos", pairs, {k: pairs_of(m) for k, m in matched.items()}, partners, a.L,
                        grid_columns(a, b), ctx)
    median_cos(res, matched)
    return res
