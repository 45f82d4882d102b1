"""The block map of two mixture-of-experts models of different depths (``cos``, ``match``, ``csh``).

A model of mixed block kinds (DeepSeek's dense first blocks, Llama 4's interleaving, Qwen MoE's
``mlp_only_layers``) against another of a different depth: every block pair (i, j) *of the same
kind* is a cell — two dense MLPs matched on their up rows; two MoE blocks with their experts
paired as in :mod:`tracing.stats.experts` (Hungarian assignment on an expert-level similarity, shared
expert with shared expert) and each expert pair tested.  A cell's log10 p is Fisher's combination
over its pairs; cells of different kinds are skipped.  The grid, the matched cells, the inferred
correspondence and the Bonferroni overall p are those of :mod:`tracing.stats.blockmap`.

``match`` and ``csh`` (activations, any residual width) run each model alone through the engine, as
the dense block map does: θ₁'s activations of every MLP of every block (every expert over every token)
are kept — in float32 while they fit the budget, else spilled to float16 memory-mapped files — and
while θ₂ runs, each of its blocks is paired with every block of θ₁ of the same kind.  Within a cell the
experts are paired on their activations (:func:`tracing.stats.experts.block_pairs` with the
similarity of the experts grid) and each expert pair is tested as the experts grid tests it.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import pvalues
from ..align import match_layers
from ..cosine import SIMILARITY_ROWS
from ..errors import TracingError
from .blockmap import ActivationStore, keep_bytes, summarize
from .experts import block_pairs, expert_similarity
from .spec import Cost

CELLS = "blocks of the same kind; a cell is Fisher's combination over its expert pairs"


def cos_expert_map(ctx, base, ft):
    a, b = base.arch, ft.arch
    if ctx.options.rows is not None:  # K sampled rows of every MLP
        from .experts_sampled import sampled_cells
        cells, partners, matched = sampled_cells(ctx, base, ft)
    else:
        cells, partners, matched = _cells(ctx, base, ft)
    alt = ctx.options.alternative
    grid, stats = np.full((a.L, b.L), np.nan), np.full((a.L, b.L), np.nan)
    n = np.zeros((a.L, b.L), dtype=np.int64)
    for (i, j), pairs in cells.items():
        tests = [pvalues.spearman_pairs(matched[(i, j), k].rows, matched[(i, j), k].cols, alternative=alt)
                 for k in range(len(pairs))]
        grid[i, j] = pvalues.fisher([lp for _, lp in tests])[1]
        stats[i, j] = float(np.nanmean([r for r, _ in tests])) if tests else np.nan
        n[i, j] = len(pairs)
    res = summarize("cos", grid, stats, n, ctx.options.significance)
    res.extra["cells"] = CELLS
    res.extra["expert_matching"] = expert_matching(res, partners)
    if ctx.options.rows is not None:
        from .experts_sampled import sampled_extra
        res.extra.update(sampled_extra(ctx.options, [p for pairs in cells.values() for p in pairs]))
    return res


def expert_matching(res, partners: dict) -> dict:
    """The experts paired in the cells of the correspondence: ``{"i,j": θ₂'s partner of each of θ₁'s
    experts}`` (cells of two MoE blocks)."""
    return {f"{i},{j}": partners[i, j] for i, j, _ in res.extra["correspondence"] if partners.get((i, j)) is not None}


def _cells(ctx, base, ft) -> tuple[dict, dict, dict]:
    """Every cell's unit pairs (experts paired on all their up rows), θ₂'s partner of each of θ₁'s
    experts and their MATCH results."""
    a, b = base.arch, ft.arch
    cells: dict = {}  # (i, j) -> unit pairs of the cell
    partners: dict = {}  # (i, j) -> θ₂'s partner of each of θ₁'s experts (two MoE blocks)
    for i in range(a.L):
        for j in range(b.L):
            if a.is_moe_block(i) != b.is_moe_block(j):
                continue
            cells[i, j], partners[i, j] = block_pairs(i, a.units(i), b.units(j),
                                         lambda ua, ub: expert_similarity(base.get(ua.up), ft.get(ub.up)))
    keys = [(cell, k) for cell, pairs in cells.items() for k in range(len(pairs))]
    matched = match_layers(keys, lambda key: (base.get(cells[key[0]][key[1]].a.up),
                                              ft.get(cells[key[0]][key[1]].b.up)),
                           mem_budget_bytes=ctx.mem_budget_bytes, pairs=True,
                           desc="cos: block map of experts" if ctx.progress else None)
    return cells, partners, matched


# ---- match and csh: activations -------------------------------------------------------------
def require_same_kind(a, b, stat: str) -> None:
    """Raise when no block of θ₁ has a block of θ₂ of the same kind (dense or mixture of experts)."""
    kinds = {bool(a.is_moe_block(i)) for i in range(a.L)} & {bool(b.is_moe_block(j)) for j in range(b.L)}
    if not kinds:
        raise TracingError(f"{stat}'s block map of experts (models of different depths, or --localized) pairs blocks of "
                           f"the same kind, but one model has only dense blocks and the other only mixture-of-experts "
                           f"blocks; compare models of the same depth without --localized (every expert is then paired "
                           f"with the dense MLP of its block)")


def match_expert_map(ctx, base, ft):
    """The expert block map of ``match``: gate matching against |up| matching per expert pair."""
    return activation_map(ctx, base, ft, "match", gated=True)


def csh_expert_map(ctx, base, ft):
    """The expert block map of ``csh``: up activations matched per expert pair."""
    return activation_map(ctx, base, ft, "csh", gated=False)


class _UnitStore:
    """θ₁'s activations of every MLP (dense, expert, shared expert) of every block, each over every
    token: one :class:`tracing.stats.blockmap.ActivationStore` per unit, all kept in float32 or all
    spilled (float16, unit norm) when their total exceeds ``keep``."""

    def __init__(self, arch, tokens: int, gated: bool, keep: int):
        total = sum(tokens * u.width * 2 * 4 for i in range(arch.L) for u in arch.units(i))
        self.spill = total > keep
        self.gated = gated
        self._stores: dict = {}
        self._limit = 0 if self.spill else total

    def put(self, i: int, cap) -> None:
        from .blockmap import kept_units
        for expert, c in ([(None, cap)] if cap.experts is None else cap.experts.items()):
            up = c.up
            store = self._stores[i, expert] = ActivationStore(1, up.shape[0], up.shape[1], self._limit)
            gate = c.gate if self.gated else up  # csh keeps up only (the same tensor twice in memory)
            store.put(0, gate, up, kept_units(gate, up) if self.gated else torch.ones(up.shape[1], dtype=torch.bool))

    def get(self, i: int, expert):
        """(gate or None, up, kept units) of one MLP of block i: [tokens, width], float32."""
        g, u, keep = self._stores[i, expert].get(0)
        return (g if self.gated else None), u, keep

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()


def activation_map(ctx, base, ft, stat: str, gated: bool):
    """Every block pair of the same kind, experts paired per cell by their activations; each pair
    tested as :func:`tracing.stats.experts.activation_stat` tests it; a cell is Fisher's combination
    over its pairs."""
    from ..align import Matcher
    from .base import gate_up_pairs, pairs_of
    from .blockmap import kept_units
    a, b, o = base.arch, ft.arch, ctx.options
    require_same_kind(a, b, stat)
    ids = ctx.data()
    engine = ctx.engine()
    store = _UnitStore(a, int(ids.numel()), gated, keep_bytes(ctx))
    up = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)
    gate = Matcher(mem_budget_bytes=ctx.mem_budget_bytes) if gated else None
    cells: dict = {}  # (i, j) -> unit pairs
    partners: dict = {}  # (i, j) -> θ₂'s partner of each of θ₁'s experts (two MoE blocks)

    def on_base(i, caps):
        store.put(i, caps[0])

    def on_ft(j, caps):
        cap2 = caps[0]
        for i in range(a.L):
            if a.is_moe_block(i) != b.is_moe_block(j):
                continue
            cells[i, j], partners[i, j] = block_pairs(
                i, a.units(i), b.units(j),
                lambda ua, ub: expert_similarity(store.get(i, ua.expert)[1].T, cap2.unit(ub.expert).up.T, absolute=gated))
            for k, pair in enumerate(cells[i, j]):
                G1, U1, ok1 = store.get(i, pair.a.expert)
                c2 = cap2.unit(pair.b.expert)
                if gated:
                    ok2 = kept_units(c2.gate, c2.up)
                    gate.submit((i, j, k), G1.T, c2.gate.T, keep1=ok1, keep2=ok2)
                    up.submit((i, j, k), U1.T, c2.up.T, absolute=True, keep1=ok1, keep2=ok2)
                else:
                    up.submit((i, j, k), U1.T, c2.up.T)

    try:
        engine.run([base], ids, on_block=on_base, desc=f"{stat}: forward θ₁")
        engine.run([ft], ids, on_block=on_ft, desc=f"{stat}: forward θ₂, block map of experts")
        pu = up.results()
        pg = gate.results() if gated else None
    finally:
        up.close()
        if gated:
            gate.close()
        store.close()
    matched = {k: gate_up_pairs(pg[k], pu[k]) for k in pg} if gated else {k: pairs_of(r) for k, r in pu.items()}
    grid, stats = np.full((a.L, b.L), np.nan), np.full((a.L, b.L), np.nan)
    n = np.zeros((a.L, b.L), dtype=np.int64)
    for (i, j), pairs in cells.items():
        tests = [pvalues.spearman_pairs(*matched[i, j, k][:2], alternative=o.alternative) for k in range(len(pairs))]
        grid[i, j] = pvalues.fisher([lp for _, lp in tests])[1]
        stats[i, j] = float(np.nanmean([r for r, _ in tests])) if tests else np.nan
        n[i, j] = len(pairs)
    res = summarize(stat, grid, stats, n, o.significance)
    res.extra["cells"] = CELLS
    res.extra["activations_spilled"] = bool(store.spill)
    # the experts paired in the cells of the correspondence (θ₁'s expert -> θ₂'s)
    res.extra["expert_matching"] = expert_matching(res, partners)
    res.extra["notes"] = [f"the models differ in depth (L {a.L} vs {b.L}): {stat} tested every block pair of the same "
                          f"kind (block map of experts)"] if a.L != b.L else []
    return res


def activation_map_cost(s):
    """Two separate forward passes; θ₁'s activations of every expert kept; per cell of the same kind,
    the experts' similarity and their matchings (two for ``match``)."""
    def widths(arch):
        return [sum(u.width for u in arch.units(i)) for i in range(arch.L)]
    acts = sum(widths(s.a)) * s.tokens * 2 * 4
    E = max(getattr(s.a, "n_experts", 0) or 0, 1)
    he = getattr(s.a, "h_expert", None) or s.a.h
    moe = sum(1 for i in range(s.a.L) if s.a.is_moe_block(i)) * sum(1 for j in range(s.b.L) if s.b.is_moe_block(j))
    dense = s.a.L * s.b.L - moe
    per_moe = E * E * s.mm(min(he, SIMILARITY_ROWS), he, s.tokens) + 2 * E * (s.mm(he, he, s.tokens) + s.solve_s(he) / s.par)
    per_dense = 2 * (s.mm(s.a.h, s.b.h, s.tokens) + s.solve_s(min(s.a.h, s.b.h)) / s.par)
    t = s.read_s + s.fwd_s("a") + s.fwd_s("b") + moe * per_moe + dense * per_dense
    return Cost(s.forward_mem() + acts + s.solves * s.per_solve, t, True)
