"""MXFP4 checkpoints (gpt-oss; ``quant_method: mxfp4``): OCP microscaling FP4.

A quantized tensor ``<name>`` (``<module>.weight`` is named by its module, as gpt-oss names its
expert tensors ``…experts.gate_up_proj`` / ``…experts.down_proj``) is stored as two parts:

- ``<name>_blocks`` uint8 [..., rows, G, 16]: two FP4 (E2M1) values a byte, the low nibble first,
  32 values per group along the last (input) dimension;
- ``<name>_scales`` uint8 [..., rows, G]: one E8M0 exponent per group, the scale 2^(s − 127).

Dequantized, row r of the tensor is row r of the blocks: ``[..., rows, G · 32]``, groups along the
input.  gpt-oss's expert tensors are stored transposed to their in-memory layout (blocks
[E, 2h, d/32, 16] for ``gate_up_proj`` [E, d, 2h], whose last axis interleaves gate and up; blocks
[E, d, h/32, 16] for ``down_proj`` [E, h, d]), so the blocks' rows are the experts' units: a
tensor the model reads as columns of a stacked float tensor is transposed back when read whole,
and a sampled row of one expert reads that expert's row of blocks and of scales only.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch

from ..arch.layout import Transposed, select
from .layered import Layer, LayeredBackend, bad_part, in_chunks

#: the 16 E2M1 values by code (bit 3 is the sign)
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_PAIRS = None


def _byte_table() -> np.ndarray:
    """The two values of every byte (low nibble first), each pair viewed as one float64 so that
    one lookup copies both: 2 KiB, which stays in the L1 cache (a table of every pair of bytes is
    1 MiB: fewer lookups, but each a cache miss once the table has been evicted)."""
    global _PAIRS
    if _PAIRS is None:
        lut = np.asarray(FP4_VALUES, dtype=np.float32)
        i = np.arange(256)
        _PAIRS = np.stack([lut[i & 15], lut[i >> 4]], 1).copy().view(np.float64).reshape(-1)
    return _PAIRS


CHUNK_GROUPS = 4096  # groups of 32 decoded at a time (512 KiB of float32): a chunk per call to np.take


def scale_values(scales: torch.Tensor) -> torch.Tensor:
    """E8M0 exponents (uint8) -> 2^(s − 127) in float32, exactly (2^-127 is subnormal; ``np.exp2``
    in float32 is not exact near the top: 2^127 off by one unit).  The exponent 255 (NaN in the
    OCP format, 2^128 for transformers) gives 2^127 here: :func:`dequantize_mxfp4` doubles its
    groups afterwards, as ``torch.ldexp`` scales them."""
    e = np.minimum(scales.numpy().astype(np.int32), 254) - 127
    return torch.from_numpy(np.ldexp(np.ones(e.shape, np.float32), e))


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """blocks uint8 [..., G, 16] and E8M0 scales uint8 [..., G] -> float32 [..., G · 32]: the low
    nibble of each byte first, times 2^(s − 127) per group of 32, bit for bit as transformers'
    conversion.  The codes are decoded with one lookup per byte in chunks (spread over torch's
    threads when there are many), then scaled by torch in one broadcast multiplication (numpy's
    broadcasting over rows of 32 costs three times as much)."""
    *lead, g, nb = blocks.shape
    b = blocks.contiguous().reshape(-1, nb).numpy()
    s = scale_values(scales.reshape(-1, 1))
    if sys.byteorder != "little":
        lut = np.asarray(FP4_VALUES, dtype=np.float32)
        vals = torch.from_numpy(np.stack([lut[b & 15], lut[b >> 4]], -1).reshape(-1, nb * 2)) * s
        _double_top_groups(vals, scales)
        return vals.reshape(*lead, g * nb * 2)
    out = np.empty(b.shape, np.float64)  # two float32 per byte
    table = _byte_table()

    def work(i, j):
        np.take(table, b[i:j], out=out[i:j], mode="clip")  # every byte is in the table
    in_chunks(b.shape[0], CHUNK_GROUPS, work)
    w = torch.from_numpy(out).view(torch.float32)  # [groups, 32]
    w.mul_(s)
    _double_top_groups(w, scales)
    return w.reshape(*lead, g * nb * 2)


def _double_top_groups(w: torch.Tensor, scales: torch.Tensor) -> None:
    """Groups [n, 32] of ``w`` whose exponent is 255, scaled by 2^127 so far, doubled: v · 2^128
    as ``torch.ldexp`` gives it (each step exact, or inf where the value overflows)."""
    top = torch.from_numpy(np.flatnonzero(scales.numpy().reshape(-1) == 255))
    if len(top):
        w[top] *= 2


def split_gate_up(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gpt-oss's fused gate_up_proj [..., 2h] (gate and up interleaved on the last axis) -> (gate, up)."""
    return w[..., 0::2], w[..., 1::2]


def parts_of(stored: str) -> tuple[str, str]:
    base = stored[: -len(".weight")] if stored.endswith(".weight") else stored
    return f"{base}_blocks", f"{base}_scales"


class MXFP4Backend(LayeredBackend):
    method = "mxfp4"
    undoes = "W = E2M1 codes × 2^(E8M0 scale − 127) per group of 32 input values"

    def __init__(self, folder, qcfg, label):
        self._columns: set[str] | None = None
        self._part_cache: dict[str, np.ndarray | None] = {}  # logical name -> its rows of blocks
        super().__init__(folder, qcfg, label)

    def layer(self, stored):
        blocks, scales = parts_of(stored)
        if not self.has_key(blocks):
            return None
        if not self.has_key(scales):
            raise bad_part(self.folder, blocks, f"has no {scales} beside it", "an MXFP4 checkpoint needs both parts "
                           "of every quantized tensor — the download is incomplete, download it again")
        b, s = self.meta(blocks), self.meta(scales)
        if b.dtype != "U8" or s.dtype != "U8" or len(b.shape) < 3 or b.shape[-1] != 16 or tuple(s.shape) != b.shape[:-1]:
            raise bad_part(self.folder, scales, f"({s.dtype} {tuple(s.shape)}) does not fit {blocks} "
                           f"({b.dtype} {tuple(b.shape)}); MXFP4 needs uint8 blocks [..., G, 16] and uint8 scales "
                           f"[..., G]")
        return Layer("mxfp4 e2m1 e8m0/32", {"blocks": blocks, "scales": scales},
                     {"transposed": stored in self._transposed(), "lead": len(b.shape) - 2})

    def _transposed(self) -> set[str]:
        """Stored tensors the model reads as columns (gpt-oss's stacked experts, [E, in, out] in
        float): their MXFP4 blocks hold the rows, [E, out, in/32, 16]."""
        if self._columns is None:
            self._columns = {stored for n in self.arch.names() for stored, index in self.arch.ref(n).stores
                             if isinstance(index, Transposed)}
        return self._columns

    def dequantize(self, layer, rows):
        """The whole tensor in its float layout, or rows ``rows`` of its blocks (counted over every
        axis but the groups')."""
        blocks, scales = layer.parts["blocks"], layer.parts["scales"]
        if rows is None:
            w = dequantize_mxfp4(self.read(blocks), self.read(scales))
            return w.transpose(-1, -2) if layer.info["transposed"] else w
        rows, lead = np.asarray(rows), layer.info["lead"]
        return dequantize_mxfp4(self.read_rows(blocks, rows, lead), self.read_rows(scales, rows, lead))

    def _part_rows(self, name: str):
        """``(stored name, layer, rows of its blocks)`` of a part of a stacked tensor stored
        transposed (one expert's gate, up or down), None for any other tensor."""
        found = self._stored(name)
        if found is None or found[2] is None or not found[2].info["transposed"]:
            return None
        stored, part, lay = found
        if name not in self._part_cache:
            self._part_cache[name] = stored_rows(self.meta(lay.parts["blocks"]).shape, part)
        flat = self._part_cache[name]
        return None if flat is None else (stored, lay, flat)

    def get(self, name, dtype=torch.float32):
        """One expert's part of a stacked tensor: the span of blocks rows it lies in is decoded (one
        expert's, kept for its next part: gate and up share their rows), never the whole stack."""
        found = self._part_rows(name)
        if found is None:
            return super().get(name, dtype)
        stored, lay, flat = found
        out = self.meta(lay.parts["blocks"]).shape[-3]  # rows of one expert
        lo, hi = int(flat.min()) // out * out, (int(flat.max()) // out + 1) * out
        if self._last is None or self._last[0] != (stored, lo, hi):
            self._last = None
            self._last = ((stored, lo, hi), self.dequantize(lay, np.arange(lo, hi)))
        w = _take(self._last[1], flat - lo)
        shape = tuple(self.arch.ref(name).shape)
        if tuple(w.shape) != shape:
            raise bad_part(self.folder, lay.parts["blocks"], f"gives shape {tuple(w.shape)} for {name}, but the "
                           f"config expects {shape}", "use the config.json that came with these weights")
        return w.to(dtype)

    def get_rows(self, name, index, dtype=torch.float32):
        """Rows of one expert's part of a stacked tensor stored transposed: those rows of its blocks
        and scales only (other tensors as every layered format reads them)."""
        found = self._part_rows(name)
        if found is None:
            return super().get_rows(name, index, dtype)
        stored, lay, flat = found
        need, pos = np.unique(flat[np.asarray(index, dtype=np.int64)], return_inverse=True)
        return self.dequantize(lay, need)[torch.from_numpy(pos.reshape(-1))].to(dtype)


def _take(t: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Rows ``rows`` of ``t``: a strided view when they are evenly spaced (an expert's gate or up
    rows, every other row), else a copy."""
    step = int(rows[1] - rows[0]) if len(rows) > 1 else 1
    if step > 0 and np.array_equal(rows, rows[0] + step * np.arange(len(rows))):
        return t[int(rows[0]):int(rows[-1]) + 1:step]
    return t[torch.from_numpy(rows)]


def stored_rows(blocks_shape: tuple, part) -> np.ndarray | None:
    """Row i of the part ``part`` (a :class:`Transposed` index into the float layout [..., in, out])
    of a tensor whose blocks are [..., out, G, 16]: its row in the blocks, counted over every axis
    but the last two; None when the part does not take whole input columns."""
    *lead, out, _, _ = blocks_shape
    ids = torch.arange(math.prod(lead) * out).reshape(*lead, 1, out).expand(*lead, 2, out)  # two input columns
    rows = select(ids, part)  # [part rows, 2]: the same blocks row in both columns of a part's row
    if rows.ndim != 2 or rows.shape[1] != 2 or not bool((rows[:, 0] == rows[:, 1]).all()):
        return None
    return rows[:, 0].contiguous().numpy()
