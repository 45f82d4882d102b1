"""The rounding-cell arithmetic every quantization-faithfulness check shares (:mod:`.quant`): the
rounding cell of a stored code under the file's own scales and its stated tolerance, float tensors
within one unit in the last place, and the verdict from the fraction of codes in their cells."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: GGUF round-to-nearest types: (lowest code, highest code, has a minimum)
GGUF_RTN = {"Q8_0": (-128, 127, False), "Q4_0": (-8, 7, False), "Q5_0": (-16, 15, False),
            "Q4_1": (0, 15, True), "Q5_1": (0, 31, True)}
FLOAT_ULP = {"F32": 2.0 ** -23, "F16": 2.0 ** -10, "BF16": 2.0 ** -7}
CAVEAT = ("This catches a quantizer that altered the weights; it cannot catch a full-precision source crafted to "
          "misbehave only after quantization.")


@dataclass
class TensorCheck:
    name: str
    qtype: str
    n: int
    equal: float | None
    in_cell: float | None
    status: str  # "faithful", "altered" or "not applicable"
    note: str = ""


def cell_tolerance(u, d, m=0.0):
    """How far (in code units) a float16-stored scale ``d`` and minimum ``m`` may move ``u`` from the
    value the quantizer rounded: twice their rounding error, 2^-11 relative, or half the float16
    subnormal spacing (2^-25) for tiny values."""
    d, m = np.abs(d), np.abs(m)
    rel_d = np.maximum(2.0 ** -11, 2.0 ** -25 / d)
    dm = np.maximum(2.0 ** -11 * m, np.where(m > 0, 2.0 ** -25, 0.0))
    return 2 * (np.abs(u) * rel_d + dm / d) + 1e-6


def rtn_check(x, deq, d, m, lo: int, hi: int) -> tuple[float, float]:
    """``(equal, in_cell)`` of codes ``(deq - m) / d`` against round-to-nearest of ``(x - m) / d``
    clipped to ``[lo, hi]``; all arrays float64 of one shape."""
    x, deq, d, m = (np.asarray(a, dtype=np.float64).ravel() for a in (x, deq, d, m))
    zero = d == 0
    ds = np.where(zero, 1.0, d)
    code, u = np.rint((deq - m) / ds), (x - m) / ds
    tol = cell_tolerance(u, ds, m)
    nearest = np.clip(np.floor(u + 0.5), lo, hi)
    cell = (np.abs(u - code) <= 0.5 + tol) | ((code == hi) & (u >= hi - 0.5 - tol)) | ((code == lo) & (u <= lo + 0.5 + tol))
    same = np.abs(x - deq) <= 2.0 ** -10 * np.abs(x) + 2.0 ** -24  # a constant block has d = 0: deq = m
    equal, cell = np.where(zero, same, code == nearest), np.where(zero, same, cell)
    return float(equal.mean()), float(cell.mean())


def float_check(x, stored, qtype: str) -> tuple[float, float]:
    """An unquantized tensor against the source cast to its type (within one unit in the last place)."""
    x, stored = np.asarray(x, np.float64).ravel(), np.asarray(stored, np.float64).ravel()
    dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[qtype]
    cast = torch.from_numpy(x).to(dt).double().numpy()
    # one unit in the last place of the stored type, plus float32 rounding of a value shifted by 1
    # on the way (GGUF stores Gemma's norm gains as 1 + w)
    ok = np.abs(stored - cast) <= FLOAT_ULP[qtype] * np.abs(x) + FLOAT_ULP["F32"] * (np.abs(x) + 1)
    return float((stored == cast).mean()), float(ok.mean())


def verdict_of(in_cell: float | None) -> str:
    return "not applicable" if in_cell is None else ("faithful" if in_cell == 1.0 else "altered")


# ------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------
