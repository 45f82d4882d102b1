"""The quantized safetensors formats a folder's ``quantization_config.quant_method`` names."""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import TracingError

#: quant_method -> (module, backend class)
FORMATS = {
    "fp8": ("fp8", "FP8Backend"),
    "fbgemm_fp8": ("fp8", "FP8Backend"),
    "mxfp4": ("mxfp4", "MXFP4Backend"),
    "compressed-tensors": ("compressed", "CompressedTensorsBackend"),
    "bitsandbytes": ("bnb", "BitsAndBytesBackend"),
}


def supported() -> list[str]:
    return sorted({"gptq", "awq", *FORMATS})


def format_class(folder: Path, qcfg: dict) -> type:
    """The backend class of a folder quantized with ``qcfg["quant_method"]`` (GPTQ and AWQ included)."""
    method = str(qcfg.get("quant_method")).lower()
    if method in ("gptq", "awq"):
        from .gptq import PackedInt4Backend
        return PackedInt4Backend
    if method not in FORMATS:
        raise TracingError(f"{folder / 'config.json'}: quant_method {qcfg.get('quant_method')!r} is not supported "
                           f"(supported: {', '.join(supported())}); use a checkpoint in one of these formats "
                           f"or a float (dequantized) copy")
    module, cls = FORMATS[method]
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def open_format(folder: Path, qcfg: dict, label: str):
    """The backend of a folder quantized with ``qcfg["quant_method"]``."""
    return format_class(folder, qcfg)(folder, qcfg, label)
