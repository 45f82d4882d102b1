"""GPTQ and AWQ folders: linear layers stored as packed low-bit integers with per-group scales.

Both keep, next to each quantized layer ``<module>``, the tensors ``<module>.qweight`` (int32
words of packed integers), ``<module>.qzeros`` (packed zero points) and ``<module>.scales``
(float16, one row per group of input columns); the weight is ``(q - zero) * scale`` per group.

- GPTQ (AutoGPTQ layout): ``qweight`` [in/pack, out] packs input rows; ``qzeros`` [groups, out/pack]
  packs output columns and stores ``zero - 1`` (``checkpoint_format`` ``gptq``; ``gptq_v2`` stores
  the zero itself); ``g_idx`` [in] gives each input column's group (act-order), else ``i // group``.
- AWQ (AutoAWQ GEMM layout, 4 bits): ``qweight`` [in, out/8] and ``qzeros`` [groups, out/8] both pack
  output columns, eight to a word in the order 0, 2, 4, 6, 1, 3, 5, 7; the group of input column i
  is ``i // group``.

Every other tensor (embeddings, norms, head, biases) is stored as it is and read as it is.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..arch import arch_from_config
from ..errors import TracingError
from .base import read_config_json
from .folder import weights_read
from . import QuantizedBackend

AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # undoes AutoAWQ's packing order (0, 2, 4, 6, 1, 3, 5, 7)
PARTS = ("qweight", "qzeros", "scales")


def unpack(q: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words -> the packed integers, unpacked along ``dim`` (lowest bits first)."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    q = q.to(torch.int32)
    if dim == 0:
        vals = (q[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
        return vals.reshape(q.shape[0] * per, q.shape[1])
    vals = (q[:, :, None] >> shifts[None, None, :]) & ((1 << bits) - 1)
    return vals.reshape(q.shape[0], q.shape[1] * per)


def codes_gptq(qweight, qzeros, scales, g_idx, bits: int, group_size: int, v2: bool = False):
    """``(codes, zeros, scales)`` of a GPTQ layer, one per weight, each [in, out]."""
    w = unpack(qweight, bits, 0)  # [in, out]
    z = unpack(qzeros, bits, 1)[:, : w.shape[1]] + (0 if v2 else 1)  # [groups, out]
    n_in = w.shape[0]
    g = g_idx.long() if g_idx is not None else torch.arange(n_in) // (group_size if group_size > 0 else n_in)
    return w, z[g], scales.float()[g]


def dequantize_gptq(qweight, qzeros, scales, g_idx, bits: int, group_size: int, v2: bool = False) -> torch.Tensor:
    """The float32 weight [out, in] of a GPTQ layer."""
    w, z, s = codes_gptq(qweight, qzeros, scales, g_idx, bits, group_size, v2)
    return ((w - z).float() * s).T.contiguous()


def codes_awq(qweight, qzeros, scales, group_size: int):
    """``(codes, zeros, scales)`` of an AWQ (GEMM) layer, one per weight, each [in, out]."""
    def cols(q):
        x = unpack(q, 4, 1)
        return x.reshape(x.shape[0], -1, 8)[:, :, list(AWQ_REVERSE_ORDER)].reshape(x.shape)

    w, z = cols(qweight), cols(qzeros)  # [in, out], [groups, out]
    n_in = w.shape[0]
    g = torch.arange(n_in) // (group_size if group_size > 0 else n_in)
    return w, z[g], scales.float()[g]


def dequantize_awq(qweight, qzeros, scales, group_size: int) -> torch.Tensor:
    """The float32 weight [out, in] of an AWQ (GEMM) layer."""
    w, z, s = codes_awq(qweight, qzeros, scales, group_size)
    return ((w - z).float() * s).T.contiguous()


class PackedInt4Backend(QuantizedBackend):
    """A GPTQ or AWQ folder (``quantization_config`` in config.json, safetensors weights)."""

    def __init__(self, folder: Path, qcfg: dict, label: str):
        self.folder, self.q, self.label = Path(folder), qcfg, label
        self.method = str(qcfg.get("quant_method")).lower()
        self.format = self.method
        self.bits = int(qcfg.get("bits", qcfg.get("w_bit", 4)))
        self.group_size = int(qcfg.get("group_size", qcfg.get("q_group_size", 128)))
        allowed = (2, 4, 8) if self.method == "gptq" else (4,)
        if self.bits not in allowed:
            raise TracingError(f"{self.folder / 'config.json'}: {self.bits}-bit {self.method.upper()} is not "
                               f"supported (supported: {', '.join(map(str, allowed))} bits)")
        if self.method == "awq" and str(qcfg.get("version", "gemm")).lower() != "gemm":
            raise TracingError(f"{self.folder / 'config.json'}: AWQ version {qcfg.get('version')!r} is not "
                               f"supported; only the GEMM packing is")
        self._config = None
        self._last: tuple[str, torch.Tensor] | None = None
        self.raw_config = read_config_json(self.folder / "config.json")
        self.arch = arch_from_config(self.raw_config, where=str(self.folder / 'config.json'))
        self._index = self._build_index()
        self._check_complete()

    @classmethod
    def claims(cls, resolved) -> bool:
        from . import quantization_config
        q = resolved.path.is_dir() and quantization_config(resolved.path)
        return bool(q) and str(q["quant_method"]).lower() in ("gptq", "awq")

    @classmethod
    def open(cls, resolved) -> PackedInt4Backend:
        from . import quantization_config
        return cls(resolved.path, quantization_config(resolved.path), resolved.spec)

    @property
    def moves_norm_scales(self) -> bool:
        return self.method == "awq"  # AWQ moves per-channel scales from the norms into the layers

    def config(self):
        if self._config is None:
            from transformers import AutoConfig
            cfg = AutoConfig.from_pretrained(self.folder, trust_remote_code=False)
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config  # the weights handed out are float
            self._config = cfg
        return self._config

    def _build_index(self) -> dict[str, Path]:
        from safetensors import safe_open
        idx = self.folder / "model.safetensors.index.json"
        if idx.is_file():
            weight_map = weights_read(self.arch, json.loads(idx.read_text())["weight_map"])
            return {k: self.folder / v for k, v in weight_map.items()}
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise TracingError(f"{self.folder} is a {self.method.upper()} folder without *.safetensors weights")
        out = {}
        for f in files:
            with safe_open(f, framework="pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    @staticmethod
    def _module(name: str) -> str | None:
        return name[: -len(".weight")] if name.endswith(".weight") else None

    def _stored(self, name: str) -> tuple[str, object] | None:
        """``(stored name, index)`` of the first store of ``name`` this folder holds, stored as it
        is or quantized (a fused tensor's role: the fused layer and the role's rows)."""
        from ..models import logical_ref
        for stored, index in logical_ref(self.arch, name, self.label).stores:
            mod = self._module(stored)
            if stored in self._index or (mod is not None and all(f"{mod}.{p}" in self._index for p in PARTS)):
                return stored, index
        return None

    def _check_complete(self) -> None:
        from ..models import logical_ref
        for name in self.arch.names():
            if self._stored(name) is not None:
                continue
            stored = logical_ref(self.arch, name, self.label).stores[0][0]
            mod = self._module(stored)
            present = [p for p in PARTS if f"{mod}.{p}" in self._index] if mod else []
            if not present:
                raise TracingError(f"{self.folder}: tensor {stored} is missing (neither stored nor quantized)")
            missing = [p for p in PARTS if p not in present]
            raise TracingError(f"{self.folder}: {mod}.{missing[0]} is missing; a {self.method.upper()} layer "
                               f"needs {', '.join(PARTS)} — the checkpoint is incomplete, re-download it")

    def _read(self, key: str) -> torch.Tensor:
        from safetensors import safe_open
        with safe_open(self._index[key], framework="pt") as h:
            return h.get_tensor(key)

    def has(self, name):
        try:
            return self._stored(name) is not None
        except TracingError:
            return False

    def get(self, name, dtype=torch.float32):
        from ..models import logical_ref, select
        found = self._stored(name)
        if found is None:
            raise TracingError(f"{self.label}: tensor {name} not found in its weight files")
        stored, index = found
        w = select(self._layer(stored, keep=index is not None), index)
        shape = tuple(logical_ref(self.arch, name, self.label).shape)
        if tuple(w.shape) != shape:
            raise TracingError(f"{self.folder}: {stored} gives shape {tuple(w.shape)} for {name}, but the config "
                               f"expects {shape}")
        return w.to(dtype)

    def _layer(self, stored: str, keep: bool) -> torch.Tensor:
        """One stored tensor, dequantized when it is a quantized layer; a fused one (``keep``) is kept
        until another is read, as its roles are read one after another."""
        if self._last is not None and self._last[0] == stored:
            return self._last[1]
        self._last = None
        if stored in self._index:
            return self._read(stored)
        q, z, s = self._codes(stored)
        w = ((q - z).float() * s).T.contiguous()
        if keep:
            self._last = (stored, w)
        return w

    def _codes(self, stored: str):
        """``(codes, zeros, scales)`` [in, out] of the quantized layer ``stored``."""
        mod = self._module(stored)
        qw, qz, sc = (self._read(f"{mod}.{p}") for p in PARTS)
        if self.method == "gptq":
            g = self._read(f"{mod}.g_idx") if f"{mod}.g_idx" in self._index else None
            v2 = str(self.q.get("checkpoint_format", "gptq")).lower() == "gptq_v2"
            return codes_gptq(qw, qz, sc, g, self.bits, self.group_size, v2=v2)
        return codes_awq(qw, qz, sc, self.group_size)

    def codes(self, name: str):
        """``(codes, zeros, scales)`` of ``name``'s weights in its layout ([out, in], a fused layer's
        role selected), or None when ``name`` is stored as it is."""
        from ..models import select
        found = self._stored(name)
        if found is None or found[0] in self._index:
            return None
        stored, index = found
        return tuple(select(a.T, index) for a in self._codes(stored))

    def weight_files(self):
        return sorted(set(self._index.values()))

    def tensor_types(self):
        from safetensors import safe_open
        out = {}
        for f in self.weight_files():
            with safe_open(f, framework="pt") as h:
                for key in h.keys():
                    part = key.rpartition(".")[2]
                    if part == "qweight":
                        out[key] = f"{self.method.upper()} int{self.bits} g{self.group_size}"
                    elif part not in ("qzeros", "scales", "g_idx"):
                        out[key] = h.get_slice(key).get_dtype()
        return out

    def quantization(self):
        info = super().quantization()
        info.update(bits=self.bits, group_size=self.group_size)
        return info

    def has_tokenizer(self):
        return False  # the folder's tokenizer files are read by the checkpoint itself
