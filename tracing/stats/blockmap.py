"""Localized testing: the block map of two models of any depth (pruned, depth-upscaled, passthrough stacks).

Every block pair (i, j) — i a block of θ₁, j a block of θ₂ — gets its own p-value:

- ``cos`` (weights, equal residual width d): MATCH of the up_proj rows of block i of θ₁ and block j
  of θ₂ (rectangular when the MLP widths differ), SPEARMAN of the matched pairs;
- ``match`` (activations, any d and h): per cell, the gate matching against the |cos| up matching of
  the units' activations over the same tokens, SPEARMAN of the pairs.

The grid of log10 p (``per_pair``, θ₁ blocks as rows), the overall Bonferroni p-value
min(1, L₁L₂ · min p_ij), valid after choosing the best cell, and — only when the pair is significant —
the matched cells (p < 1e-4 and significant after Holm over the grid at the verdict level) and the
**correspondence**: for each block j of θ₂ the block i of θ₁ with the smallest p among its matched
cells, or none (:mod:`tracing.correspondence`).  With equal shapes the diagonal is exactly the
ordinary per-layer statistic.

Memory: ``match`` runs each model alone through the engine (models of different depths cannot run in
lockstep); θ₁'s per-block activations are kept in float32 while they fit the budget, else spilled to a
float16 memory-mapped file in a temporary folder (each unit's activations scaled to unit norm first,
which leaves every cosine unchanged).  Weight reads for ``cos`` stream one block pair at a time.

At real sizes (``match --rows K``): θ₁ keeps only K sampled units per block (the same indices in
every block), θ₂ every unit, and a cell is matched (K × h₂) only when the row-wise argmax partners of
its gate and |up| cosines agree on enough units (:func:`agreements`, :func:`screen_threshold`); the
others get p = 1, never smaller than the full test's, so every p-value and correction stays valid.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np
import torch
from scipy.stats import poisson

from .. import align as _align
from .. import correspondence as claims
from .. import pvalues
from ..align import Matcher, cosine_matrix
from ..errors import TracingError
from ..prefetch import ahead
from . import get
from .base import StatResult, gate_up_pairs, rows_extra, sampled_rows
from .cos import require_cos_width
from .cost import READ_BYTES_PER_S, REF_H, solve_s
from .spec import BLOCK_MAP, Cost, shapes

#: a cell is matched when its p-value is below this (log10) and it survives Holm over the grid
MATCHED_LOG10 = claims.MATCHED_LOG10
#: θ₁'s activations stay in memory (float32) up to this many bytes unless a budget is given
DEFAULT_KEEP_BYTES = 2 << 30
#: sampled ``match`` map: a cell is solved when its argmax agreements reach the count that two
#: unrelated matchings share with at most this probability (:func:`screen_threshold`)
SCREEN_TAIL = 0.05


# ---- when and whether ----------------------------------------------------------------------
def chosen(stat: str, a, b, options) -> bool:
    """The block map computes this pair: the statistic's block-map variant applies (asked for with
    ``--localized``, or needed for the block shapes that differ; never for mixtures of experts)."""
    v = get(stat).variant(a, b, options)
    return v is not None and v.name == BLOCK_MAP


def auto_note(stat: str, a, b, options) -> list[str]:
    if not chosen(stat, a, b, options) or getattr(options, "localized", False):
        return []
    return [f"the models differ in shape ({shapes(a, b)}): {stat} tested every block pair (localized block map)"]


# ---- the grid -------------------------------------------------------------------------------
def summarize(stat: str, grid: np.ndarray, stats: np.ndarray, n_pairs: np.ndarray, significance: float):
    """A :class:`tracing.stats.base.StatResult` from the L₁×L₂ grid of log10 p (NaN: cell skipped);
    the correspondence is claimed at ``significance`` (:mod:`tracing.correspondence`)."""
    L1, L2 = grid.shape
    finite = ~np.isnan(grid)
    if not finite.any():
        raise TracingError(f"{stat}: no block pair has {pvalues.MIN_PAIRS} or more matched units with nonzero "
                           f"finite values; the models cannot be compared")
    best = float(np.nanmin(grid))
    overall = claims.overall_log10(grid)
    matched = claims.matched_cells(grid, significance)
    corr = claims.correspondence(grid, significance)
    i0, j0 = np.unravel_index(int(np.nanargmin(grid)), grid.shape)
    extra = {"localized": True, "shape": [int(L1), int(L2)],
             "per_pair": [[_num(v) for v in row] for row in grid],
             "per_pair_statistic": [[_num(v) for v in row] for row in stats],
             "per_pair_n": [[int(v) for v in row] for row in n_pairs],
             "correspondence": corr, "matched": int(matched.sum()), "matched_level": 10.0 ** MATCHED_LOG10,
             "matched_rule": claims.RULE, "correspondence_note": claims.note(grid, significance, corr),
             "combine": "bonferroni", "best_cell": [int(i0), int(j0)], "best_log10_pvalue": best}
    return StatResult(stat, float(stats[i0, j0]), float(overall), [], extra)


def _num(v) -> float:
    return float(v)


def _grid_from(results: dict, L1: int, L2: int, pairs, alternative: str):
    """Spearman of every cell: ``pairs(results, i, j) -> (x, y)``."""
    grid = np.full((L1, L2), np.nan)
    stats = np.full((L1, L2), np.nan)
    n = np.zeros((L1, L2), dtype=np.int64)
    for i in range(L1):
        for j in range(L2):
            x, y = pairs(results, i, j)
            r, lp = pvalues.spearman_pairs(x, y, alternative=alternative)
            grid[i, j], stats[i, j], n[i, j] = lp, r, len(x)
    return grid, stats, n


# ---- cos: weights ---------------------------------------------------------------------------
def cos_map(ctx, base, ft):
    """The block map of ``cos``: MATCH of up_proj rows for every block pair (equal d). With
    ``--rows K`` the same K sampled rows of every block of both models (read once per block) are
    matched K × K in every cell."""
    A, B = base.arch, ft.arch
    require_cos_width(A, B)
    o = ctx.options
    S = None if o.rows is None else sampled_rows(min(A.h, B.h), o.rows, o.seed)
    kept = {} if S is None else {i: base.get_rows(A.units(i)[0].up, S) for i in range(A.L)}

    def read(src, arch, i):
        up = arch.units(i)[0].up
        return src.get(up) if S is None else src.get_rows(up, S)

    def read_ft(j):
        U2 = read(ft, B, j)
        ft.release()
        return U2

    if S is None:
        columns = ((j, read(ft, B, j)) for j in range(B.L))
    else:  # θ₂'s next block is read while this one is matched against θ₁'s blocks (kept in memory)
        base.release()
        columns = ahead(range(B.L), read_ft)
    m = Matcher(mem_budget_bytes=ctx.mem_budget_bytes, total=A.L * B.L,
                desc="cos: block map" if ctx.progress else None)
    try:
        for j, U2 in columns:
            for i in range(A.L):
                m.submit((i, j), kept[i] if S is not None else read(base, A, i), U2)
            del U2
            if S is None:  # (sampled: θ₂ is released by its reader, θ₁ is not read here)
                ft.release()
                base.release()
        res = m.results()
    finally:
        columns.close()  # a read ahead in flight ends before the error leaves
        m.close()
    grid, stats, n = _grid_from(res, A.L, B.L, lambda r, i, j: (r[i, j].rows, r[i, j].cols), ctx.options.alternative)
    out = summarize("cos", grid, stats, n, o.significance)
    med = [[float(np.median(res[i, j].cos)) if res[i, j].n_pairs else float("nan") for j in range(B.L)]
           for i in range(A.L)]
    out.extra["per_pair_median_cos"] = med
    # the pair's similarity for lineage trees: the mean median cosine of the matched cells (none: no block matched)
    cells = [med[i][j] for i, j, _ in out.extra["correspondence"] if math.isfinite(med[i][j])]
    if cells:
        out.extra["median_cos"] = float(np.mean(cells))
    out.extra["notes"] = auto_note("cos", A, B, ctx.options)
    if S is not None:
        out.extra.update(rows_extra(o, min(A.h, B.h)))
    return out


# ---- match: activations ---------------------------------------------------------------------
class ActivationStore:
    """θ₁'s per-block gate/up activations ([tokens, h] each) and the units they keep.

    Held in float32 while the total stays under ``keep_bytes``; beyond that every block goes to a
    float16 memory-mapped file in a temporary folder, each unit scaled to unit norm (cosines are
    unchanged, float16 cannot overflow).  ``close()`` deletes the folder.
    """

    def __init__(self, n_blocks: int, tokens: int, h: int, keep_bytes: int):
        self.spill = n_blocks * tokens * h * 2 * 4 > keep_bytes
        self._ram: dict = {}
        self._dir = tempfile.mkdtemp(prefix="tracing-blockmap-") if self.spill else None
        self._mm = None
        if self.spill:
            path = os.path.join(self._dir, "activations.f16")
            self._mm = np.memmap(path, dtype=np.float16, mode="w+", shape=(n_blocks, 2, tokens, h))
        self._keep: dict = {}

    def put(self, i: int, gate: torch.Tensor, up: torch.Tensor, keep: torch.Tensor) -> None:
        self._keep[i] = keep
        if not self.spill:
            self._ram[i] = (gate, up)
            return
        for k, X in enumerate((gate, up)):
            scale = X.norm(dim=0).clamp_min(1e-30).reciprocal_()
            self._mm[i, k] = (X * scale[None, :]).nan_to_num_(0.0).numpy().astype(np.float16)
        g, u, _ = self.get(i)  # units that float16 made copies of each other are left out too
        self._keep[i] = keep & kept_units(g, u)

    def get(self, i: int):
        """(gate [tokens, h], up [tokens, h], kept units) of block i, float32."""
        if not self.spill:
            return (*self._ram[i], self._keep[i])
        return (torch.from_numpy(np.asarray(self._mm[i, 0], dtype=np.float32)),
                torch.from_numpy(np.asarray(self._mm[i, 1], dtype=np.float32)), self._keep[i])

    def close(self) -> None:
        self._ram.clear()
        if self._mm is not None:
            del self._mm
            self._mm = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def kept_units(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Units kept by both matchings (see :func:`tracing.align.kept_units`); activations [tokens, h]."""
    return _align.kept_units(gate.T, up.T)


def keep_bytes(ctx) -> int:
    budget = ctx.mem_budget_bytes
    return DEFAULT_KEEP_BYTES if budget is None else budget // 2


def agreements(G1, U1, ok1, G2, U2, ok2) -> int:
    """The screen of one cell: how many units have the same partner by the row-wise argmax of the gate
    cosines and of the |up| cosines (keys: the side with fewer kept units; no assignment solved)."""
    if not bool(ok1.any()) or not bool(ok2.any()):
        return 0
    G1, U1, G2, U2 = G1[:, ok1], U1[:, ok1], G2[:, ok2], U2[:, ok2]
    dim = 1 if G1.shape[1] <= G2.shape[1] else 0
    g = cosine_matrix(G1.T, G2.T).argmax(dim=dim)
    u = cosine_matrix(U1.T, U2.T).abs_().argmax(dim=dim)
    return int((g == u).sum())


def screen_threshold(n1: int, n2: int) -> int:
    """Agreements that send a cell to the full test: the smallest c with P(Poisson(λ) ≥ c) ≤
    :data:`SCREEN_TAIL`, λ = min/max of the kept units (the count two unrelated matchings share by
    chance).  A cost knob only: cells screened out get p = 1, never a smaller p-value."""
    lam = min(n1, n2) / max(n1, n2, 1)
    return max(1, int(poisson.isf(SCREEN_TAIL, lam)) + 1)


class _Cells:
    """The gate and up matchings of the block map's cells, solved in parallel, and their pairs."""

    def __init__(self, ctx):
        self.gate = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)
        self.up = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)

    def submit(self, key, G1, U1, ok1, G2, U2, ok2) -> None:
        self.gate.submit(key, G1.T, G2.T, keep1=ok1, keep2=ok2)
        self.up.submit(key, U1.T, U2.T, absolute=True, keep1=ok1, keep2=ok2)

    def pairs(self) -> dict:
        """{key: (x, y)} of every submitted cell (see :func:`tracing.stats.base.gate_up_pairs`)."""
        try:
            pg, pu = self.gate.results(), self.up.results()
        finally:
            self.close()
        return {k: gate_up_pairs(pg[k], pu[k])[:2] for k in pg}

    def close(self) -> None:
        self.gate.close()
        self.up.close()


def match_map(ctx, base, ft):
    """The block map of ``match``: one forward pass per model, every block pair matched.  With
    ``--rows K``: θ₁'s K sampled units (the same in every block) against every unit of θ₂, and only
    the cells that pass the argmax screen (:func:`agreements`) solved; the others get p = 1."""
    A, B, o = base.arch, ft.arch, ctx.options
    S = None if o.rows is None else torch.from_numpy(sampled_rows(A.h, o.rows, o.seed))
    ids = ctx.data()
    engine = ctx.engine()
    store = ActivationStore(A.L, int(ids.numel()), A.h if S is None else len(S), keep_bytes(ctx))
    full = _Cells(ctx)
    agree = np.zeros((A.L, B.L), dtype=np.int64)

    def on_base(i, caps):
        g, u = (caps[0].gate, caps[0].up) if S is None else (caps[0].gate[:, S], caps[0].up[:, S])
        store.put(i, g, u, kept_units(g, u))

    def on_ft(j, caps):
        G2, U2 = caps[0].gate, caps[0].up
        ok2 = kept_units(G2, U2)
        for i in range(A.L):
            G1, U1, ok1 = store.get(i)
            if S is not None:
                agree[i, j] = agreements(G1, U1, ok1, G2, U2, ok2)
                if agree[i, j] < screen_threshold(int(ok1.sum()), int(ok2.sum())):
                    continue
            full.submit((i, j), G1, U1, ok1, G2, U2, ok2)

    try:
        engine.run([base], ids, on_block=on_base, desc="match: forward θ₁")
        engine.run([ft], ids, on_block=on_ft, desc="match: forward θ₂, block map")
        pairs = full.pairs()
    finally:
        full.close()
        store.close()
    empty = np.zeros(0, dtype=np.int64)
    grid, stats, n = _grid_from(pairs, A.L, B.L, lambda r, i, j: r.get((i, j), (empty, empty)), o.alternative)
    if S is not None:  # screened out: not tested, p = 1
        out_ = np.ones((A.L, B.L), dtype=bool)
        for key in pairs:
            out_[key] = False
        grid[out_] = 0.0
    out = summarize("match", grid, stats, n, o.significance)
    out.extra["activations_spilled"] = bool(store.spill)
    out.extra["notes"] = auto_note("match", A, B, o)
    if S is not None:
        out.extra.update(rows_extra(o, A.h), rows_of_ft="all")
        out.extra["screen"] = {"rule": "argmax agreements of gate and |up| at or above a Poisson(λ) tail of "
                                       f"{SCREEN_TAIL}", "tested": len(pairs), "screened_out": int(out_.sum()),
                               "agreements": agree.tolist()}
    return out


# ---- job sizing -----------------------------------------------------------------------------
def cos_cost(s):
    """Every block pair's cosine product and assignment; weights stream (sampled: K rows of each
    block read once, K × K per cell)."""
    cells = s.a.L * s.b.L
    K = getattr(s.options, "rows", None)
    if K:
        K = min(int(K), s.a.h, s.b.h)
        read = K * s.d * (s.a.L * s.a_bytes + s.b.L * s.b_bytes) / READ_BYTES_PER_S
        return Cost(s.a.L * K * s.d * 4 + 2 * K * s.d * 4 + K * K * 12,
                    read + cells * (s.mm(K, K, s.d) + solve_s(K)), True)
    t = s.read_s * s.b.L + cells * (s.mm(s.a.h, s.b.h, s.d) + s.solve_s(min(s.a.h, s.b.h)) / s.par)
    return Cost(s.weight_stream + s.solves * s.per_solve, t, True)


def match_cost(s):
    """Two separate forward passes; θ₁'s activations kept (float32, or spilled beyond the budget);
    two matchings per block pair (sampled: K × h₂, only for the cells that pass the argmax screen)."""
    cells = s.a.L * s.b.L
    K = getattr(s.options, "rows", None)
    width = s.a.h if not K else min(int(K), s.a.h)
    acts = s.a.L * s.tokens * width * 2 * 4
    opts = s.options
    keep = DEFAULT_KEEP_BYTES if getattr(opts, "mem_budget_gb", None) is None else int(opts.mem_budget_gb * (1 << 30)) // 2
    held = acts if acts <= keep else 0

    def step(n1):  # a gate and an up matching of n1 θ₁ units against θ₂'s h units
        return 2 * (s.mm(n1, s.b.h, s.tokens) + solve_s(REF_H) * (min(n1, s.b.h) / REF_H) ** 2
                    * (max(n1, s.b.h) / REF_H) / s.par)
    if K:  # every cell's two products for the screen; the matchings of the few that pass it
        per_cell = 2 * s.mm(width, s.b.h, s.tokens) + SCREEN_TAIL * step(width)
    else:
        per_cell = 2 * (s.mm(s.a.h, s.b.h, s.tokens) + s.solve_s(min(s.a.h, s.b.h)) / s.par)
    t = s.read_s + s.fwd_s("a") + s.fwd_s("b") + cells * per_cell
    return Cost(s.forward_mem("match") + held + s.solves * s.per_solve, t, True)


# ---- for people -----------------------------------------------------------------------------
def explain(rec: dict) -> list[str]:
    """Summary lines of a block-map record."""
    grid = rec.get("per_pair") or []
    L1, L2 = len(grid), len(grid[0]) if grid else 0
    return [f"  block map {L1}×{L2}: {rec.get('matched', 0)} block pairs matched (p < 1e-4 and significant after "
            f"Holm over the {L1 * L2} pairs); overall p-value is the Bonferroni bound over the {L1 * L2} pairs",
            f"  correspondence (θ₁ block → θ₂ block): "
            f"{claims.text(rec.get('correspondence') or [], L2, rec.get('correspondence_note'))}"] + _screen_line(rec)


def _screen_line(rec: dict) -> list[str]:
    ex = rec.get("extra") or {}
    sc = ex.get("screen")
    if not sc:
        return []
    return [f"  sampled: {ex.get('rows')} units of θ₁ (seed {ex.get('rows_seed')}) against every unit of θ₂; "
            f"{sc['tested']} block pairs passed the screen and were tested, {sc['screened_out']} were not (p = 1)"]
