"""The sampled experts grid: ``cos --rows K`` when either model has mixture-of-experts blocks.

Every MLP of a block (each routed expert, the shared expert, a dense MLP) contributes the same K
sampled rows of its up-projection: the unit indices S drawn from the seed alone, as for a dense
``--rows`` test (:func:`tracing.stats.base.sampled_rows`), from the width of the MLPs paired (the
narrower of the two when they differ). Only those rows are read, expert by expert.

Experts are paired as in the full grid (:func:`tracing.stats.experts.block_pairs`: Hungarian assignment
per block, shared expert with shared expert, every expert against a dense MLP), on an expert-level
similarity computed from the sampled rows alone: the cosine between the two experts' centroids
(the mean of their K sampled rows), each model's centroids centred on their mean over the block's
experts. It takes E·K·d operations per model and block, where the full grid's best-row cosine
would take E²·K²·d. It is invariant to any reordering of θ₂'s sampled rows within an expert, so
under independence each pair's K matched rows still give an exact Spearman test; the null law and
the per-pair floor −log10(K!) are those of the dense sampled test.

Models of the same depth are paired block by block (one block's rows in memory at a time); else
every block pair of the same kind is a cell of the block map (:mod:`tracing.stats.expert_map`),
matched row by row: a row is one block of θ₁, read once into its buffer and paired with every block
of θ₂ of its kind. θ₂'s blocks are read once and kept (a buffer each, shared by the rows) when they
fit the memory budget beside the rows in flight, else each cell reads its block of θ₂ into a buffer
of its own and gives it back when done (from a local file when θ₂ is read from the hub by range
requests: each of its rows is fetched once, as the dry run plans; :class:`tracing.rowstore.SpilledRows`).
Several blocks, or rows, run at once (``--workers``); their results combine in the serial order, so
the record is the serial one bit for bit. Launch sizes the block map's job by the work of every cell
(:func:`cells_work`, :func:`cells_cost`).
"""
from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import numpy as np
import torch

from ..models import stored_rows_reader
from ..rowstore import STORE_DTYPES, _compact

#: extra keys of a sampled experts result
WIDTHS_KEY = "rows_of_units"
#: the per-block row buffers alive now (one per model and block being matched)
_LIVE_BUFFERS: "weakref.WeakSet[torch.Tensor]" = weakref.WeakSet()


def live_buffers() -> int:
    """How many per-block row buffers are alive (at most two per block in flight)."""
    return len(_LIVE_BUFFERS)


class SampledUnits:
    """One model's sampled up rows, per MLP (read once, kept losslessly in the smallest dtype that
    holds them: bfloat16 for most checkpoints). ``lock``: held while reading, when several blocks
    are read at once from one source. A view's own lock makes each row read once when threads share
    the view (a kept block of θ₂ in the block map)."""

    def __init__(self, src, K: int, seed: int, lock=None):
        self.src, self.K, self.seed = src, int(K), int(seed)
        self._rows: dict = {}
        self._S: dict = {}
        # one block's rows: a [slots, K, d] tensor allocated at the first read, each MLP's rows a slot
        self._slots, self._buffer, self._used = 0, None, 0
        self._lock = lock if lock is not None else nullcontext()
        self._fill = threading.RLock()
        self._read = stored_rows_reader(src)  # a checkpoint's bfloat16 rows are kept as read

    def block_view(self, slots: int = 0) -> "SampledUnits":
        """An empty cache of rows on the same source, indices and lock (one block's rows), its rows kept
        in one buffer of ``slots`` MLPs' K rows: one allocation per block, given back whole by
        :meth:`drop` (rows copied one by one into buffers of their own fragment the heap: twice the
        memory of the rows in flight)."""
        view = SampledUnits.__new__(SampledUnits)
        view.__dict__.update(self.__dict__, _rows={}, _slots=int(slots), _buffer=None, _used=0,
                             _fill=threading.RLock())
        return view

    def indices(self, n: int) -> np.ndarray:
        """The sampled unit indices of an MLP of width n (the same in both models and every block)."""
        from .base import sampled_rows
        if n not in self._S:
            self._S[n] = sampled_rows(n, self.K, self.seed)
        return self._S[n]

    def stored(self, unit, n: int) -> torch.Tensor:
        """The K sampled up rows of ``unit``, drawn from width ``n``, as kept: rows read in bfloat16
        or float16 as they are, others in the smallest dtype that holds their float32 values."""
        key = (unit.key, n)
        with self._fill:
            if key not in self._rows:
                index = self.indices(n)
                with self._lock:
                    t = self._read(unit.up, index)
                self._rows[key] = self._keep(t if t.dtype in STORE_DTYPES else _compact(t.float()))
            return self._rows[key]

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        """``t``'s values in the block's buffer (the next free slot), else in a copy of its own (rows
        left in the reader's buffers fragment the heap): the same values, bit for bit."""
        buf = self._buffer
        if buf is None and self._slots:
            buf = self._buffer = torch.empty((self._slots, *t.shape), dtype=t.dtype)
            _LIVE_BUFFERS.add(buf)
        if buf is None or self._used >= buf.shape[0] or buf.dtype != t.dtype or buf.shape[1:] != t.shape:
            return t.clone()
        slot = buf[self._used]
        self._used += 1
        return slot.copy_(t)

    def prefetch(self, units) -> None:
        """Start on the reads of the K sampled up rows of each of ``units`` (at its own width) all at
        once, when the source reads by range requests (the round trips overlap instead of following one
        another); the rows are then taken by :meth:`stored` as before. Only a checkpoint itself reads
        ahead (a row store or a transformed view reads its rows one tensor after another)."""
        fetch = getattr(type(self.src), "prefetch_rows", None)
        wants = [(u.up, self.indices(u.width)) for u in units if (u.key, u.width) not in self._rows]
        if fetch is not None and wants:
            with self._lock:
                fetch(self.src, wants)

    def read(self, units) -> None:
        """The K sampled up rows of each of ``units`` (at its own width), fetched ahead all at once and
        kept; one thread reads them while others sharing this view wait (nothing is fetched twice)."""
        with self._fill:
            self.prefetch(units)
            for u in units:
                self.stored(u, u.width)

    def rows(self, unit, n: int) -> torch.Tensor:
        """The K sampled up rows (float32) of ``unit``, drawn from width ``n``."""
        return self.stored(unit, n).float()

    def drop(self) -> None:
        """Forget the rows read (and the block's buffer)."""
        self._rows.clear()
        self._buffer, self._used = None, 0


def centroid(rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of ``rows`` (bfloat16, float16 or float32) in float64: exactly ``rows.double().mean(0)``
    (the CPU mean is a float64 sum divided by the count either way), without the slow conversion of
    bfloat16 straight to float64; written to ``out`` when given."""
    return torch.mean(rows.float(), 0, dtype=torch.float64, out=out)


def _centred_centroids(side: SampledUnits, units) -> torch.Tensor:
    """Unit-norm centroids of the routed experts' sampled rows, centred on their mean (float64).
    Every expert's rows are read first, then the centroids written into one matrix: reads and
    float32 copies interleaved with small centroids left behind would fragment the heap (about the
    block's rows again)."""
    rows = [side.stored(u, u.width) for u in units]
    C = torch.empty((len(rows), rows[0].shape[1]), dtype=torch.float64)
    for k, r in enumerate(rows):
        centroid(r, out=C[k])
    del rows
    if len(units) > 1:
        C = C - C.mean(0, keepdim=True)
    return C / C.norm(dim=1, keepdim=True).clamp_min(1e-300)


def centroid_similarity(sa: SampledUnits, sb: SampledUnits, units_a, units_b):
    """``similarity(ua, ub)`` for :func:`~tracing.stats.experts.block_pairs`: the cosine of the two
    experts' centred centroids (computed for all pairs of routed experts at once)."""
    from .experts import _routed
    ra, rb = _routed(units_a), _routed(units_b)
    if not ra or not rb:
        return None
    S = (_centred_centroids(sa, ra) @ _centred_centroids(sb, rb).T).numpy()
    pos_a = {u.key: k for k, u in enumerate(ra)}
    pos_b = {u.key: k for k, u in enumerate(rb)}
    return lambda ua, ub: float(S[pos_a[ua.key], pos_b[ub.key]])


def pair_width(pair) -> int:
    """The width the pair's rows are drawn from: the narrower MLP's."""
    return min(pair.a.width, pair.b.width)


def match_block(ctx, sa: SampledUnits, sb: SampledUnits, pairs: list, first: int = 0, solvers: int | None = None) -> dict:
    """MATCH of the sampled up rows of each unit pair: ``{first + k: MatchResult}`` (``solvers``:
    parallel assignment solves, default the cores)."""
    from ..align import match_layers
    return match_layers(range(first, first + len(pairs)),
                        lambda k: (sa.rows(pairs[k - first].a, pair_width(pairs[k - first])),
                                   sb.rows(pairs[k - first].b, pair_width(pairs[k - first]))),
                        workers=solvers, mem_budget_bytes=ctx.mem_budget_bytes, pairs=True)


def _grid_block(ctx, a, b, sa: SampledUnits, sb: SampledUnits, i: int, solvers: int | None):
    """Block i of the grid: ``(unit pairs, θ₂'s partner of each of θ₁'s experts, {k: MatchResult})``,
    k counted from the block's first pair; only this block's rows are held, and freed on return."""
    from .experts import _routed, block_pairs
    ua, ub = a.units(i), b.units(i)
    sa, sb = sa.block_view(len(ua)), sb.block_view(len(ub))
    try:
        ra, rb = _routed(ua), _routed(ub)
        if ra and rb:  # every routed expert's rows are read for its centroid: all at once
            sa.prefetch(ra)
            sb.prefetch(rb)
        block, partner = block_pairs(i, ua, ub, centroid_similarity(sa, sb, ua, ub), any_width=True)
        return block, partner, match_block(ctx, sa, sb, block, solvers=solvers)
    finally:  # the block's buffers go back before the next block is read (an error's traceback holds sa, sb)
        sa.drop()
        sb.drop()


def sampled_experts(ctx, base, ft):
    """The experts grid of two models of the same depth on K sampled rows per MLP."""
    from ..errors import TracingError
    from .experts import expert_result, grid_columns
    from .base import median_cos, pairs_of
    a, b, o = base.arch, ft.arch, ctx.options
    workers = block_workers(ctx, a, b)
    locks = (threading.Lock(), threading.Lock()) if workers > 1 else (None, None)
    sa, sb = SampledUnits(base, o.rows, o.seed, locks[0]), SampledUnits(ft, o.rows, o.seed, locks[1])
    solvers = 1 if workers > 1 else None
    pairs, partners, matched = [], {}, {}
    blocks = each_block(ctx, a.L, lambda i: _grid_block(ctx, a, b, sa, sb, i, solvers), workers,
                        "cos: sampled experts")
    for i, (block, partners[i], found) in blocks:  # in block order, whatever order they finished in
        matched.update({len(pairs) + k: m for k, m in found.items()})
        pairs += block
    if not pairs:
        raise TracingError("cos found no two experts of equal width to pair (the two models' experts differ in "
                           "width); compare each model with a dense model, or the experts' shared ancestor")
    res = expert_result("cos", pairs, {k: pairs_of(m) for k, m in matched.items()}, partners, a.L,
                        grid_columns(a, b), ctx)
    median_cos(res, matched)
    res.extra.update(sampled_extra(o, pairs))
    return res


class _Columns:
    """θ₂'s blocks for the rows of the block map. ``keep``: each block read once into a buffer of its
    own and shared by every row (until :meth:`close`); else every cell reads the block into a buffer
    of its own, given back when the cell is done."""

    def __init__(self, side: SampledUnits, arch, keep: bool):
        self.side, self.arch, self.keep = side, arch, keep
        self._views: dict = {}
        self._lock = threading.Lock()

    @contextmanager
    def block(self, j: int):
        if self.keep:
            with self._lock:
                view = self._views.get(j)
                if view is None:
                    view = self._views[j] = self.side.block_view(len(self.arch.units(j)))
            yield view
            return
        view = self.side.block_view(len(self.arch.units(j)))
        try:
            yield view
        finally:
            view.drop()

    def close(self) -> None:
        for view in self._views.values():
            view.drop()
        self._views.clear()


def _cell_row(ctx, a, b, sa: SampledUnits, columns: _Columns, i: int, solvers: int | None) -> list:
    """Row i of the block map: ``[(j, unit pairs, θ₂'s partner of each of θ₁'s experts, {k: MatchResult})]``
    for every block j of θ₂ of block i's kind; block i's rows are read once, held for the row and
    freed on return."""
    from .experts import _routed, block_pairs
    ua = a.units(i)
    va, out = sa.block_view(len(ua)), []
    try:
        for j in range(b.L):
            if a.is_moe_block(i) != b.is_moe_block(j):
                continue
            ub = b.units(j)
            with columns.block(j) as vb:
                ra, rb = _routed(ua), _routed(ub)
                if ra and rb:  # every routed expert's rows are read for its centroid: all at once
                    va.read(ra)
                    vb.read(rb)
                pairs, partner = block_pairs(i, ua, ub, centroid_similarity(va, vb, ua, ub))
                out.append((j, pairs, partner, match_block(ctx, va, vb, pairs, solvers=solvers)))
        return out
    finally:  # the row's buffer goes back before the next row is read (an error's traceback holds va)
        va.drop()


def sampled_cells(ctx, base, ft) -> tuple[dict, dict, dict]:
    """The block map's cells on sampled rows: ``(cells, partners, matched)``, ``cells[i, j]`` the unit
    pairs of blocks i and j (of the same kind), ``partners[i, j]`` θ₂'s partner of each of θ₁'s experts
    (two MoE blocks, else None) and ``matched[(i, j), k]`` the MatchResult of pair k. Rows of the map
    (θ₁'s blocks) run at once as the blocks of :func:`sampled_experts` do (:func:`each_block`)."""
    from ..rowstore import SpilledRows, reads_by_range
    a, b, o = base.arch, ft.arch, ctx.options
    workers, keep = cell_workers(ctx, a, b)
    locks = (threading.Lock(), threading.Lock()) if workers > 1 else (None, None)
    # θ₂'s blocks read by every cell, from the hub: each row fetched once, then read from a local file
    spill = SpilledRows(ft) if not keep and reads_by_range(ft) else None
    sa = SampledUnits(base, o.rows, o.seed, locks[0])
    sb = SampledUnits(ft if spill is None else spill, o.rows, o.seed, locks[1])
    columns = _Columns(sb, b, keep)
    solvers = 1 if workers > 1 else None
    cells, partners, matched = {}, {}, {}
    try:
        rows = each_block(ctx, a.L, lambda i: _cell_row(ctx, a, b, sa, columns, i, solvers), workers,
                          "cos: sampled block map of experts")
        for i, row in rows:  # in row order, whatever order they finished in
            for j, pairs, partner, found in row:
                cells[i, j], partners[i, j] = pairs, partner
                matched.update({((i, j), k): m for k, m in found.items()})
    finally:
        columns.close()
        if spill is not None:
            spill.close()
    return cells, partners, matched


def sampled_extra(options, pairs: list) -> dict:
    """What a sampled experts result records: K, the seed, the routed experts' width the indices
    were drawn from (``rows_of``), and every width sampled (routed, shared, dense)."""
    from .base import rows_extra
    widths: dict = {}
    for p in pairs:
        kind = "dense" if p.column is None else "shared" if p.column == "shared" else "routed"
        widths.setdefault(kind, pair_width(p))
    n = widths.get("routed", min(widths.values()))
    return {**rows_extra(options, n), WIDTHS_KEY: widths}


def _budget(ctx) -> int:
    """Bytes the sampled rows may take: ``--mem_budget_gb``, else half of the free memory."""
    from ..machine import available_bytes
    return ctx.mem_budget_bytes if ctx.mem_budget_bytes is not None else available_bytes() // 2


def _units_bytes(K: int, a, b, units: int) -> int:
    """Bytes of ``units`` MLPs' K sampled rows, with room for their float32 copies."""
    return units * int(K) * max(a.d, b.d) * 4


def block_workers(ctx, a, b, per_block: int | None = None) -> int:
    """Blocks matched at once (``--workers``): by default the cores, as many as half of the free
    memory holds (``per_block``, by default a block's sampled rows of both models, with room for
    their float32 copies)."""
    from ..machine import cores
    if ctx.options.workers is not None:
        return int(ctx.options.workers)
    if per_block is None:
        units = max((len(a.units(i)) + len(b.units(i)) for i in range(min(a.L, b.L))), default=1)
        per_block = _units_bytes(ctx.options.rows, a, b, units)
    return max(1, min(cores(), _budget(ctx) // max(per_block, 1)))


def _widest(arch) -> int:
    """The most MLPs of a block of ``arch`` (routed experts, a shared expert, or one dense MLP)."""
    return max(len(arch.units(i)) for i in range(arch.L))


def keeps_theta2(a, b, K: int, workers: int, budget: int) -> bool:
    """Whether the block map reads θ₂'s blocks once and keeps them: all of them fit ``budget`` bytes
    beside the rows in flight (a block of θ₁ per worker); else each cell reads its block of θ₂."""
    kept = _units_bytes(K, a, b, sum(len(b.units(j)) for j in range(b.L)))
    return workers * _units_bytes(K, a, b, _widest(a)) + kept <= budget


def cell_workers(ctx, a, b) -> tuple[int, bool]:
    """``(workers, keep)`` of the block map: rows matched at once (a row holds one block of θ₁ and a
    block of θ₂ at a time; :func:`block_workers`), and whether θ₂'s blocks are read once and kept
    (:func:`keeps_theta2`)."""
    K = int(ctx.options.rows)
    workers = block_workers(ctx, a, b, _units_bytes(K, a, b, _widest(a) + _widest(b)))
    return workers, keeps_theta2(a, b, K, workers, _budget(ctx))


def each_block(ctx, L: int, fn, workers: int, desc: str):
    """``(i, fn(i))`` for every block i, in block order. With ``workers`` > 1, that many blocks run at
    once on threads (reading, matrix products and assignment solves release the GIL), torch's
    intra-op threads divided among them for the while; a block's result waits for the earlier
    blocks', so results combine in the serial order. An error in a block is raised once the blocks
    before it are done; blocks not yet started are cancelled."""
    from tqdm import tqdm
    bar = tqdm(total=L, desc=desc, disable=not ctx.progress, leave=False)
    try:
        if workers <= 1 or L <= 1:
            for i in range(L):
                yield i, fn(i)
                bar.update()
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // workers))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="experts-block")
        try:
            futures = [pool.submit(fn, i) for i in range(L)]
            for i in range(L):
                found = futures[i].result()
                futures[i] = None
                yield i, found
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)
    finally:
        bar.close()


def narrowest(arch) -> int:
    """The narrowest MLP of a model (a dense MLP, a routed or a shared expert)."""
    return min(u.width for i in range(arch.L) for u in arch.units(i))


def sampled_workers(s, blocks: int | None = None) -> int:
    """Blocks (or rows of the block map) the job matches at once: ``--workers``, else one per core of
    the job (the default of :func:`block_workers` on the job's cores; the job's memory is sized to hold
    them), at most the ``blocks`` (default: the blocks of the shallower model)."""
    workers = getattr(s.options, "workers", None)
    blocks = min(s.a.L, s.b.L) if blocks is None else blocks
    return max(1, min(int(workers) if workers is not None else int(s.cpus), blocks))


def sampled_cost(s):
    """Every MoE block: K rows of each expert (and shared expert) read, E centroids, E K × K
    products and solves; dense blocks as a dense sampled test. Memory: the rows of both models'
    blocks in flight (one block per worker, :func:`sampled_workers`), with room for float32 copies,
    and a K × K cost matrix per worker. The block map (models of different depths, or
    ``--localized``): :func:`cells_cost`."""
    from .cost import READ_BYTES_PER_S, solve_s
    from .spec import Cost, expert_block_map
    if expert_block_map(s.a, s.b, s.options):
        return cells_cost(s)
    moe = s.a if s.a.has_experts else s.b
    K = min(int(s.options.rows), narrowest(moe))
    units = sum(len(moe.units(i)) for i in range(moe.L))
    read = units * K * s.d * (s.a_bytes + s.b_bytes) / READ_BYTES_PER_S
    per_block = 2 * (moe.n_experts + 1) * K * s.d * 4
    return Cost(sampled_workers(s) * (per_block + K * K * 12), read + units * (s.mm(K, K, s.d) + solve_s(K)), True)


class CellsWork(NamedTuple):
    """What the sampled block map does, counted from the two models' shapes: MLPs whose K rows are
    read of θ₁ (``reads_a``) and of θ₂ (``reads_b``), unit pairs matched (a K × K product and solve
    each), entries of the expert-level similarities and expert centroids computed."""

    reads_a: int
    reads_b: int
    pairs: int
    similarity: int
    centroids: int


def cells_work(a, b, keep: bool) -> CellsWork:
    """The work of the sampled block map of ``a`` (θ₁) and ``b`` (θ₂) over every cell of the same kind:
    θ₁'s rows read once per block (a row of the map), θ₂'s once per block when ``keep`` (kept for every
    row), else once per cell; per cell of two MoE blocks, the centroids of both blocks' routed experts,
    their E₁ × E₂ similarities and a K × K matching per expert pair (and the shared experts')."""
    from .experts import _routed, _shared
    reads_b = pairs = similarity = centroids = 0
    for i, j in same_kind_cells(a, b):
        ua, ub = a.units(i), b.units(j)
        reads_b += 0 if keep else len(cell_reads(ub, ua))
        ra, rb = _routed(ua), _routed(ub)
        if ra and rb:
            sa, sb = _shared(ua), _shared(ub)
            pairs += min(len(ra), len(rb)) + (sa is not None and sb is not None and sa.width == sb.width)
            similarity += len(ra) * len(rb)
            centroids += len(ra) + len(rb)
        else:
            pairs += 1 if not ra and not rb else max(len(ra), len(rb))
    return CellsWork(len(planned_rows(a, b, True)), len(planned_rows(b, a, True)) if keep else reads_b,
                     pairs, similarity, centroids)


def cells_cost(s):
    """The sampled block map of mixtures of experts: every cell of the same kind (L₁ × L₂ of them when
    every block is of one kind) reads, compares and matches as :func:`cells_work` counts; θ₂'s blocks are
    kept when they fit the budget the job runs with (:func:`keeps_theta2`), else read by every cell.
    Memory: a block of each model per worker (rows of the map at once), with room for float32 copies,
    a K × K cost matrix per worker, and θ₂'s kept blocks."""
    from .cost import READ_BYTES_PER_S, solve_s
    from .spec import Cost
    a, b = s.a, s.b
    K = min(int(s.options.rows), narrowest(a), narrowest(b))
    workers = sampled_workers(s, a.L)
    keep = keeps_theta2(a, b, K, workers, s.budget_bytes)
    w = cells_work(a, b, keep)
    read = K * s.d * (w.reads_a * s.a_bytes + w.reads_b * s.b_bytes) / READ_BYTES_PER_S
    compute = w.pairs * (s.mm(K, K, s.d) + solve_s(K)) + (2 * w.similarity + w.centroids * K) * s.d / s.flops
    kept = _units_bytes(K, a, b, sum(len(b.units(j)) for j in range(b.L))) if keep else 0
    mem = workers * (_units_bytes(K, a, b, _widest(a) + _widest(b)) + K * K * 12) + kept
    return Cost(mem, read + compute, True)


def same_kind_cells(a, b) -> list[tuple[int, int]]:
    """The block map's cells: every block pair (i, j), i of ``a`` and j of ``b``, of the same kind
    (two dense blocks, or two MoE blocks)."""
    return [(i, j) for i in range(a.L) for j in range(b.L) if a.is_moe_block(i) == b.is_moe_block(j)]


def cell_reads(ua, ub) -> set:
    """What pairing a block of MLPs ``ua`` with a block of MLPs ``ub`` reads of the first:
    ``{(up tensor, width)}``, K rows drawn from ``width`` of each (every routed expert's at its width,
    for its centroid; a shared expert paired with one of its width; a dense MLP against a dense MLP or,
    in an upcycling pair, at the width of each expert)."""
    from .experts import _routed, _shared
    ra, rb = _routed(ua), _routed(ub)
    if ra and rb:
        out = {(u.up, u.width) for u in ra}
        sa, sb = _shared(ua), _shared(ub)
        if sa is not None and sb is not None and sa.width == sb.width:
            out.add((sa.up, sa.width))
        return out
    if not ra and not rb:
        return {(ua[0].up, min(ua[0].width, ub[0].width))}
    if ra:  # upcycling: every expert against the dense MLP
        return {(u.up, min(u.width, ub[0].width)) for u in ua}
    return {(ua[0].up, min(u.width, ua[0].width)) for u in ub}


def planned_rows(arch, other, localized: bool = False) -> set:
    """What the sampled experts grid (or, for models of different depths or with ``localized``, the
    block map) reads of the model ``arch`` when tested against ``other``, from their shapes alone:
    ``{(up tensor, width)}`` (:func:`cell_reads` of every block pair compared), each read once."""
    cells = same_kind_cells(arch, other) if arch.L != other.L or localized else [(i, i) for i in range(arch.L)]
    return set().union(*(cell_reads(arch.units(i), other.units(j)) for i, j in cells))
