"""Hungarian matching (MATCH) and alignment of a fine-tuned model to its base.

MATCH(W₁, W₂): C_ij = cos(row i of W₁, row j of W₂) in float32; π maximises Σ C_iπ(i).
If the row-wise argmax is already a permutation it is the exact optimum and the solver is
skipped; otherwise the negated float64 matrix is minimised with
``scipy.optimize.linear_sum_assignment`` (``maximize=True`` would copy the matrix).  The solver
releases the GIL, so layers are solved in parallel threads, bounded by cores and a memory budget.

Memory per matched layer (n × m): the float32 cosine matrix is written into the first half of a
float64 buffer and, only when the solver is needed, widened in place into the negated float64
cost matrix, so one layer never holds more than 8nm bytes (no normalised copies of the inputs,
no separate float32 and float64 matrices).
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from .arch import require_same_layout
from .cosine import _cosine_in_cost_buffer, _negate_widen, cosine_matrix, expert_similarity  # noqa: F401 (re-exported)
from .cosine import screened_argmax
from .machine import available_bytes, cores
from .models import WeightSource
from .transforms import Permuted


def argmax_shortcut(C: torch.Tensor) -> np.ndarray | None:
    """The row-wise argmax when it is already an injective assignment (then it is optimal)."""
    if C.shape[0] > C.shape[1] or C.shape[0] == 0:
        return None
    am = C.argmax(dim=1)
    if torch.unique(am).numel() == am.numel():
        return am.numpy().astype(np.int64)
    return None


def negated_cost(C: torch.Tensor) -> np.ndarray:
    """``-C`` as a float64 array, negated in place (one copy: the dtype conversion)."""
    cost = C.numpy().astype(np.float64)
    np.negative(cost, out=cost)
    return cost


def solve(cost: np.ndarray) -> np.ndarray:
    """Minimise ``cost``; returns the column assigned to each row (rows of the smaller side)."""
    rows, cols = linear_sum_assignment(cost)
    if cost.shape[0] <= cost.shape[1]:
        return cols.astype(np.int64)
    out = np.full(cost.shape[1], -1, dtype=np.int64)
    out[cols] = rows
    return out



def linear_sum_assignment(cost):
    """scipy's assignment solver, imported on first use: importing ``scipy.optimize`` costs about
    0.4 s, which a fine-tune-like pair (every block solved by the argmax shortcut) never needs."""
    from scipy.optimize import linear_sum_assignment as solve
    return solve(cost)

@dataclass
class MatchResult:
    """The matched pairs of one MATCH: row ``rows[k]`` of W₁ is matched to row ``cols[k]`` of W₂
    (indices into the original, unfiltered matrices) with cosine ``cos[k]`` (|cos| for an absolute
    matching).  ``rows`` is ascending.  Every kept row of the side with fewer kept rows has a pair
    (W₁'s on a tie).  ``shape`` holds the row counts of W₁ and W₂ as given; ``dropped1`` and
    ``dropped2`` count their rows left out of the matching: degenerate rows (zero norm or a
    non-finite value) and exact copies of an earlier kept row (up to sign for an absolute matching),
    which would tie with it in every cosine."""

    rows: np.ndarray
    cols: np.ndarray
    cos: np.ndarray
    shape: tuple[int, int] = (0, 0)
    dropped1: int = 0
    dropped2: int = 0

    @property
    def n_pairs(self) -> int:
        return int(self.rows.shape[0])

    @property
    def kept(self) -> tuple[int, int]:
        return self.shape[0] - self.dropped1, self.shape[1] - self.dropped2


def degenerate_rows(W: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the rows of ``W`` that have no cosine: zero norm or any non-finite value."""
    return _degenerate_and_norms(W)[0]


def _degenerate_and_norms(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`degenerate_rows` of ``W`` and the row norms of ``W`` in float32 it is judged by."""
    W = W.to(torch.float32)
    norms = W.norm(dim=1)
    bad = ~torch.isfinite(norms)  # a NaN or inf makes the norm non-finite; an overflow may too
    if bool(bad.any()):
        bad = ~torch.isfinite(W).all(dim=1)
    return bad | (norms == 0), norms


def _row_hashes(W: torch.Tensor, absolute: bool, chunk_values: int = 1 << 22) -> np.ndarray:
    """A 64-bit hash of each row's float32 values (exact integer arithmetic, so equal rows hash
    equally whatever the order of summation); -0.0 hashes as 0.0, and with ``absolute`` the sign
    of every value is ignored."""
    n, d = W.shape
    mult = np.random.default_rng(0x7D1E).integers(1, 1 << 62, size=d, dtype=np.uint64) | np.uint64(1)
    out = np.empty(n, dtype=np.uint64)
    step = max(1, chunk_values // max(d, 1))
    for a in range(0, n, step):
        bits = (W[a:a + step].to(torch.float32) + 0.0).cpu().numpy().view(np.uint32)
        if absolute:
            bits = bits & np.uint32(0x7FFFFFFF)
        with np.errstate(over="ignore"):
            out[a:a + step] = (bits.astype(np.uint64) * mult).sum(axis=1, dtype=np.uint64)
    return out


#: columns hashed first (evenly spaced): rows that differ there cannot be copies, so only the few
#: rows that agree on them are hashed whole and compared
PROBE_COLUMNS = 64


def _repeated(hashes: np.ndarray) -> np.ndarray:
    """Positions (ascending) of the entries whose hash occurs more than once."""
    order = np.argsort(hashes, kind="stable")
    same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
    return np.sort(order[np.unique(np.concatenate([same, same + 1]))])


def duplicate_rows(W: torch.Tensor, absolute: bool = False, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the rows of ``W`` that are exact copies of an earlier row (up to sign when
    ``absolute``), among the rows where ``keep`` is True (all by default).

    A copy ties with its original in every cosine; a solver breaks such ties in index order, which
    makes a rank correlation of its own.  The first row of each group of copies is not marked.
    Cost: a hash of :data:`PROBE_COLUMNS` columns of every row; whole rows only for the rows that
    agree there."""
    n, d = int(W.shape[0]), int(W.shape[1])
    out = torch.zeros(n, dtype=torch.bool)
    idx = np.arange(n) if keep is None else keep.cpu().numpy().nonzero()[0]
    if idx.size < 2:
        return out
    probe = torch.from_numpy(np.unique(np.linspace(0, d - 1, min(d, PROBE_COLUMNS)).astype(np.int64)))
    idx = idx[_repeated(_row_hashes(W[:, probe], absolute)[idx])]
    if idx.size == 0:
        return out
    hashes = _row_hashes(W[torch.from_numpy(idx)], absolute)
    reps: dict = {}  # hash -> the distinct rows seen with it, in ascending order
    for k in _repeated(hashes):
        row = int(idx[k])
        seen = reps.setdefault(int(hashes[k]), [])
        if any(_copies(W[row], W[r], absolute) for r in seen):
            out[row] = True
        else:
            seen.append(row)
    return out


def kept_units(G: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Units (rows of the gate and up activations ``G``, ``U`` [units × tokens]) that both the gate
    matching and the |cos| up matching keep: rows with a cosine in both, and no exact copy of an
    earlier kept unit's gate row or (up to sign) up row — so the two matchings see the same units."""
    keep = ~(degenerate_rows(G) | degenerate_rows(U))
    keep &= ~duplicate_rows(G, keep=keep)
    keep &= ~duplicate_rows(U, absolute=True, keep=keep)
    return keep


def _copies(a: torch.Tensor, b: torch.Tensor, absolute: bool) -> bool:
    return bool(torch.equal(a, b)) or (absolute and bool(torch.equal(a, -b)))


def _keep(W: torch.Tensor, also: torch.Tensor | None, absolute: bool = False):
    """(kept row indices or None when all are kept, the kept rows, number dropped): degenerate rows,
    rows where the mask ``also`` is False, and exact copies of an earlier kept row are dropped.
    Two matchings of the same units (``match``'s gate and |up|) get one mask that already leaves
    their copies out (:func:`kept_units`), so both keep the same rows.  A fourth value: the row
    norms of ``W`` in float32 when every row is kept (the cosine matrix needs them too), else None."""
    bad, norms = _degenerate_and_norms(W)
    keep = ~bad
    if also is not None:
        keep &= also.to(device=keep.device, dtype=torch.bool)
    keep &= ~duplicate_rows(W, absolute, keep).to(keep.device)
    if bool(keep.all()):
        return None, W, 0, norms
    idx = keep.nonzero().squeeze(1)
    return idx.cpu().numpy().astype(np.int64), W[idx], int(W.shape[0] - idx.numel()), None


def _prepare(W1: torch.Tensor, W2: torch.Tensor, drop: bool, keep1=None, keep2=None, absolute: bool = False):
    """(pairs, C, buf, index): the matched pairs of the kept rows when the bf16 screen settles them
    (:func:`_screened_pairs`; C and buf are then None), else the cosine matrix of the kept rows in
    its cost buffer (all three None when a side has no row left); and how kept rows map back to
    the original ones (None without ``drop``)."""
    if not drop:
        pairs = _screened_pairs(W1, W2, (None, None), absolute)
        return (pairs, None, None, None) if pairs is not None else (None, *_cosine_in_cost_buffer(W1, W2), None)
    shape = (int(W1.shape[0]), int(W2.shape[0]))
    k1, W1, d1, n1 = _keep(W1, keep1, absolute)
    k2, W2, d2, n2 = _keep(W2, keep2, absolute)
    index = (k1, k2, shape, d1, d2)
    if W1.shape[0] == 0 or W2.shape[0] == 0:
        return None, None, None, index
    pairs = _screened_pairs(W1, W2, (n1, n2), absolute)
    if pairs is not None:
        return pairs, None, None, index
    return (None, *_cosine_in_cost_buffer(W1, W2, norms=(n1, n2)), index)


def _screened_pairs(W1: torch.Tensor, W2: torch.Tensor, norms: tuple, absolute: bool) -> MatchResult | None:
    """The matched pairs :func:`_shortcut_pairs` would find in the float32 cosine matrix, found by
    :func:`tracing.cosine.screened_argmax` without that matrix; None when the screen does not
    settle them (the float32 matrix is then computed and matched as usual)."""
    shape = (int(W1.shape[0]), int(W2.shape[0]))
    if shape[0] <= shape[1]:
        got = screened_argmax(W1, W2, norms, absolute)
        if got is None:
            return None
        cols, cos = got
        return MatchResult(np.arange(shape[0], dtype=np.int64), cols.astype(np.int64), cos, shape)
    got = screened_argmax(W2, W1, norms[::-1], absolute)  # column-wise: each row of W₂ its row of W₁
    if got is None:
        return None
    am, cos = got
    order = np.argsort(am)
    return MatchResult(am[order].astype(np.int64), order.astype(np.int64), cos[order], shape)


def _shortcut_pairs(C: torch.Tensor) -> MatchResult | None:
    """The optimum without the solver when the argmax along the longer side is injective:
    row-wise when W₁ has at most as many rows as W₂, else column-wise."""
    if C.shape[0] <= C.shape[1]:
        cols = argmax_shortcut(C)
        if cols is None:
            return None
        rows = np.arange(C.shape[0], dtype=np.int64)
    else:
        am = argmax_shortcut(C.T)
        if am is None:
            return None
        order = np.argsort(am)
        rows, cols = am[order], order.astype(np.int64)
    cos = C[torch.from_numpy(rows), torch.from_numpy(cols)].numpy().astype(np.float64)
    return MatchResult(rows, cols, cos, tuple(C.shape))


def _solve_pairs(cost: np.ndarray) -> MatchResult:
    """Minimise the negated cosine matrix ``cost``; the matched cosines are read back from it."""
    rows, cols = linear_sum_assignment(cost)
    return MatchResult(rows.astype(np.int64), cols.astype(np.int64), -cost[rows, cols], cost.shape)


def _to_original(res: MatchResult, index) -> MatchResult:
    """Map a matching of the kept rows back to the original row indices."""
    if index is None:
        return res
    kept1, kept2, shape, d1, d2 = index
    if res.n_pairs == 0:
        return MatchResult(res.rows, res.cols, res.cos, shape, d1, d2)
    rows = res.rows if kept1 is None else kept1[res.rows]
    cols = res.cols if kept2 is None else kept2[res.cols]
    return MatchResult(rows, cols, res.cos, shape, d1, d2)


def match(W1: torch.Tensor, W2: torch.Tensor, absolute: bool = False) -> np.ndarray:
    """MATCH(W₁, W₂): for each row i of W₁ the row π(i) of W₂ (|cos| when ``absolute``)."""
    if W1.shape[0] <= W2.shape[0]:
        screened = screened_argmax(W1, W2, absolute=absolute)
        if screened is not None:
            return screened[0].astype(np.int64)
    C, buf = _cosine_in_cost_buffer(W1, W2)
    if absolute:
        C.abs_()
    fast = argmax_shortcut(C)
    del C
    return fast if fast is not None else solve(_negate_widen(buf))


def match_pairs(W1: torch.Tensor, W2: torch.Tensor, absolute: bool = False) -> MatchResult:
    """MATCH(W₁, W₂) as matched pairs with their cosines (|cos| when ``absolute``).

    Degenerate rows (zero norm or a non-finite value) and exact copies of an earlier row (up to
    sign when ``absolute``) of either side are dropped first; the
    remaining rows are matched by a rectangular assignment when their counts differ (every row of
    the side with fewer rows gets a partner)."""
    m = Matcher(workers=1)
    try:
        m.submit(0, W1, W2, absolute)
        return m.results()[0]
    finally:
        m.close()


def _solve_owned(box: list) -> MatchResult:
    """Matched pairs of the cost matrix handed over in ``box``; the matrix is freed before
    returning, i.e. before the future completes and its memory slot is released."""
    cost = box.pop()
    return _solve_pairs(cost)


def default_workers(cost_bytes: int, mem_budget_bytes: int | None = None) -> int:
    """Parallel solves allowed by the cores and the memory budget (default: half of free RAM)."""
    budget = mem_budget_bytes if mem_budget_bytes is not None else available_bytes() // 2
    return max(1, min(cores(), budget // max(cost_bytes, 1)))


class Matcher:
    """MATCH many layers with bounded parallelism: ``submit(key, W1, W2)``, then ``results()``
    (``{key: MatchResult}``).

    Cosine products run one at a time in the calling thread (torch uses every core for them);
    assignment solves run in a thread pool with at most ``workers`` cost matrices in flight
    (default: the cores, capped by the memory budget).
    """

    def __init__(self, workers: int | None = None, mem_budget_bytes: int | None = None,
                 total: int | None = None, desc: str | None = None):
        self.workers, self.mem_budget_bytes = workers, mem_budget_bytes
        self._pool: ThreadPoolExecutor | None = None
        self._slots: threading.Semaphore | None = None
        self._done: dict = {}
        self._futures: dict = {}
        self._index: dict = {}  # key -> how kept rows map back to the original rows
        self._bar = tqdm(total=total, desc=desc, disable=desc is None, leave=False)

    def submit(self, key, W1: torch.Tensor, W2: torch.Tensor, absolute: bool = False, drop: bool = True,
               keep1: torch.Tensor | None = None, keep2: torch.Tensor | None = None) -> None:
        """Queue MATCH(W1, W2) under ``key``.  With ``drop`` (default) degenerate rows and exact
        copies of an earlier kept row (see :func:`duplicate_rows`) are left out, and so are rows
        where the optional boolean masks ``keep1`` / ``keep2`` are False (for two matchings of the
        same units, build the masks with :func:`kept_units`)."""
        self._submit(key, *_prepare(W1, W2, drop, keep1, keep2, absolute), absolute)

    def _submit(self, key, pairs: MatchResult | None, C: torch.Tensor | None, buf: np.ndarray | None, index,
                absolute: bool = False) -> None:
        if index is not None:
            self._index[key] = index
        if pairs is not None:  # settled by the bf16 screen
            self._done[key] = pairs
            self._bar.update()
            return
        if C is None:  # a side has no row left
            empty = np.zeros(0, dtype=np.int64)
            self._done[key] = MatchResult(empty, empty, np.zeros(0), (0, 0))
            self._bar.update()
            return
        if absolute:
            C.abs_()
        fast = _shortcut_pairs(C)
        if fast is not None:
            self._done[key] = fast
            self._bar.update()
            return
        del C
        if self._pool is None:
            n = self.workers or default_workers(buf.size * 8 * 2, self.mem_budget_bytes)
            self._pool, self._slots = ThreadPoolExecutor(max_workers=n), threading.Semaphore(n)
        # wait for a free slot *before* the float64 cost matrix is materialised: at most
        # ``workers`` cost matrices exist, plus the float32 one being prepared
        self._slots.acquire()
        try:
            box = [_negate_widen(buf)]
            del buf
            fut: Future = self._pool.submit(_solve_owned, box)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _f: (self._slots.release(), self._bar.update()))
        self._futures[key] = fut

    def results(self) -> dict:
        try:
            for key, fut in self._futures.items():
                self._done[key] = fut.result()
        finally:
            self.close()
        return {k: _to_original(r, self._index.get(k)) for k, r in self._done.items()}

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._bar.close()


def match_layers(layers: Iterable, load: Callable, absolute: bool = False, workers: int | None = None,
                 mem_budget_bytes: int | None = None, desc: str | None = None, pairs: bool = False) -> dict:
    """MATCH for many layers: ``load(key) -> (W1, W2)``; returns ``{key: π}`` in ``layers`` order
    (every row matched, as :func:`match`), or with ``pairs=True`` ``{key: MatchResult}`` with
    degenerate rows dropped (see :class:`Matcher`). ``load`` of the next key runs in a background
    thread while a key is matched (:func:`tracing.prefetch.ahead`), one key at a time, in order."""
    from .prefetch import ahead
    layers = list(layers)
    m = Matcher(workers, mem_budget_bytes, total=len(layers), desc=desc)
    reads = ahead(layers, load)
    try:
        # the next layer is read while this one's cosine matrix is computed; the loaded tensors
        # live only while their cosine matrix is computed, not while waiting for a solver slot
        for key, loaded in reads:
            prepared = _prepare(*loaded, pairs, absolute=absolute)
            del loaded
            m._submit(key, *prepared, absolute)
            del prepared
        out = m.results()
    finally:
        reads.close()  # a read ahead in flight ends before the error leaves
        m.close()
    if pairs:
        return {k: out[k] for k in layers}
    return {k: _assignment(out[k]) for k in layers}


def _assignment(res: MatchResult) -> np.ndarray:
    """π as :func:`match` returns it: for each row of W₁ (or of W₂ when W₂ has fewer rows) its partner."""
    if res.shape[0] <= res.shape[1]:
        return res.cols
    out = np.full(res.cols.shape[0], -1, dtype=np.int64)
    out[res.cols] = res.rows
    return out


@dataclass
class Alignment:
    pi_e: np.ndarray
    pi_i: dict[int, np.ndarray]
    pi_x: dict[int, np.ndarray] | None = None  # per MoE block, θ₂'s expert in each of θ₁'s expert slots

    def apply(self, ft: WeightSource) -> Permuted:
        return Permuted(ft, torch.from_numpy(self.pi_e), {i: torch.from_numpy(p) for i, p in self.pi_i.items()},
                        {i: torch.from_numpy(p) for i, p in (self.pi_x or {}).items()})


def shared_embeddings(base: WeightSource, ft: WeightSource, vocab=None, columns=None):
    """The two embeddings' rows of the tokens both models have: the first min(V₁, V₂) ids, or with a
    :class:`~tracing.vocab.VocabMap` the rows of the tokens mapped by string. ``columns``: only
    those residual dimensions (the same in both)."""
    def rows(src, ids):
        E = src.get(src.arch.embed) if columns is None else src.get_columns(src.arch.embed, columns)
        return E[:ids] if isinstance(ids, int) else E[torch.from_numpy(ids)]
    if vocab is None or vocab.by_id:
        n = min(base.arch.V, ft.arch.V)
        return rows(base, n), rows(ft, n)
    return rows(base, vocab.base_ids), rows(ft, vocab.ft_ids)


def residual_alignment(base: WeightSource, ft: WeightSource, vocab=None) -> np.ndarray:
    """π_e: MATCH the columns of the two embeddings over the shared vocabulary (step 1 of :func:`align`)."""
    E1, E2 = shared_embeddings(base, ft, vocab)
    return match(E1.T, E2.T)


def align(base: WeightSource, ft: WeightSource, progress: bool = True, vocab=None) -> Alignment:
    """Undo an unknown residual and MLP permutation of ``ft``.

    1. residual: MATCH the columns of the two embeddings over the shared vocabulary (by token
       string when ``vocab``, a :class:`~tracing.vocab.VocabMap`, is given);
    2. per mixture-of-experts block, the order of θ₂'s routed experts: Hungarian assignment on the
       mean best cosine of their gate rows (as the experts grid pairs experts, on gate rows);
    3. per MLP (each block's, or each expert's with its partner): MATCH the rows of ``gate_proj``
       only (never ``up_proj``: ``cos`` reads it); a non-gated MLP is matched on the columns of its
       down projection instead.
    """
    require_same_layout(base.arch, ft.arch, "alignment")
    pi_e = residual_alignment(base, ft, vocab)
    residual = Permuted(ft, torch.from_numpy(pi_e))
    units = {u.key: u for i in range(base.arch.L) for u in base.arch.units(i)}

    def rows(src, u):
        return src.get(u.gate) if u.gate is not None else src.get(u.down).T

    pi_x = {i: _expert_order(base.arch.units(i), lambda u: rows(base, u), lambda u: rows(residual, u))
            for i in range(base.arch.L) if base.arch.is_moe_block(i)}
    residual = Permuted(ft, torch.from_numpy(pi_e), pi_x={i: torch.from_numpy(p) for i, p in pi_x.items()})
    pi_i = match_layers(list(units), lambda key: (rows(base, units[key]), rows(residual, units[key])),
                        desc="align MLP" if progress else None)
    return Alignment(pi_e=pi_e, pi_i=pi_i, pi_x=pi_x)


def _expert_order(units, rows_a, rows_b) -> np.ndarray:
    """θ₂'s expert for each of θ₁'s routed experts: the assignment maximising the summed mean best
    cosine of their rows (``rows_a(unit)``, ``rows_b(unit)``)."""
    routed = [u for u in units if u.expert not in (None, "shared")]
    A, B = [rows_a(u) for u in routed], [rows_b(u) for u in routed]
    S = np.array([[expert_similarity(a, b) for b in B] for a in A])
    return linear_sum_assignment(-S)[1].astype(np.int64)
