"""Quantization faithfulness of FP8 block-scaled folders (DeepSeek layout): ``<name>`` stored as
``float8_e4m3fn`` with ``<name>_scale_inv`` [⌈out/b⌉ × ⌈in/b⌉] in float32, W = W_fp8 · scale_inv.

A code is faithful when it is the e4m3 value nearest to x / scale_inv (torch's round-to-nearest-even
cast, saturating at ±448); the cell is widened by a relative 2^-20 for the division's own rounding.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import TracingError
from .quant_cells import FLOAT_ULP, TensorCheck, float_check, verdict_of

FP8 = torch.float8_e4m3fn
FP8_TOL = 2.0 ** -20
DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def fp8_config(folder: Path) -> dict | None:
    """``quantization_config`` of an FP8 folder, else None (read as the weight sources read it)."""
    from ..sources import quantization_config
    q = quantization_config(Path(folder))
    return q if q is not None and str(q["quant_method"]).lower() == "fp8" else None


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TracingError(f"{folder} holds no *.safetensors weights")
    out = {}
    for f in files:
        try:
            out.update(load_file(f))
        except (SafetensorError, OSError) as e:
            raise TracingError(f"{f} is not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    return out


def fp8_cell(x: torch.Tensor, stored: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]):
    """``(equal, in_cell)`` fractions of an FP8 weight against its source ``x`` (float64)."""
    s = scale_inv.double().repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[: x.shape[0], : x.shape[1]]
    u = x / s
    q = stored.double()
    nearest = u.clamp(-448, 448).to(FP8).double()
    low = (u * (1 - FP8_TOL)).clamp(-448, 448).to(FP8).double()
    high = (u * (1 + FP8_TOL)).clamp(-448, 448).to(FP8).double()
    return float((q == nearest).double().mean()), float(((q == nearest) | (q == low) | (q == high)).double().mean())


def check_fp8(src, folder: Path, qcfg: dict) -> list[TensorCheck]:
    block = tuple(int(b) for b in qcfg.get("weight_block_size") or (128, 128))
    stored = _tensors(Path(folder))
    out = []
    for name in src.arch.names():
        if name not in stored:
            raise TracingError(f"{folder}: tensor {name} of the source is missing; is it a quantization of this model?")
        x, t = src.get(name, torch.float64), stored[name]
        if tuple(t.shape) != tuple(x.shape):
            raise TracingError(f"{folder}: {name} has shape {tuple(t.shape)}, the source {tuple(x.shape)}")
        if t.dtype == FP8:
            inv = stored.get(f"{name}_scale_inv")
            if inv is None:
                raise TracingError(f"{folder}: {name} is FP8 without {name}_scale_inv; the checkpoint is incomplete")
            eq, cell = fp8_cell(x, t, inv, block)
            out.append(TensorCheck(name, "FP8_E4M3", x.numel(), eq, cell, verdict_of(cell)))
            continue
        qtype = DTYPE_NAMES.get(t.dtype, str(t.dtype))
        eq, cell = float_check(x.numpy(), t.double().numpy(), qtype) if qtype in FLOAT_ULP else (None, None)
        out.append(TensorCheck(name, qtype, x.numel(), eq, cell, verdict_of(cell)))
    return out
