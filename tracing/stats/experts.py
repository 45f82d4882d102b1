"""Pairing the MLPs of two blocks when either is a mixture of experts.

- two MoE blocks: routed experts are matched by Hungarian assignment on an expert-level
  similarity (the mean, over the rows of θ₁'s expert, of the best cosine with a row of θ₂'s
  expert, i.e. ≈ the mean matched cosine of up rows); shared experts are paired with each other;
- a dense block and an MoE block (upcycling): every expert is paired with the dense MLP.

The similarity is invariant to any permutation of θ₂'s rows, so choosing partners with it leaves
each pair's row-order test exact under independence.  Each pair is then tested like a dense block.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..cosine import SIMILARITY_ROWS, cosine_matrix, expert_similarity  # noqa: F401 (re-exported)


@dataclass
class UnitPair:
    block: int
    a: object  # unit of θ₁ (arch.Unit)
    b: object  # unit of θ₂
    column: object  # grid column: the MoE side's expert index or "shared" (None for dense pairs)


def _routed(units):
    return [u for u in units if u.expert is not None and u.expert != "shared"]


def _shared(units):
    return next((u for u in units if u.expert == "shared"), None)


def block_pairs(i: int, units_a, units_b, similarity,
                any_width: bool = False) -> tuple[list[UnitPair], list | None]:
    """The unit pairs of block i and, for two MoE blocks, θ₂'s partner of each of θ₁'s experts.

    ``similarity(unit_a, unit_b)`` is the expert-level similarity (called for two MoE blocks only).
    ``any_width``: a dense MLP is also paired with experts (and a shared expert) of another width —
    fine-grained upcycling splits a dense MLP's units among narrower experts; the statistic then
    matches rectangularly."""
    ra, rb = _routed(units_a), _routed(units_b)
    if not ra and not rb:
        return [UnitPair(i, units_a[0], units_b[0], None)], None
    if ra and rb:
        S = np.array([[similarity(ua, ub) if ua.width == ub.width else -2.0
                       for ub in rb] for ua in ra])
        rows, cols = linear_sum_assignment(-S)
        partner = [None] * len(ra)
        pairs = []
        for r, c in zip(rows, cols):
            partner[r] = rb[c].expert
            if ra[r].width == rb[c].width:
                pairs.append(UnitPair(i, ra[r], rb[c], ra[r].expert))
        sa, sb = _shared(units_a), _shared(units_b)
        if sa is not None and sb is not None and sa.width == sb.width:
            pairs.append(UnitPair(i, sa, sb, "shared"))
        return pairs, partner
    # upcycling: one side dense, every expert (and a shared expert) of its width, or of any width, against it
    if ra:
        dense = units_b[0]
        return [UnitPair(i, u, dense, u.expert) for u in units_a if any_width or u.width == dense.width], None
    dense = units_a[0]
    return [UnitPair(i, dense, u, u.expert) for u in units_b if any_width or u.width == dense.width], None


def expert_result(stat: str, pairs: list[UnitPair], matched: dict, partners: dict, L: int, n_cols: int, ctx):
    """Per-pair Spearman p-values of the matched pairs ``matched[k] = (x, y, dropped)`` of unit
    pair k, the block × expert grid and the Fisher combination."""
    from .base import spearman_layers
    res = spearman_layers(matched, ctx, stat)
    grid = [[None] * n_cols for _ in range(L)]
    skipped = []  # [block, the MoE side's expert (θ₁'s when both are MoE)], whichever model is dense
    for row in res.per_layer:
        pair = pairs[row["layer"]]
        row.update({"layer": pair.block, "expert": pair.a.expert, "partner": pair.b.expert})
        if "skipped" in row:
            skipped.append([pair.block, pair.column])
        if pair.column is not None:
            col = n_cols - 1 if pair.column == "shared" else int(pair.column)
            grid[pair.block][col] = row["log10_pvalue"]
    res.extra.pop("skipped_layers", None)
    res.extra.update({"num_pairs": len(pairs), "experts": grid, "skipped_pairs": skipped,
                      "expert_matching": {str(i): p for i, p in partners.items() if p is not None}})
    return res


def grid_columns(arch_a, arch_b) -> int:
    """Columns of the block × expert grid: the routed experts (of θ₁ when both are MoE), plus one
    for a shared expert."""
    moe = arch_a if arch_a.has_experts else arch_b
    return moe.n_experts + (1 if moe.h_shared else 0)


def activation_stat(ctx, base, ft, stat: str, gated: bool):
    """csh (``gated=False``: up activations) or match (gate matching against |up| matching) over
    the unit pairs of :func:`block_pairs`; each expert's activations cover every token.  A unit
    whose activation row is zero, non-finite or an exact copy of an earlier unit's is dropped (for
    match: from both matchings)."""
    from ..align import Matcher, kept_units
    from .base import gate_up_pairs
    from .base import pairs_of
    a, b = base.arch, ft.arch
    ids = ctx.data()
    up = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)
    gate = Matcher(mem_budget_bytes=ctx.mem_budget_bytes) if gated else None
    pairs: list[UnitPair] = []
    partners: dict = {}

    def on_block(i, caps):
        block, partners[i] = block_pairs(
            i, a.units(i), b.units(i),
            lambda ua, ub: expert_similarity(caps[0].unit(ua.expert).up.T, caps[1].unit(ub.expert).up.T, absolute=gated))
        for pair in block:
            ca, cb = caps[0].unit(pair.a.expert), caps[1].unit(pair.b.expert)
            k = len(pairs)
            pairs.append(pair)
            if gated:
                ok1, ok2 = kept_units(ca.gate.T, ca.up.T), kept_units(cb.gate.T, cb.up.T)
                gate.submit(k, ca.gate.T, cb.gate.T, keep1=ok1, keep2=ok2)
                up.submit(k, ca.up.T, cb.up.T, absolute=True, keep1=ok1, keep2=ok2)
            else:
                up.submit(k, ca.up.T, cb.up.T)

    try:
        ctx.engine().run([base, ft], ids, on_block=on_block, desc=f"{stat}: forward")
        pu = up.results()
        pg = gate.results() if gated else None
    finally:
        up.close()
        if gated:
            gate.close()
    matched = {k: gate_up_pairs(pg[k], pu[k]) for k in pg} if gated else {k: pairs_of(r) for k, r in pu.items()}
    return expert_result(stat, pairs, matched, partners, a.L, grid_columns(a, b), ctx)


def upcycled_matchings(ctx, base, ft) -> tuple[list[UnitPair], dict, dict]:
    """A dense model against an MoE, aligned expert by expert: ``(pairs, gate, up)``.

    θ₂'s residual stream is aligned to θ₁'s first (MATCH of the embedding columns, as ``--align``
    does). Then, for every unit pair of :func:`block_pairs` (each expert, of any width, against the
    dense MLP), the gate rows and the up rows are matched (rectangular when the widths differ),
    with the units that are degenerate or copied in either role left out of both matchings
    (:func:`~tracing.align.kept_units`): ``gate[k]`` and
    ``up[k]`` are the :class:`~tracing.align.MatchResult` of pair k. The gate matching is the
    alignment (it finds each expert unit's dense unit whatever the order of the split); the up
    matching is what is tested against it."""
    from ..align import Matcher, kept_units, residual_alignment
    from ..transforms import Permuted
    a, b = base.arch, ft.arch
    ft = Permuted(ft, torch.from_numpy(residual_alignment(base, ft)))
    pairs = [p for i in range(a.L) for p in block_pairs(i, a.units(i), b.units(i), None, any_width=True)[0]]
    gate, up = (Matcher(mem_budget_bytes=ctx.mem_budget_bytes) for _ in range(2))
    last: dict = {}  # per side, the unit read last: a dense MLP is read once for all its block's experts

    def rows(side, src, unit):
        if last.get(side, (None,))[0] != unit.key:
            G, U = src.get(unit.gate), src.get(unit.up)
            last[side] = (unit.key, G, U, kept_units(G, U))
        return last[side][1:]

    try:
        for k, pair in enumerate(pairs):
            (G1, U1, ok1), (G2, U2, ok2) = rows(0, base, pair.a), rows(1, ft, pair.b)
            gate.submit(k, G1, G2, keep1=ok1, keep2=ok2)
            up.submit(k, U1, U2, keep1=ok1, keep2=ok2)
        return pairs, gate.results(), up.results()
    finally:
        gate.close()
        up.close()
