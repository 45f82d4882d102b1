"""FP8 checkpoints: linear layers stored as 8-bit floats with float32 scales.

- Block-scaled (DeepSeek-V3/R1, Kimi K2, Qwen FP8 releases; ``quant_method: fp8`` with
  ``weight_block_size: [b0, b1]``): ``<module>.weight`` ``float8_e4m3fn`` [out × in] and
  ``<module>.weight_scale_inv`` float32 [⌈out/b0⌉ × ⌈in/b1⌉]; W = W_fp8 · scale_inv[⌊r/b0⌋, ⌊c/b1⌋].
  A row r needs only row ⌊r/b0⌋ of the scales.
- Per-tensor or per-channel (FBGEMM ``fbgemm_fp8``, torchao, ``fp8`` without a block size):
  ``<module>.weight_scale`` (or ``weight_scale_inv``) holding one value, or one per output row
  ([out] or [out × 1]); W = W_fp8 · scale.

Activation scales (``input_scale``) are not needed for the weights and are ignored.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch

from ..errors import TracingError
from .layered import Layer, LayeredBackend, bad_part, in_chunks

FP8_DTYPES = {"F8_E4M3": "e4m3", "F8_E5M2": "e5m2"}
SCALE_SUFFIXES = ("_scale_inv", "_scale")


_PAIRS: dict[torch.dtype, np.ndarray] = {}
CHUNK_VALUES = 1 << 16  # values decoded at a time (a chunk per call to np.take)


def _pair_table(dtype: torch.dtype) -> np.ndarray:
    """The two float32 values of every pair of float8 codes (index: the two bytes as a little-endian
    uint16), each entry viewed as one float64 so that one lookup copies both."""
    if dtype not in _PAIRS:
        one = torch.arange(256, dtype=torch.uint8).view(dtype).to(torch.float32).numpy()
        i = np.arange(1 << 16)
        _PAIRS[dtype] = np.stack([one[i & 255], one[i >> 8]], 1).copy().view(np.float64).reshape(-1)
    return _PAIRS[dtype]


def fp8_to_float32(w: torch.Tensor) -> np.ndarray:
    """float8 codes -> float32 (a numpy array), exactly as ``w.to(torch.float32)``, with one lookup
    in a table of every pair of codes per two values (torch's own conversion is elementwise scalar
    code on CPU, several times slower than reading bfloat16)."""
    if w.numel() % 2 or sys.byteorder != "little":
        return w.to(torch.float32).numpy()
    codes = w.contiguous().view(torch.uint8).reshape(-1).numpy().view(np.uint16)
    return np.take(_pair_table(w.dtype), codes).view(np.float32).reshape(w.shape)


def _dequantize(w: torch.Tensor, row_scales: np.ndarray, b1: int) -> torch.Tensor:
    """W_fp8 [r × c] times ``row_scales`` [r (or 1) × ⌈c/b1⌉] (each row's scale per block of b1
    columns), float32.  The codes are decoded a few rows at a time in numpy (one lookup per two
    codes; the chunks spread over torch's threads when there are many), then scaled by torch in one
    broadcast multiplication."""
    r, c = w.shape
    C = row_scales.shape[1]
    if c % 2 or c % b1 or sys.byteorder != "little":
        out = fp8_to_float32(w)
        out *= np.repeat(row_scales, b1, 1)[:, :c]
        return torch.from_numpy(out)
    codes = w.contiguous().view(torch.uint8).numpy().reshape(r, c).view(np.uint16)
    out = np.empty((r, c // 2), np.float64)  # float32 pairs
    table = _pair_table(w.dtype)

    def work(i, j):
        np.take(table, codes[i:j], out=out[i:j], mode="clip")  # every uint16 is in the table
    in_chunks(r, max(1, CHUNK_VALUES // c), work)
    scaled = torch.from_numpy(out).view(torch.float32).view(r, C, b1)
    scaled.mul_(torch.from_numpy(np.ascontiguousarray(row_scales, dtype=np.float32)).view(-1, C, 1))
    return scaled.view(r, c)


def dequantize_block(w: torch.Tensor, scale: torch.Tensor, b0: int, b1: int) -> torch.Tensor:
    """W_fp8 [r × c] times its block scales [⌈r/b0⌉ × ⌈c/b1⌉], float32."""
    s = scale.to(torch.float32).numpy()
    return _dequantize(w, s[np.arange(w.shape[0]) // b0], b1)


def dequantize_scaled(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W_fp8 [r × c] times one scale, or one per row ([r] or [r × 1]), float32."""
    s = scale.to(torch.float32).numpy().reshape(-1, 1)
    return _dequantize(w, s, w.shape[1])


class FP8Backend(LayeredBackend):
    method = "fp8"

    def __init__(self, folder, qcfg, label):
        b = qcfg.get("weight_block_size")
        if b is not None and (not isinstance(b, (list, tuple)) or len(b) != 2 or min(b) < 1):
            raise TracingError(f"{folder}/config.json: weight_block_size {b!r} is not two positive sizes; "
                               f"fix quantization_config")
        self.block = tuple(int(x) for x in b) if b is not None else None
        super().__init__(folder, qcfg, label)
        self.undoes = "W = W_fp8 × " + (f"weight_scale_inv per {self.block[0]}×{self.block[1]} block" if self.block
                                        else "weight_scale (per tensor or per output row)")

    def layer(self, stored):
        if not self.has_key(stored) or self.meta(stored).dtype not in FP8_DTYPES:
            return None
        m = self.meta(stored)
        scale = next((stored + s for s in SCALE_SUFFIXES if self.has_key(stored + s)), None)
        if scale is None:
            want = "weight_scale_inv" if self.block else "weight_scale"
            raise bad_part(self.folder, stored, f"is stored in FP8 but {stored}{SCALE_SUFFIXES[0 if self.block else 1]} "
                           f"is missing", f"an FP8 checkpoint needs its {want} tensors — the download is incomplete, "
                           f"download it again")
        if len(m.shape) != 2:
            raise bad_part(self.folder, stored, f"is an FP8 tensor of shape {m.shape}; only matrices are read")
        r, c = m.shape
        sshape, fmt = self.meta(scale).shape, FP8_DTYPES[m.dtype]
        n = math.prod(sshape)
        if self.block is not None and n > 1:
            b0, b1 = self.block
            want = (math.ceil(r / b0), math.ceil(c / b1))
            if tuple(sshape) != want:
                raise bad_part(self.folder, scale, f"has shape {tuple(sshape)}, but {stored} {m.shape} in "
                               f"{b0}×{b1} blocks needs {want}",
                               "the scales do not belong to this weight or weight_block_size in config.json is wrong")
            return Layer(f"fp8 {fmt} block {b0}×{b1}", {"w": stored, "s": scale}, {"block": (b0, b1)})
        if n == 1:
            return Layer(f"fp8 {fmt} per-tensor", {"w": stored, "s": scale})
        if tuple(sshape) in ((r,), (r, 1)):
            return Layer(f"fp8 {fmt} per-channel", {"w": stored, "s": scale})
        raise bad_part(self.folder, scale, f"has shape {tuple(sshape)}, which fits neither one scale nor one per "
                       f"row of {stored} {m.shape} (and config.json gives no weight_block_size)",
                       "set weight_block_size in quantization_config if the scales are per block")

    def dequantize(self, layer, rows):
        w_key, s_key = layer.parts["w"], layer.parts["s"]
        if rows is None:
            w, s = self.read(w_key), self.read(s_key)
            if "block" in layer.info:
                return dequantize_block(w, s, *layer.info["block"])
            return dequantize_scaled(w, s)
        w = self.read_rows(w_key, rows)
        if "block" in layer.info:
            b0, b1 = layer.info["block"]
            need, pos = np.unique(rows // b0, return_inverse=True)
            s = torch.from_numpy(self.read_rows(s_key, need).to(torch.float32).numpy()[pos])  # a scale row per row
            return dequantize_block(w, s, 1, b1)
        if math.prod(self.meta(s_key).shape) == 1:
            return dequantize_scaled(w, self.read(s_key))
        return dequantize_scaled(w, self.read_rows(s_key, rows))
