"""The rounding-cell check of GGUF K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).

A K-quant super-block of 256 values holds float16 super-scales and, per sub-block of 16 or 32
values, an integer scale (and minimum); value = step · c + offset with c the stored code in
0..2^bits − 1, step = super-scale × sub-block scale and offset = −super-min × sub-block min (or
−2^(bits−1) · step for the symmetric Q3_K and Q6_K). The scales come from a search, but llama.cpp
derives the final codes from them by nearest rounding: c = round((x − offset) / step), clamped. So
the check is the same cell check as for Q8_0, under the file's own per-element step and offset:

- ``equal``: the fraction of codes equal to round-to-nearest of the source;
- ``in_cell``: the fraction whose source value lies in the code's rounding cell, |u − c| ≤ ½ + tol
  with u = (x − offset) / step (a clamped code's cell is open on its outer side), tol = 2^-18 ·
  (|u| + |offset / step|) + 2^-18 code units for the float32 arithmetic of the quantizer;
- the fraction within one quantization step (|u − c| ≤ 1 + tol), stated in the note, which tells
  an alteration larger than a step from a quantizer that does not re-derive its codes.

A sub-block whose scale is 0 has no codes to check (every value dequantizes to its offset); it is
counted in its cell and the count is stated. Step and offset are read with gguf-py's own
dequantizer: the blocks with every code set to 0 and to 1, the scales untouched.
"""
from __future__ import annotations

import numpy as np

#: type -> (code bits, byte ranges of the low code bits and their "every code = 1" byte, byte
#: ranges of the high code bits) within one block, as gguf-py lays the blocks out
LAYOUT = {
    "Q2_K": (2, [(16, 80, 0x55)], []),
    "Q3_K": (3, [(32, 96, 0x55)], [(0, 32)]),
    "Q4_K": (4, [(16, 144, 0x11)], []),
    "Q5_K": (5, [(48, 176, 0x11)], [(16, 48)]),
    "Q6_K": (6, [(0, 128, 0x11)], [(128, 192)]),
}
TOL = 2.0 ** -18


def _with_codes(blocks: np.ndarray, qtype: str, one: bool) -> np.ndarray:
    out = blocks.copy()
    _, low, high = LAYOUT[qtype]
    for a, b, pattern in low:
        out[:, a:b] = pattern if one else 0
    for a, b in high:
        out[:, a:b] = 0
    return out


def kquant_planes(raw: np.ndarray, ggml_type) -> list[np.ndarray]:
    """Dequantized values, per-element offset and step of a stored K-quant tensor."""
    import gguf
    name = gguf.GGMLQuantizationType(ggml_type).name
    _, size = gguf.GGML_QUANT_SIZES[ggml_type]
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, size)
    deq = gguf.dequantize(blocks, ggml_type).astype(np.float64).ravel()
    v0 = gguf.dequantize(_with_codes(blocks, name, False), ggml_type).astype(np.float64).ravel()
    v1 = gguf.dequantize(_with_codes(blocks, name, True), ggml_type).astype(np.float64).ravel()
    return [deq, v0, v1 - v0]


def kquant_check(x, deq, offset, step, bits: int) -> tuple[float, float, float, int]:
    """``(equal, in_cell, within one step, sub-block values without codes)`` of one tensor."""
    x, deq, offset, step = (np.asarray(a, np.float64).ravel() for a in (x, deq, offset, step))
    top = (1 << bits) - 1
    none = step == 0
    s = np.where(none, 1.0, step)
    c, u = np.rint((deq - offset) / s), (x - offset) / s
    tol = TOL * (np.abs(u) + np.abs(offset / s)) + TOL

    def within(width):
        return none | (np.abs(u - c) <= width + tol) | ((c == top) & (u >= top - width - tol)) | \
            ((c == 0) & (u <= width + tol))
    equal = none | (c == np.clip(np.floor(u + 0.5), 0, top))
    return float(equal.mean()), float(within(0.5).mean()), float(within(1.0).mean()), int(none.sum())
