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
    """Every tensor's check; a tensor the converter split in two parts of different types (a part too
    narrow for the type's blocks is stored in F16) is checked part by part and the fractions joined."""
    out = []
    for name in q.arch.names():
        x = src.get(name).double().numpy().ravel()
        types = q.quantized.stored_types(name)
        parts = [_check_stored(q, name, x, qtype, len(types) > 1) for qtype in types]  # (values, equal, in_cell, note)
        eq = cell = None
        if all(p[2] is not None for p in parts):
            eq, cell = (sum(p[0] * p[i] for p in parts) / x.size for i in (1, 2))
        # a part out of its cells is an alteration, even beside a part that cannot be checked
        status = "altered" if any(p[2] is not None and p[2] < 1.0 for p in parts) else verdict_of(cell)
        note = "; ".join(f"{qtype}: {p[3]}" if len(parts) > 1 else p[3] for qtype, p in zip(types, parts) if p[3])
        out.append(TensorCheck(name, "+".join(types), x.size, eq, cell, status, note))
    return out


def _check_stored(q, name: str, x: np.ndarray, qtype: str, split: bool) -> tuple[int, float | None, float | None, str]:
    """``(values, equal, in_cell, note)`` of the values of ``name`` stored in type ``qtype`` (``split``: of
    one part of a tensor whose parts are of different types; the others' elements are left out)."""
    from .quant_kquant import LAYOUT as KQUANT_LAYOUT
    from .quant_kquant import kquant_check, kquant_planes
    b = q.quantized
    mine = ~np.isnan(b.stored_planes(name, _ones, qtype)[1][0].numpy().ravel()) if split else slice(None)
    x = x[mine]
    if qtype in FLOAT_ULP:
        return (x.size, *float_check(x, q.get(name).double().numpy().ravel()[mine], qtype), "")
    if qtype in GGUF_RTN:
        lo, hi, _ = GGUF_RTN[qtype]
        _, planes = b.stored_planes(name, gguf_planes, qtype)
        return (x.size, *rtn_check(x, *(p.numpy().ravel()[mine] for p in planes), lo, hi), "")
    if qtype in KQUANT_LAYOUT:
        _, planes = b.stored_planes(name, kquant_planes, qtype)
        eq, cell, step, none = kquant_check(x, *(p.numpy().ravel()[mine] for p in planes), KQUANT_LAYOUT[qtype][0])
        return (x.size, eq, cell, f"cells under the stored sub-block scales; {step:.4f} within one step"
                + (f"; {none} values in zero-scale sub-blocks (no codes)" if none else ""))
    return (x.size, None, None, f"{qtype} codes are points of a lattice codebook, not rounded values; no cell to check")


def _ones(raw: np.ndarray, ggml_type) -> list[np.ndarray]:
    """One plane of ones as long as a stored tensor's values: where a part's elements go."""
    import gguf
    block, size = gguf.GGML_QUANT_SIZES[ggml_type]
    return [np.ones(raw.nbytes // size * block)]


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
