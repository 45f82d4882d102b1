"""Quantization faithfulness of GPTQ and AWQ folders (int codes, per-group scales and zeros).

AWQ codes are round-to-nearest of the weights *after* AWQ moved per-channel scales: out of each norm
into the columns of the layers reading it (recovered exactly from the ratio of the source's and the
file's norm gains), and between a layer's output rows and the next layer's input columns (up → down,
v → o). Such a per-row or per-column factor is unknown; a tensor is faithful when some positive
factor per row (or per column) puts every code in its rounding cell — an interval intersection per
row, exact, with the cells' stated tolerance. GPTQ codes come from error feedback, not rounding of
the source: a code may sit a step or two away, so GPTQ gets a wider stated cell (every code within
4 steps of the source, at least 90 % within one step); a change smaller than about a step (a light
fine-tune) is within that tolerance and is not seen.
"""
from __future__ import annotations

import numpy as np
import torch

from ..arch import READS_THROUGH
from .quant_cells import FLOAT_ULP, TensorCheck, cell_tolerance, float_check, rtn_check, verdict_of

#: GPTQ's stated tolerance: every code's value within this many steps of the source ...
GPTQ_MAX_STEPS = 4.0
#: ... and at least this fraction within one step of the source (measured on 4-bit GPTQ with
#: correlated inputs: 0.96-0.97 within one step, none beyond 2.5 steps)
GPTQ_MIN_NEAR = 0.9
GPTQ_TOL = 2.0 ** -11  # float16 scales, as the other cells


def _norm_factor(src, q, name: str) -> np.ndarray | None:
    """Per input column: source norm gain / stored norm gain (AWQ's migration out of the norm)."""
    ref = src.arch.ref(name)
    role = READS_THROUGH.get(ref.role)
    if role is None or ref.block is None:
        return None
    norm = src.arch.block_name(ref.block, role)
    off = src.arch.gain_offset
    g_src, g_q = (m.get(norm, torch.float64).numpy() + off for m in (src, q))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(g_q != 0, g_src / g_q, 1.0)


def scalar_feasible(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, axis: int) -> np.ndarray:
    """Per line along ``axis``: is there a > 0 with lo <= a·x <= hi for every element of the line?"""
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.where(x > 0, lo / x, np.where(x < 0, hi / x, -np.inf))
        high = np.where(x > 0, hi / x, np.where(x < 0, lo / x, np.inf))
    zero_ok = np.where(x == 0, (lo <= 0) & (hi >= 0), True).all(axis)
    a_lo, a_hi = low.max(axis), high.min(axis)
    return zero_ok & (a_lo <= a_hi) & (a_hi > 0)


def _cells(q, z, s, top: int):
    """Bounds of x·a for each code's cell (clipped codes open on their side)."""
    tol = cell_tolerance(np.abs(q - z) + 1, s)
    lo = np.where(q == 0, -np.inf, (q - z - 0.5 - tol) * s)
    hi = np.where(q == top, np.inf, (q - z + 0.5 + tol) * s)
    return lo, hi


def _check_layer(name, x, codes, method: str, bits: int, factor) -> TensorCheck:
    q, z, s = (c.double().numpy() for c in codes)
    top = (1 << bits) - 1
    xf = x * factor[None, :] if factor is not None else x
    eq, cell = rtn_check(xf, (q - z) * s, s, -z * s, 0, top)
    qtype = f"{method.upper()} int{bits}"
    if method == "gptq":
        return _gptq_check(name, qtype, x.size, eq, xf / s + z, q, top)
    note = "migration out of the norm undone" if factor is not None else ""
    if cell < 1.0:
        lo, hi = _cells(q, z, s, top)
        for axis, what in ((1, "row"), (0, "column")):
            ok = scalar_feasible(xf, lo, hi, axis)
            if ok.all():
                return TensorCheck(name, qtype, x.size, eq, 1.0, "faithful",
                                   (note + "; " if note else "") + f"a per-{what} AWQ scale puts every code in its cell")
        cell = float(max(scalar_feasible(xf, lo, hi, 1).mean(), cell))
    return TensorCheck(name, qtype, x.size, eq, cell, verdict_of(cell), note)


def steps_off(u: np.ndarray, q: np.ndarray, top: int) -> np.ndarray:
    """How many quantization steps each code lies from the source value ``u`` (in code units)
    beyond its rounding half-step; a clamped code's outer side is open."""
    off = np.abs(u - q) - 0.5
    off = np.where((q == top) & (u > top), 0.0, off)
    return np.maximum(np.where((q == 0) & (u < 0), 0.0, off), 0.0)


def _gptq_check(name, qtype, n, eq, u, q, top) -> TensorCheck:
    """GPTQ's codes are rounded after error feedback has moved the weights, so a code may sit a
    step or two from the source. Faithful: every code within :data:`GPTQ_MAX_STEPS` steps of the
    source and at least :data:`GPTQ_MIN_NEAR` of them within one step (``in_cell`` is that fraction)."""
    dist = steps_off(u, q, top) + 0.5 - GPTQ_TOL * (np.abs(u) + 1)
    near, worst = float((dist <= 1.0).mean()), float(dist.max(initial=0.0))
    ok = near >= GPTQ_MIN_NEAR and worst <= GPTQ_MAX_STEPS
    note = (f"error feedback: {near:.4f} within one step (at least {GPTQ_MIN_NEAR} required), farthest code "
            f"{worst:.2f} steps from the source (at most {GPTQ_MAX_STEPS:g} allowed)")
    return TensorCheck(name, qtype, n, eq, near, "faithful" if ok else "altered", note)


def check_packed(src, q) -> list[TensorCheck]:
    b = q.quantized
    types = b.tensor_types()
    out = []
    for name in q.arch.names():
        x = src.get(name, torch.float64).numpy()
        codes = b.codes(name)
        if codes is None:
            ref = q.arch.ref(name)
            qtype = str(types.get(ref.stores[0][0], "F32"))
            role_is_norm = ref.role in set(READS_THROUGH.values())
            if b.format == "awq" and role_is_norm:
                out.append(TensorCheck(name, qtype, x.size, None, None, "not applicable",
                                       "AWQ moves scales out of this norm; its readers' check covers it"))
                continue
            eq, cell = float_check(x, q.get(name, torch.float64).numpy(), qtype) if qtype in FLOAT_ULP else (None, None)
            out.append(TensorCheck(name, qtype, x.size, eq, cell, verdict_of(cell)))
            continue
        factor = _norm_factor(src, q, name) if b.format == "awq" else None
        out.append(_check_layer(name, x, codes, b.format, b.bits, factor))
    return out
