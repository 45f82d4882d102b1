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


# ------------------------------------------------------------------------------------------
# the bf16 screen: the row-wise argmax of a cosine matrix from a product twice as fast
# ------------------------------------------------------------------------------------------
#: unit roundoff of bfloat16 (8 significant bits)
BF16_U = 2.0 ** -8
#: multiply-adds (n·m·d) below which the screen is not tried: the float32 product is then cheap
SCREEN_MIN_WORK = 1 << 26
#: rows of the first side screened first; when any of them is undecided, or two of them share a
#: best column, the screen stops there and the float32 product is computed as without it
SCREEN_PROBE = 64
#: rows whose norm lies outside [2⁻⁴⁰, 2⁴⁰] are not screened (no product may underflow or overflow)
SCREEN_NORMS = (2.0 ** -40, 2.0 ** 40)


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX): the screen's product
    then costs about 0.4× the float32 one."""
    import torch.cpu as tc
    probes = (getattr(tc, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(bool(probe()) for probe in probes if probe is not None)  # a torch without them: no


def screen_margin(d: int, exact_inputs: int = 2) -> float:
    """The gap between a row's best and second-best cosine in the bf16 product beyond which its
    best column is certainly the exact argmax (and the float32 product's).

    A cosine from the bf16 product (inputs rounded to bf16 unless already bf16, products summed in
    float32, the output rounded to bf16, then scaled by float32 inverse norms) is within
    ``e = u·|c| + r·(2u + u²) + d·2⁻²⁴ (+ float32 scaling)`` of the exact cosine, u = 2⁻⁸, r the
    number of inputs that were rounded (Cauchy-Schwarz bounds Σ|aₖbₖ| by |a||b|, i.e. 1 in cosine
    units, and |c| ≤ 1). Two entries can move by e each in opposite directions, and the float32
    product's own error (≤ d·2⁻²⁴) must not reorder them either: the margin is 4e with |c| = 1,
    twice what is needed."""
    rounded = 2 - exact_inputs
    e = BF16_U + rounded * (2 * BF16_U + BF16_U ** 2) + (d + 4) * 2.0 ** -24
    return 4.0 * e


def screened_argmax(A: torch.Tensor, B: torch.Tensor, norms: tuple = (None, None), absolute: bool = False):
    """``(cols, cos)``: for every row i of ``A`` (n ≤ m rows of ``B``) its best column ``cols[i]`` by
    cosine (|cosine| when ``absolute``) and the float32 cosine of that pair, found from a bf16
    product, when every row's best column is certified (:func:`screen_margin`) and no two rows
    share one: then the row-wise argmax is the optimal assignment, the one the float32 product's
    argmax shortcut gives. None otherwise (the caller computes the float32 product as usual).

    Tried only on the CPU, on a CPU with native bf16 products (:func:`native_bf16`), for products of
    at least :data:`SCREEN_MIN_WORK` multiply-adds. ``norms``: the row norms of ``A`` and ``B`` in
    float32 when the caller has them. The matched cosines
    are computed from the float32 rows (dot products, then the same two scalings as the float32
    matrix): equal to that matrix's entries up to float32 rounding of the sums, never by a bf16
    value."""
    n, m, d = int(A.shape[0]), int(B.shape[0]), int(A.shape[1])
    if n == 0 or n > m:
        return None
    if compute_device() != "cpu" or A.device.type != "cpu" or n * m * d < SCREEN_MIN_WORK or not native_bf16():
        return None
    ra = _inverse_row_norms(A if norms[0] is not None else A.to(torch.float32), norms[0])
    rb = _inverse_row_norms(B if norms[1] is not None else B.to(torch.float32), norms[1])
    lo, hi = SCREEN_NORMS
    if not (bool((ra >= 1 / hi).all()) and bool((ra <= 1 / lo).all()) and bool((rb >= 1 / hi).all())
            and bool((rb <= 1 / lo).all())):
        return None
    exact = int(_bf16_exact(A)) + int(_bf16_exact(B))
    tau = screen_margin(d, exact)
    Ab, Bb = A.to(torch.bfloat16), B.to(torch.bfloat16)
    cols = torch.empty(n, dtype=torch.int64)
    step = max(SCREEN_PROBE, (32 << 20) // (4 * m))  # float32 rows of the screened product at a time
    start = 0
    while start < n:
        end = min(n, start + (SCREEN_PROBE if start == 0 else step))
        C = bf16_cosines(Ab[start:end], Bb, ra[start:end], rb)
        if absolute:
            C.abs_()
        if m > 1:
            top = C.topk(2, dim=1)
            if not bool((top.values[:, 0] - top.values[:, 1] > tau).all()):
                return None
            cols[start:end] = top.indices[:, 0]
        else:
            cols[start:end] = 0
        if torch.unique(cols[:end]).numel() != end:
            return None
        start = end
    cos = matched_dots(A, B, cols).mul_(ra).mul_(rb[cols])
    if absolute:
        cos.abs_()
    return cols.numpy(), cos.numpy().astype(np.float64)


def bf16_cosines(A: torch.Tensor, B: torch.Tensor, ra: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """The screen's cosines of the rows of ``A`` and ``B`` (both bfloat16) given their inverse row
    norms ``ra``, ``rb`` (float32): the bf16 product, widened and scaled in float32. Each is within
    ``screen_margin(d) / 4`` of the exact cosine (of the unrounded rows when they were rounded)."""
    return torch.matmul(A, B.T).to(torch.float32).mul_(ra[:, None]).mul_(rb[None, :])


def _bf16_exact(X: torch.Tensor) -> bool:
    """Whether every value of ``X`` is a bfloat16 (its type, or float32 values with zero low halves,
    e.g. bfloat16 weights read as float32): rounding it to bfloat16 then changes nothing."""
    if X.dtype == torch.bfloat16:
        return True
    return X.dtype == torch.float32 and X.is_contiguous() and not bool((X.view(torch.int32) & 0xFFFF).any())


def matched_dots(A: torch.Tensor, B: torch.Tensor, cols: torch.Tensor, step: int = 64) -> torch.Tensor:
    """``out[i] = A[i] · B[cols[i]]`` in float32, a few rows at a time (small temporaries: no float32
    copy of either side)."""
    out = torch.empty(A.shape[0], dtype=torch.float32)
    for r in range(0, A.shape[0], step):
        out[r:r + step] = (A[r:r + step].to(torch.float32) * B[cols[r:r + step]].to(torch.float32)).sum(dim=1)
    return out
