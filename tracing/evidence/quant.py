"""Quantization faithfulness: is a quantized file the round-to-nearest quantization of a source?

Per tensor, the stored codes are compared with round-to-nearest of the source under the file's own
scales (and minimums). ``equal`` is the fraction of codes exactly equal to it; ``in_cell`` the
fraction whose source value lies in the code's rounding cell, widened by a stated tolerance for the
scales' own rounding (a scale stored in float16 has a relative error up to 2^-11 against the one the
quantizer divided by, or 2^-25 absolute for a subnormal one, so a value within twice that of a cell
edge, in code units, may round either way). A faithful round-to-nearest quantization has every code
in its cell — exactly, not statistically — so one code outside its cell marks the tensor *altered*.

Checked exactly: GGUF Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (and F32/F16/BF16 tensors against the source cast
to that type, within one unit in the last place), FP8 e4m3 with block scales, AWQ (after undoing its
scale migration out of the norms), GGUF K-quants Q2_K..Q6_K (scales from a search, codes by nearest
rounding under the stored scales: :mod:`.quant_kquant`). GPTQ: a wider stated cell for its error feedback (:mod:`.quant_packed`).
Not applicable: GGUF i-quants (codes are points of a lattice codebook). The check catches a
quantizer that altered the weights; it cannot catch a full-precision source crafted to misbehave
once quantized.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import TracingError

from .quant_cells import (CAVEAT, FLOAT_ULP, GGUF_RTN, TensorCheck, cell_tolerance,  # noqa: F401 (re-exported)
                          float_check, rtn_check, verdict_of)


def gguf_planes(raw: np.ndarray, ggml_type) -> list[np.ndarray]:
    """Dequantized values, per-element scale d and minimum m of a stored GGUF tensor (RTN types);
    values only for float types; nothing for the others."""
    import gguf
    name = gguf.GGMLQuantizationType(ggml_type).name
    if name in FLOAT_ULP:
        return [gguf.dequantize(raw, ggml_type).ravel()]
    if name not in GGUF_RTN:
        return []
    bs, ts = gguf.GGML_QUANT_SIZES[ggml_type]
    blocks = np.ascontiguousarray(raw).reshape(-1, ts)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float64).ravel()
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float64).ravel() if GGUF_RTN[name][2] else np.zeros_like(d)
    return [gguf.dequantize(raw, ggml_type).ravel(), np.repeat(d, bs), np.repeat(m, bs)]


def check_gguf(src, q) -> list[TensorCheck]:
    from .quant_kquant import LAYOUT as KQUANT_LAYOUT
    from .quant_kquant import kquant_check, kquant_planes
    out = []
    for name in q.arch.names():
        qtype, planes = q.quantized.stored_planes(name, gguf_planes)
        x = src.get(name).double().numpy()
        if qtype in FLOAT_ULP:
            eq, cell = float_check(x, q.get(name).double().numpy(), qtype)
            note = ""
        elif qtype in GGUF_RTN:
            lo, hi, _ = GGUF_RTN[qtype]
            eq, cell = rtn_check(x, *(p.numpy() for p in planes), lo, hi)
            note = ""
        elif qtype in KQUANT_LAYOUT:
            _, planes = q.quantized.stored_planes(name, kquant_planes)
            eq, cell, step, none = kquant_check(x, *(p.numpy() for p in planes), KQUANT_LAYOUT[qtype][0])
            note = (f"cells under the stored sub-block scales; {step:.4f} within one step"
                    + (f"; {none} values in zero-scale sub-blocks (no codes)" if none else ""))
        else:
            eq = cell = None
            note = f"{qtype} codes are points of a lattice codebook, not rounded values; no cell to check"
        out.append(TensorCheck(name, qtype, x.size, eq, cell, verdict_of(cell), note))
    return out


# ------------------------------------------------------------------------------------------
# the check
# ------------------------------------------------------------------------------------------
def _same_shapes(src, q) -> None:
    a, b = src.arch, q.arch
    if a.names() != b.names() or any(tuple(a.ref(n).shape) != tuple(b.ref(n).shape) for n in a.names()):
        raise TracingError(f"{q.label} does not have the tensors and shapes of {src.label} "
                           f"({a.model_type} vs {b.model_type}); a quantization keeps the source's shapes")


def quantcheck(source: str, quantized: str) -> dict:
    """Per-tensor checks and the verdict: ``faithful`` (every checked tensor's codes in their cells),
    ``altered`` (the tensors that are not), or ``not applicable`` (no tensor could be checked)."""
    from ..models import Checkpoint
    src = Checkpoint(source)
    if src.quantized is not None:
        raise TracingError(f"{source} is itself quantized ({src.quantized.format}); give the full-precision source")
    from .quant_fp8 import check_fp8, fp8_config
    fp8 = fp8_config(Path(quantized)) if Path(quantized).is_dir() else None
    if fp8 is not None:
        return summarise(check_fp8(src, Path(quantized), fp8), "fp8")
    q = Checkpoint(quantized)
    fmt = q.quantized.format if q.quantized is not None else None
    if fmt is None:
        raise TracingError(f"{quantized} is not a quantized checkpoint (GGUF, GPTQ, AWQ or FP8); nothing to check")
    _same_shapes(src, q)
    if fmt == "gguf":
        tensors = check_gguf(src, q)
    else:
        from .quant_packed import check_packed
        tensors = check_packed(src, q)
    return summarise(tensors, fmt)


def summarise(tensors: list[TensorCheck], fmt: str) -> dict:
    checked = [t for t in tensors if t.status != "not applicable"]
    altered = [t.name for t in checked if t.status == "altered"]
    unchecked_codes = [t.name for t in tensors if t.status == "not applicable" and t.qtype not in FLOAT_ULP]
    if altered:
        verdict = "altered"
    elif unchecked_codes or not checked:  # faithful only when every quantized tensor was checked
        verdict = "not applicable"
    else:
        verdict = "faithful"
    summary = (f"{len(checked)} of {len(tensors)} tensors checked, "
               f"{len(checked) - len(altered)} faithful, {len(altered)} altered"
               + (f"; {len(unchecked_codes)} quantized tensors cannot be checked (see their notes)"
                  if unchecked_codes else ""))
    return {"format": fmt, "verdict": verdict, "altered": altered, "summary": summary, "caveat": CAVEAT,
            "tolerance": "code cells widened by 2 x the float16 rounding of the scale and minimum, in code units "
                         "(2^-11 relative, 2^-25 absolute for subnormals); K-quants: 2^-18 (|u| + |offset/step| + 1) "
                         "under the stored sub-block scales; GPTQ: every code within 4 steps of the source, at "
                         "least 90 % within one step",
            "tensors": [asdict(t) for t in tensors]}
