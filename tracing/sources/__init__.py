"""Quantized weight formats: GGUF (llama.cpp) files and GPTQ / AWQ folders.

Each format is a *backend* behind :class:`tracing.models.Checkpoint`: it knows which tensors the
file holds and dequantizes one of them to float32 when it is asked for it (never the whole
model).  :func:`detect` picks the backend for a resolved model folder or file.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from ..errors import TracingError


class QuantizedBackend:
    """What :class:`~tracing.models.Checkpoint` needs from a quantized format."""

    format: str = "?"
    label: str = "model"

    def config(self):  # a transformers PretrainedConfig
        raise NotImplementedError

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def get(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def get_rows(self, name: str, index, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``index`` of ``name``; this default dequantizes the whole tensor."""
        return self.get(name, dtype)[torch.as_tensor(index, dtype=torch.long)]

    def weight_files(self) -> list[Path]:
        raise NotImplementedError

    def tensor_types(self) -> dict[str, str]:
        """Storage type of every tensor (e.g. ``{"blk.0.ffn_up.weight": "Q4_K"}``)."""
        raise NotImplementedError

    def has_tokenizer(self) -> bool:
        return False

    def tokenizer(self):
        return None

    def quantization(self) -> dict:
        """For the record's provenance: the format and a count of tensors per storage type."""
        return {"format": self.format, "types": type_summary(self.tensor_types())}


def type_summary(types: dict[str, str]) -> str:
    """``"Q4_K ×196, Q6_K ×1, F32 ×61"`` (most frequent first)."""
    counts = Counter(types.values())
    return ", ".join(f"{t} ×{n}" for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def quantization_config(folder: Path) -> dict | None:
    """``quantization_config`` of a folder's config.json, when it names a quantization method."""
    f = folder / "config.json"
    if not f.is_file():
        return None
    try:
        q = json.loads(f.read_text()).get("quantization_config")
    except (json.JSONDecodeError, AttributeError):
        return None
    if isinstance(q, dict) and q.get("quant_method"):
        return q
    return None


def find_gguf(path: Path, file: str | None, label: str) -> Path | None:
    """The GGUF file a spec names: ``file`` inside ``path``, ``path`` itself, or the only
    ``*.gguf`` of a folder without other weights."""
    if file is not None:
        f = path / file
        if not f.is_file():
            have = sorted(p.name for p in path.glob("*.gguf"))
            raise TracingError(f"{label}: no file {file} in {path}"
                               + (f"; it holds {', '.join(have)}" if have else ""))
        return f
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")):
        return None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) > 1:
        raise TracingError(f"{label} holds several GGUF files ({', '.join(p.name for p in ggufs)}); "
                           f"pick one with {label}:<file>.gguf")
    return ggufs[0] if ggufs else None


def detect(path: Path, file: str | None, label: str) -> QuantizedBackend | None:
    """The quantized backend for a model folder or file, or None for plain float checkpoints."""
    g = find_gguf(path, file, label)
    if g is not None:
        from .gguf import GGUFBackend
        return GGUFBackend(g, label, folder=path if path.is_dir() else None)
    if path.is_dir():
        q = quantization_config(path)
        if q is not None and str(q["quant_method"]).lower() in ("gptq", "awq"):
            from .gptq import PackedInt4Backend
            return PackedInt4Backend(path, q, label)
        if q is not None:
            from .formats import open_format
            return open_format(path, q, label)
    return None
