"""bitsandbytes checkpoints (``quant_method: bitsandbytes``; QLoRA-era uploads), dequantized on CPU.

- 4-bit NF4 / FP4 (``load_in_4bit``): ``<module>.weight`` uint8 holds the row-major weight two
  codes a byte (the high nibble first); ``weight.absmax`` one scale per ``blocksize`` consecutive
  values; ``weight.quant_map`` the 16 code values; ``weight.quant_state.bitsandbytes__<type>`` a
  JSON record (shape, blocksize, …).  Nested (double) quantization stores ``absmax`` itself as
  uint8 codes of ``weight.nested_quant_map`` with one ``weight.nested_absmax`` per
  ``nested_blocksize`` of them, plus ``nested_offset``.  W = quant_map[code] · absmax[block].
- 8-bit (LLM.int8, ``load_in_8bit``): ``<module>.weight`` int8 and ``<module>.SCB`` float32, one
  absmax per row; W = q · SCB / 127.

Only the bytes of the requested rows (and the scales of their blocks) are read.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from .layered import Layer, LayeredBackend, bad_part

STATE = "weight.quant_state.bitsandbytes__"
QUANT_TYPES = ("nf4", "fp4")


def nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 bytes -> their two 4-bit codes, high nibble first (int64 indices)."""
    b = packed.reshape(-1).long()
    return torch.stack([b >> 4, b & 15], 1).reshape(-1)


def absmax_of(absmax: torch.Tensor, nested: dict | None) -> torch.Tensor:
    """The float32 block scales: as stored, or decoded from nested (double) quantization, where
    ``nested`` holds ``quant_map``, ``absmax`` (one per ``blocksize`` scales, indexed by ``block``)
    and ``offset``."""
    if nested is None:
        return absmax.to(torch.float32)
    vals = nested["quant_map"].to(torch.float32)[absmax.long()]
    return vals * nested["absmax"].to(torch.float32)[nested["block"]] + nested["offset"]


def dequantize_4bit(codes: torch.Tensor, quant_map: torch.Tensor, absmax: torch.Tensor,
                    block: torch.Tensor) -> torch.Tensor:
    """Values quant_map[code] · absmax[block of each value], float32 (flat)."""
    return quant_map.to(torch.float32)[codes] * absmax[block]


def dequantize_int8(q: torch.Tensor, scb: torch.Tensor) -> torch.Tensor:
    """LLM.int8 rows: q · SCB / 127, float32."""
    return q.to(torch.float32) * (scb.to(torch.float32).reshape(-1, 1) * (1.0 / 127))


class BitsAndBytesBackend(LayeredBackend):
    method = "bitsandbytes"

    def __init__(self, folder, qcfg, label):
        super().__init__(folder, qcfg, label)
        self.undoes = ("W = q × SCB / 127 per row (LLM.int8)" if qcfg.get("load_in_8bit") else
                       "W = quant_map[4-bit code] × absmax per block (nested absmax decoded)")

    def layer(self, stored):
        if not stored.endswith(".weight") or not self.has_key(stored):
            return None
        mod, dtype = stored[: -len(".weight")], self.meta(stored).dtype
        state = next((f"{mod}.{STATE}{t}" for t in QUANT_TYPES if self.has_key(f"{mod}.{STATE}{t}")), None)
        if state is not None:
            return self._layer_4bit(stored, state)
        if dtype == "I8":
            if not self.has_key(f"{mod}.SCB"):
                raise bad_part(self.folder, stored, f"is stored in int8 but {mod}.SCB is missing",
                               "an 8-bit bitsandbytes checkpoint needs its SCB tensors — download it again")
            scb = self.meta(f"{mod}.SCB")
            if tuple(scb.shape) != self.meta(stored).shape[:1]:
                raise bad_part(self.folder, f"{mod}.SCB", f"has shape {tuple(scb.shape)}, but {stored} "
                               f"{self.meta(stored).shape} needs one scale per row")
            return Layer("bnb int8 per-row", {"q": stored, "scb": f"{mod}.SCB"})
        if dtype == "U8":
            raise bad_part(self.folder, stored, f"is stored in 4 bits but {mod}.{STATE}nf4 (or fp4) is missing",
                           "a 4-bit bitsandbytes checkpoint needs its quant_state tensors — download it again")
        return None

    def _layer_4bit(self, stored: str, state: str) -> Layer:
        info = json.loads(bytes(self.read(state).tolist()).decode())
        parts = {"q": stored, "absmax": f"{stored}.absmax", "quant_map": f"{stored}.quant_map"}
        nested = "nested_blocksize" in info
        if nested:
            parts.update(nested_absmax=f"{stored}.nested_absmax", nested_quant_map=f"{stored}.nested_quant_map")
        for key in parts.values():
            if not self.has_key(key):
                raise bad_part(self.folder, stored, f"has no {key} beside it", "the download is incomplete — "
                               "download it again")
        shape = tuple(info["shape"])
        n, bs = int(np.prod(shape)), int(info["blocksize"])
        blocks = self.meta(parts["absmax"]).shape
        if len(shape) != 2 or tuple(blocks) != (-(-n // bs),) or int(np.prod(self.meta(stored).shape)) * 2 != n:
            raise bad_part(self.folder, parts["absmax"], f"has shape {tuple(blocks)}, but {stored} of shape "
                           f"{shape} in blocks of {bs} needs ({-(-n // bs)},)")
        kind = f"bnb {info['quant_type']} b{bs}" + (" nested" if nested else "")
        return Layer(kind, parts, info)

    def _scales(self, lay: Layer, blocks: np.ndarray | None) -> torch.Tensor:
        """absmax of the blocks ``blocks`` (all when None), decoded."""
        key = lay.parts["absmax"]
        absmax = self.read(key) if blocks is None else self.read_rows(key, blocks)
        if "nested_absmax" not in lay.parts:
            return absmax_of(absmax, None)
        idx = np.arange(self.meta(key).shape[0]) if blocks is None else blocks
        nested = {"quant_map": self.read(lay.parts["nested_quant_map"]), "absmax": self.read(lay.parts["nested_absmax"]),
                  "block": torch.from_numpy(idx // int(lay.info["nested_blocksize"])),
                  "offset": float(lay.info.get("nested_offset", 0.0))}
        return absmax_of(absmax, nested)

    def dequantize(self, layer, rows):
        if "scb" in layer.parts:
            if rows is None:
                return dequantize_int8(self.read(layer.parts["q"]), self.read(layer.parts["scb"]))
            return dequantize_int8(self.read_rows(layer.parts["q"], rows), self.read_rows(layer.parts["scb"], rows))
        r, c = layer.info["shape"]
        bs = int(layer.info["blocksize"])
        qm = self.read(layer.parts["quant_map"])
        if rows is None:
            flat = np.arange(r * c)
            return dequantize_4bit(nibbles(self.read(layer.parts["q"])), qm, self._scales(layer, None),
                                   torch.from_numpy(flat // bs)).reshape(r, c)
        if c % 2:  # a byte would hold the end of one row and the start of the next
            return self.dequantize(layer, None)[torch.as_tensor(rows)]
        rows = np.asarray(rows, dtype=np.int64)
        flat = (rows[:, None] * c + np.arange(c)).reshape(-1)  # element indices of the rows
        need, pos = np.unique(flat // bs, return_inverse=True)
        packed = self.read_rows(layer.parts["q"], np.unique(flat // 2))  # [n/2, 1] bytes, two values each
        return dequantize_4bit(nibbles(packed), qm, self._scales(layer, need),
                               torch.from_numpy(pos)).reshape(len(rows), c)
