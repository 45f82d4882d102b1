"""The one interface of a weight format (a *backend*): what :class:`tracing.models.Checkpoint`, job
sizing and provenance ask of a model on disk, whatever its format.

A backend class *claims* a resolved model id (:meth:`Backend.claims`) and opens it
(:meth:`Backend.open`); :func:`tracing.sources.open_backend` asks the registered classes in turn.
Opening reads the config and the file headers only: :meth:`Backend.config` never reads a tensor,
so the launcher sizes jobs through it. Tensors come out one at a time as float (dequantized for
quantized formats).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from ..errors import TracingError

#: bytes per parameter of the dtypes a config.json names (``torch_dtype``), for job sizing
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8}


def stored_bytes(dtype) -> int:
    """Bytes per parameter of a config's dtype (a name or a ``torch.dtype``; 2 when unknown)."""
    return DTYPE_BYTES.get(str(dtype or "bfloat16").replace("torch.", ""), 2)


def read_config_json(cfg_file: Path) -> dict:
    """A ``config.json`` read as data (no transformers import): the dict the architecture adapter
    builds its :class:`~tracing.arch.Arch` from; one line naming the file when it is not a JSON object."""
    try:
        raw = json.loads(Path(cfg_file).read_text())
    except json.JSONDecodeError as e:
        raise TracingError(f"{cfg_file} is not valid JSON ({e.msg}); re-download or fix the file") from None
    if not isinstance(raw, dict):
        raise TracingError(f"{cfg_file} does not hold a JSON object; re-download or fix the file")
    return raw


def _corrupt(f: Path, why: str) -> TracingError:
    return TracingError(f"{f} is corrupt or incomplete ({why}); delete it and download the model again")


def _read_weight_map(f: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(f.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _corrupt(f, f"not valid JSON: {type(e).__name__}") from None
    except (KeyError, TypeError):
        raise _corrupt(f, "no weight_map in it") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise _corrupt(f, "its weight_map is not a mapping of tensor names to files")
    return weight_map


class Backend:
    """One weight format. Attributes: ``format`` (its name, recorded in provenance), ``label``
    (the model id, for messages), ``arch`` (:class:`tracing.arch.Arch`). Format facts:
    ``quantized`` (tensors are dequantized, the record notes the quantization),
    ``moves_norm_scales`` (the format moves scales between norms and layers, as AWQ does: both
    models' norm gains are then folded), ``native`` (transformers' ``from_pretrained`` reads the
    folder as it is)."""

    format: str = "?"
    label: str = "model"
    #: the config as data (config.json, or a GGUF file's metadata): what the adapter reads; the
    #: transformers object (:meth:`config`) is built only when something needs it (a forward pass)
    raw_config: dict | None = None
    quantized: bool = True
    moves_norm_scales: bool = False
    native: bool = False

    # choosing and opening ---------------------------------------------------------------------
    @classmethod
    def claims(cls, resolved) -> bool:
        """Is the resolved model id (:class:`tracing.specs.Resolved`) stored in this format?"""
        return False

    @classmethod
    def open(cls, resolved) -> Backend:
        raise NotImplementedError

    def validate(self) -> None:
        """Checks of the weight files against the config (headers only), run when a checkpoint opens."""

    # config --------------------------------------------------------------------------------------
    def config(self):  # a transformers PretrainedConfig
        raise NotImplementedError

    def bytes_per_param(self) -> int:
        """Bytes per parameter as stored (for job sizing)."""
        if self.raw_config is not None:
            return stored_bytes(self.raw_config.get("torch_dtype") or self.raw_config.get("dtype"))
        cfg = self.config()
        return stored_bytes(getattr(cfg, "torch_dtype", None) or getattr(cfg, "dtype", None))

    # tensors -------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        raise NotImplementedError

    def get(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def get_rows(self, name: str, index, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``index`` of ``name``; this default reads the whole tensor."""
        return self.get(name, dtype)[torch.as_tensor(index, dtype=torch.long)]

    def release(self) -> None:
        """Drop what is cached between reads."""

    # files and provenance ------------------------------------------------------------------------
    def weight_files(self) -> list[Path]:
        raise NotImplementedError

    def tensor_types(self) -> dict[str, str]:
        """Storage type of every tensor (e.g. ``{"blk.0.ffn_up.weight": "Q4_K"}``)."""
        raise NotImplementedError

    def quantization(self) -> dict | None:
        """For the record's provenance: the format and a count of tensors per storage type."""
        return {"format": self.format, "types": type_summary(self.tensor_types())}

    # tokenizer (beyond the tokenizer files of the model's folder, which the checkpoint reads) ------
    def has_tokenizer(self) -> bool:
        return False

    def tokenizer(self):
        return None


def type_summary(types: dict[str, str]) -> str:
    """``"Q4_K ×196, Q6_K ×1, F32 ×61"`` (most frequent first)."""
    counts = Counter(types.values())
    return ", ".join(f"{t} ×{n}" for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
