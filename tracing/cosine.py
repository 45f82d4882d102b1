"""Cosine matrices between the rows of two weight matrices, in float32, written without normalised
copies of the inputs; the cost buffer the assignment solver widens in place (see :mod:`tracing.align`);
and the expert-level similarity that pairs the experts of two mixtures of experts.

On the device in force (:func:`tracing.machine.compute_device`, set by ``--device``); results on the CPU.
"""
from __future__ import annotations

import numpy as np
import torch

from .machine import compute_device


def _inverse_row_norms(X: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """1 / the row norms of ``X`` (float32); ``norms``: ``X.norm(dim=1)`` when already computed on
    the CPU (used when ``X`` is on the CPU too: the same values, not computed again)."""
    if norms is None or norms.device != X.device:
        norms = X.norm(dim=1)
    return norms.clamp_min(1e-30).reciprocal_()


def _cosine_into(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor, device: str | None = None,
                 norms: tuple = (None, None)) -> torch.Tensor:
    """``out[i, j] = cos(A[i], B[j])`` in float32, written into the CPU tensor ``out``.

    The product of the raw rows is scaled afterwards by the inverse row norms (in place), so no
    normalised copy of ``A`` or ``B`` is made: only the output matrix is allocated. ``norms``: the
    row norms of ``A`` and of ``B`` in float32 when the caller has them (None: computed here).
    """
    device = device or compute_device()
    A = A.to(device=device, dtype=torch.float32)
    B = B.to(device=device, dtype=torch.float32)
    ra, rb = _inverse_row_norms(A, norms[0]), _inverse_row_norms(B, norms[1])
    if out.device == A.device:
        C = torch.matmul(A, B.T, out=out)
    else:  # e.g. on a GPU: compute there, copy once into ``out``
        C = A @ B.T
    C.mul_(ra[:, None])
    C.mul_(rb[None, :])
    if C is not out:
        out.copy_(C)
    return out


def cosine_matrix(A: torch.Tensor, B: torch.Tensor, device: str | None = None) -> torch.Tensor:
    """Row-wise cosine similarities (float32, on CPU): ``C[i, j] = cos(A[i], B[j])``."""
    return _cosine_into(A, B, torch.empty(A.shape[0], B.shape[0], dtype=torch.float32), device)


#: rows of θ₁'s expert used for the expert-level similarity (evenly spaced; all when fewer)
SIMILARITY_ROWS = 256


def expert_similarity(A: torch.Tensor, B: torch.Tensor, absolute: bool = False, rows: int = SIMILARITY_ROWS) -> float:
    """Mean over (a subset of) A's rows of the best cosine (|cosine|) with any row of B."""
    if A.shape[0] > rows:
        A = A[torch.linspace(0, A.shape[0] - 1, rows).round().long()]
    C = cosine_matrix(A, B)
    return float((C.abs_() if absolute else C).max(dim=1).values.mean())


def _cosine_in_cost_buffer(A: torch.Tensor, B: torch.Tensor, device: str | None = None, norms: tuple = (None, None)):
    """The cosine matrix C (float32) stored in the first half of a float64 buffer of its shape,
    so that the solver's cost matrix can later be made from it in place (see :func:`_negate_widen`).
    Pages of the buffer's second half are never touched unless the solver is needed."""
    n, m = A.shape[0], B.shape[0]
    # torch's allocator aligns to 64 bytes (numpy's to 16): the matrix product writes ~20% faster
    storage = torch.empty(n * m, dtype=torch.float64)
    C = storage.view(torch.float32)[: n * m].view(n, m)
    _cosine_into(A, B, C, device, norms)
    return C, storage.numpy().reshape(n, m)


def _negate_widen(buf: np.ndarray, chunk_bytes: int = 32 << 20) -> np.ndarray:
    """Turn the float32 matrix held in the first half of ``buf`` (see :func:`_cosine_in_cost_buffer`)
    into ``-C`` in float64 over the whole of ``buf``, in place: no second n×m matrix exists.

    Row blocks are widened from the last to the first; float64 rows [a, b) overwrite float32 rows
    [2a, 2b), which lie at or after row a and so were already read (rows [a, b) are copied first).
    """
    n, m = buf.shape
    f32 = buf.reshape(-1).view(np.float32)[: n * m].reshape(n, m)
    step = max(1, chunk_bytes // (4 * max(m, 1)))
    end = n
    while end > 0:
        start = max(0, end - step)
        block = f32[start:end].copy()
        np.negative(block, out=buf[start:end])
        end = start
    return buf
