"""Hungarian matching (MATCH) and alignment of a fine-tuned model to its base.

MATCH(W₁, W₂): C_ij = cos(row i of W₁, row j of W₂) in float32; π maximises Σ C_iπ(i).
If the row-wise argmax is already a permutation it is the exact optimum and the solver is
skipped; otherwise the negated float64 matrix is minimised with
``scipy.optimize.linear_sum_assignment`` (``maximize=True`` would copy the matrix).  The solver
releases the GIL, so layers are solved in parallel threads, bounded by cores and a memory budget.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from .arch import EMBED, require_same_blocks
from .models import WeightSource
from .transforms import Permuted


def compute_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cosine_matrix(A: torch.Tensor, B: torch.Tensor, device: str | None = None) -> torch.Tensor:
    """Row-wise cosine similarities (float32, on CPU): ``C[i, j] = cos(A[i], B[j])``."""
    device = device or compute_device()
    A = A.to(device=device, dtype=torch.float32)
    B = B.to(device=device, dtype=torch.float32)
    A = A / A.norm(dim=1, keepdim=True).clamp_min(1e-30)
    B = B / B.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return (A @ B.T).cpu()


def argmax_shortcut(C: torch.Tensor) -> np.ndarray | None:
    """The row-wise argmax when it is already an injective assignment (then it is optimal)."""
    if C.shape[0] > C.shape[1]:
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


def match(W1: torch.Tensor, W2: torch.Tensor, absolute: bool = False) -> np.ndarray:
    """MATCH(W₁, W₂): for each row i of W₁ the row π(i) of W₂ (|cos| when ``absolute``)."""
    C = cosine_matrix(W1, W2)
    if absolute:
        C.abs_()
    fast = argmax_shortcut(C)
    return fast if fast is not None else solve(negated_cost(C))


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def default_workers(cost_bytes: int, mem_budget_bytes: int | None = None) -> int:
    """Parallel solves allowed by the cores and the memory budget (default: half of free RAM)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    budget = mem_budget_bytes if mem_budget_bytes is not None else _available_bytes() // 2
    return max(1, min(cores, budget // max(cost_bytes, 1)))


class Matcher:
    """MATCH many layers with bounded parallelism: ``submit(key, W1, W2)``, then ``results()``.

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
        self._bar = tqdm(total=total, desc=desc, disable=desc is None, leave=False)

    def submit(self, key, W1: torch.Tensor, W2: torch.Tensor, absolute: bool = False) -> None:
        C = cosine_matrix(W1, W2)
        if absolute:
            C.abs_()
        fast = argmax_shortcut(C)
        if fast is not None:
            self._done[key] = fast
            self._bar.update()
            return
        if self._pool is None:
            n = self.workers or default_workers(C.numel() * 8 * 2, self.mem_budget_bytes)
            self._pool, self._slots = ThreadPoolExecutor(max_workers=n), threading.Semaphore(n)
        cost = negated_cost(C)
        del C
        self._slots.acquire()
        fut: Future = self._pool.submit(solve, cost)
        fut.add_done_callback(lambda _f: (self._slots.release(), self._bar.update()))
        self._futures[key] = fut

    def results(self) -> dict:
        try:
            for key, fut in self._futures.items():
                self._done[key] = fut.result()
        finally:
            self.close()
        return self._done

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._bar.close()


def match_layers(layers: Iterable, load: Callable, absolute: bool = False, workers: int | None = None,
                 mem_budget_bytes: int | None = None, desc: str | None = None) -> dict:
    """MATCH for many layers: ``load(key) -> (W1, W2)``; returns ``{key: π}`` in ``layers`` order."""
    layers = list(layers)
    m = Matcher(workers, mem_budget_bytes, total=len(layers), desc=desc)
    try:
        for key in layers:
            W1, W2 = load(key)
            m.submit(key, W1, W2, absolute)
            del W1, W2
        out = m.results()
    finally:
        m.close()
    return {k: out[k] for k in layers}


@dataclass
class Alignment:
    pi_e: np.ndarray
    pi_i: dict[int, np.ndarray]

    def apply(self, ft: WeightSource) -> Permuted:
        return Permuted(ft, torch.from_numpy(self.pi_e), {i: torch.from_numpy(p) for i, p in self.pi_i.items()})


def align(base: WeightSource, ft: WeightSource, progress: bool = True) -> Alignment:
    """Undo an unknown residual and MLP permutation of ``ft`` (DESIGN §4).

    1. residual: MATCH the columns of the two embeddings over the shared vocabulary;
    2. per block: MATCH the rows of ``gate_proj`` only (never ``up_proj``: ``cos`` reads it).
    """
    require_same_blocks(base.arch, ft.arch, "alignment")
    n = min(base.arch.V, ft.arch.V)
    E1 = base.get(EMBED)[:n]
    E2 = ft.get(EMBED)[:n]
    pi_e = match(E1.T, E2.T)
    del E1, E2
    residual = Permuted(ft, torch.from_numpy(pi_e))

    def load(i):
        name = base.arch.block_name(i, "gate")
        return base.get(name), residual.get(name)

    pi_i = match_layers(range(base.arch.L), load, desc="align MLP" if progress else None)
    return Alignment(pi_e=pi_e, pi_i=pi_i)
