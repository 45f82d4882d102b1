"""The block map of two mixture-of-experts models of different depths (``cos``).

A model of mixed block kinds (DeepSeek's dense first blocks, Llama 4's interleaving, Qwen MoE's
``mlp_only_layers``) against another of a different depth: every block pair (i, j) *of the same
kind* is a cell — two dense MLPs matched on their up rows; two MoE blocks with their experts
paired as in :mod:`tracing.stats.experts` (Hungarian assignment on an expert-level similarity, shared
expert with shared expert) and each expert pair tested.  A cell's log10 p is Fisher's combination
over its pairs; cells of different kinds are skipped.  The grid, the matched cells, the inferred
correspondence and the Bonferroni overall p are those of :mod:`tracing.stats.blockmap`.
"""
from __future__ import annotations

import numpy as np

from .. import pvalues
from ..align import match_layers
from .blockmap import summarize
from .experts import block_pairs, expert_similarity


def cos_expert_map(ctx, base, ft):
    a, b = base.arch, ft.arch
    if ctx.options.rows is not None:  # K sampled rows of every MLP
        from .experts_sampled import sampled_cells
        cells, matched = sampled_cells(ctx, base, ft)
    else:
        cells, matched = _cells(ctx, base, ft)
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
    res.extra["cells"] = "blocks of the same kind; a cell is Fisher's combination over its expert pairs"
    if ctx.options.rows is not None:
        from .experts_sampled import sampled_extra
        res.extra.update(sampled_extra(ctx.options, [p for pairs in cells.values() for p in pairs]))
    return res


def _cells(ctx, base, ft) -> tuple[dict, dict]:
    """Every cell's unit pairs (experts paired on all their up rows) and their MATCH results."""
    a, b = base.arch, ft.arch
    cells: dict = {}  # (i, j) -> unit pairs of the cell
    for i in range(a.L):
        for j in range(b.L):
            if a.is_moe_block(i) != b.is_moe_block(j):
                continue
            cells[i, j], _ = block_pairs(i, a.units(i), b.units(j),
                                         lambda ua, ub: expert_similarity(base.get(ua.up), ft.get(ub.up)))
    keys = [(cell, k) for cell, pairs in cells.items() for k in range(len(pairs))]
    matched = match_layers(keys, lambda key: (base.get(cells[key[0]][key[1]].a.up),
                                              ft.get(cells[key[0]][key[1]].b.up)),
                           mem_budget_bytes=ctx.mem_budget_bytes, pairs=True,
                           desc="cos: block map of experts" if ctx.progress else None)
    return cells, matched
