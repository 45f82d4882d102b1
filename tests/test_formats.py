"""Quantized safetensors formats (FP8, MXFP4, compressed-tensors, bitsandbytes) as weight sources.

Tiny models of a dense, a fused (Phi-3) and a mixture-of-experts family are written in each format:
every tensor is within the format's rounding of its source, planted permutations are recovered,
``cos`` is significant on a quantized fine-tune against its float base and not on independent
models, p-values of independent pairs are uniform (KS over 30 pairs), sampled rows are read without
reading any whole quantized tensor, and bad folders are one-line errors."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from quant_writers import mxfp4_quantize, write_bnb, write_compressed, write_fp8, write_gguf, write_mxfp4
from test_quantized_families import _one_line, _row_bound, calibration_ks, cos, fam  # noqa: F401 (fam: fixture)
from tracing.align import align
from tracing.errors import TracingError
from tracing.models import Checkpoint
from tracing.sources.layered import LayeredBackend
from tracing.transforms import Permuted, random_permutations

SIG = math.log10(0.01)
FAMILIES = ("llama", "phi3", "qwen3_moe")


def _fp8_bound(ref: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn keeps 3 mantissa bits: half a step is at most 2^-4 of the value, and the
    subnormal step of the largest scale (amax / 448) bounds the rest."""
    return ref.abs() * 2 ** -4 + ref.abs().max() / 448 * 2 ** -9 + 1e-7


def _mxfp4_bound(ref: torch.Tensor) -> torch.Tensor:
    """E2M1 with a power-of-two scale X ≤ amax/3 per 32 values: the gap around a value v is at most
    v/2 (4 → 6), and X/2 below X; unquantized tensors are bfloat16 (8 bits of mantissa)."""
    if ref.ndim == 1:
        return ref.abs() * 2 ** -8
    amax = ref.reshape(*ref.shape[:-1], -1, 32).abs().amax(-1, keepdim=True).expand(*ref.shape[:-1], -1, 32)
    return ref.abs() / 4 + amax.reshape(ref.shape) / 12 + 1e-7


def _int8_bound(ref: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per row: half a step of amax / 127.5."""
    return (ref.abs().amax(-1, keepdim=True) / 255 * 1.01 + 1e-7).expand_as(ref)


def _flat_blocks(ref: torch.Tensor, bs: int, frac: float) -> torch.Tensor:
    """``frac`` of the absmax of each block of ``bs`` consecutive values of the flattened tensor."""
    flat = ref.reshape(-1)
    amax = flat.reshape(-1, bs).abs().amax(1).repeat_interleave(bs)
    return (amax * frac + 1e-7).reshape(ref.shape)


def _nf4_bound(ref):
    """The widest gap of the NF4 code book is −1 → −0.6962: half of it times the block's absmax
    (blocks of 32 values), plus the nested 8-bit code of the absmax itself (< 1% of it)."""
    return _flat_blocks(ref, 32, 0.1519 * 1.01 + 0.01)


def _fp4_bound(ref):
    """bitsandbytes' FP4 code book (0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1): widest gap 2/3 → 1."""
    return _flat_blocks(ref, 32, 1 / 6 + 1e-4)


INT4_GROUP = dict(num_bits=4, type="int", symmetric=False, strategy="group", group_size=16)
INT8_CHANNEL = dict(num_bits=8, type="int", symmetric=True, strategy="channel")
FP8_BLOCK = dict(num_bits=8, type="float", symmetric=True, strategy="block", block_structure=[16, 16])

#: format -> (writer(float folder, out folder) -> folder, per-element error bound of a quantized matrix)
FORMATS = {
    "fp8-block": (lambda hf, out: write_fp8(hf, out, block=(16, 24)), _fp8_bound),
    "fp8-channel": (lambda hf, out: write_fp8(hf, out, per="channel", method="fbgemm_fp8"), _fp8_bound),
    "fp8-tensor": (lambda hf, out: write_fp8(hf, out, per="tensor", block=None), _fp8_bound),
    "mxfp4": (write_mxfp4, _mxfp4_bound),
    "bnb-nf4": (lambda hf, out: write_bnb(hf, out, "nf4"), _nf4_bound),
    "bnb-fp4": (lambda hf, out: write_bnb(hf, out, "fp4", nested=False), _fp4_bound),
    "bnb-int8": (lambda hf, out: write_bnb(hf, out, "int8"), _int8_bound),
    "ct-int4-group": (lambda hf, out: write_compressed(hf, out, "pack-quantized", **INT4_GROUP), _row_bound),
    "ct-int8-channel": (lambda hf, out: write_compressed(hf, out, "int-quantized", **INT8_CHANNEL), _int8_bound),
    "ct-fp8-block": (lambda hf, out: write_compressed(hf, out, "float-quantized", **FP8_BLOCK), _fp8_bound),
}


def _needs_writer(fmt: str) -> None:
    """compressed-tensors' and bitsandbytes' own quantizers write those formats' test checkpoints."""
    if fmt.startswith("ct-"):
        pytest.importorskip("compressed_tensors")
    if fmt.startswith("bnb-"):
        pytest.importorskip("bitsandbytes")


def written(fam, family: str, fmt: str, tag: str):
    """``(float folder, the same model written in fmt)`` for tag base / ft / indep."""
    _needs_writer(fmt)
    _, paths, root = fam(family)
    out = root / f"{fmt}-{tag}"
    if not out.exists():
        FORMATS[fmt][0](paths[tag], out)
    return paths[tag], out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_tensor_within_the_format_rounding(fam, family, fmt):
    hf, q = written(fam, family, fmt, "base")
    ref, ck = Checkpoint(str(hf)), Checkpoint(str(q))
    assert ck.quantized is not None and ck.arch.names() == ref.arch.names()
    quantized = 0
    for n in ref.names():
        a, b = ref.get(n), ck.get(n)
        assert b.dtype == torch.float32 and b.shape == a.shape, n
        if torch.equal(a, b):
            continue
        quantized += 1
        assert bool(((a - b).abs() <= FORMATS[fmt][1](a)).all()), (n, (a - b).abs().max())
    assert quantized >= 4 * ref.arch.L  # every block's linear layers went through the format


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_planted_permutation_recovered_and_power(fam, family, fmt):
    base_q = Checkpoint(str(written(fam, family, fmt, "base")[1]))
    hf_ft, ft = written(fam, family, fmt, "ft")
    ft_q = Checkpoint(str(ft))
    pi_e, pi_i = random_permutations(ft_q.arch, seed=11)
    al = align(base_q, Permuted(ft_q, pi_e, pi_i), progress=False)
    assert np.array_equal(al.pi_e, torch.argsort(pi_e).numpy())
    for key, p in pi_i.items():
        assert np.array_equal(al.pi_i[key], torch.argsort(p).numpy()), key
    base = Checkpoint(str(fam(family)[1]["base"]))
    assert cos(base, ft_q).log10_pvalue < -6
    assert cos(base, Checkpoint(str(written(fam, family, fmt, "indep")[1]))).log10_pvalue > SIG


@pytest.mark.parametrize("fmt", ["fp8-block", "fp8-channel", "mxfp4", "ct-int4-group", "ct-int8-channel",
                                 "bnb-nf4", "bnb-int8"])
def test_cos_calibrated_on_independent_pairs(tmp_path, fmt):
    """30 independent pairs (float model against an independent one in the format): uniform p-values."""
    _needs_writer(fmt)
    write = FORMATS[fmt][0]
    assert calibration_ks(tmp_path, "llama", 700, lambda f, k: str(write(f, tmp_path / f"q{k}"))) > 0.01


def test_cos_calibrated_on_fp8_mixture_of_experts(tmp_path):
    """Qwen3-MoE in block-scaled FP8: experts matched per block, each read on its own; 30 pairs."""
    write = FORMATS["fp8-block"][0]
    assert calibration_ks(tmp_path, "qwen3_moe", 900, lambda f, k: str(write(f, tmp_path / f"q{k}"))) > 0.01


class ReadLog:
    """Every read of the backend: whole tensors and (tensor, number of rows)."""

    def __init__(self, monkeypatch):
        self.whole, self.rows = [], []
        read, read_rows = LayeredBackend.read, LayeredBackend.read_rows

        def logged_read(backend, key):
            self.whole.append(key)
            return read(backend, key)

        def logged_rows(backend, key, rows, lead=1):
            self.rows.append((key, len(rows)))
            return read_rows(backend, key, rows, lead)
        monkeypatch.setattr(LayeredBackend, "read", logged_read)
        monkeypatch.setattr(LayeredBackend, "read_rows", logged_rows)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_sampled_rows_read_no_whole_tensor(fam, family, fmt, monkeypatch):
    """A sampled row reads its row of codes and its row of scales only (each expert on its own;
    a fused tensor's role rows)."""
    from tracing.stats.base import sampled_rows
    ck = Checkpoint(str(written(fam, family, fmt, "ft")[1]))
    units = ck.arch.units(0)
    idx = sampled_rows(units[0].width, 12, seed=3)
    whole = {u.up: ck.get(u.up)[torch.from_numpy(idx)] for u in units}
    ck.quantized._last = None
    log = ReadLog(monkeypatch)
    for u in units:
        assert torch.equal(ck.get_rows(u.up, idx), whole[u.up]), u.up
    small = [k for k in log.whole if k.endswith(("weight_shape", "g_idx", "quant_map", "nested_absmax"))
             or math.prod(ck.quantized.meta(k).shape) == 1]
    assert log.whole == small  # only a shape, a column order, a code book or a per-tensor scale is read whole
    codes = [(k, n) for k, n in log.rows if k.endswith((".weight", "_blocks", "weight_packed"))]
    per_row = ck.arch.d // 2 if fmt in ("bnb-nf4", "bnb-fp4") else 1  # bitsandbytes 4-bit: bytes of the flat weight
    assert len(codes) == len(units) and all(n == len(idx) * per_row for _, n in codes)
    block = FORMATS_BLOCK.get(fmt)
    for key, n in log.rows:
        assert n <= len(idx) * per_row, key
        if block and key.endswith(("_scale_inv", "weight_scale")):
            assert n == len(np.unique(idx // block)), key  # a row of scales per block of rows


FORMATS_BLOCK = {"fp8-block": 16, "ct-fp8-block": 16}


def test_fp8_rows_through_the_cli_and_provenance(fam, tmp_path):
    from tracing.api import run_pair
    from tracing.options import Options
    hf, q = written(fam, "llama", "fp8-block", "ft")
    rec = run_pair(str(fam("llama")[1]["base"]), str(q), Options(stat=["cos"], rows=24), progress=False)[0]
    assert rec["log10_pvalue"] < -6
    prov = rec["models"]["ft"]["quantization"]
    assert prov["format"] == "fp8" and prov["types"].startswith("fp8 e4m3 block 16×24 ×14")
    assert "weight_scale_inv" in prov["undone"]


def test_fp8_against_gguf(fam, tmp_path):
    """Either side in any format: an FP8 fine-tune against the Q4_0 GGUF of its base."""
    _, paths, _ = fam("llama")
    g = write_gguf(paths["base"], tmp_path / "g" / "base.Q4_0.gguf", "Q4_0", with_tokenizer=False)
    ft = Checkpoint(str(written(fam, "llama", "fp8-block", "ft")[1]))
    assert cos(Checkpoint(str(g)), ft).log10_pvalue < -6


def test_dequantized_copy_exported(fam, tmp_path):
    from tracing.sources.export import save_source
    ck = Checkpoint(str(written(fam, "qwen3_moe", "fp8-block", "base")[1]))
    out = save_source(ck, tmp_path / "float", progress=False)
    copy = Checkpoint(str(out))
    assert copy.quantized is None
    for n in ck.names():
        assert torch.equal(copy.get(n), ck.get(n)), n


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_table_conversion_is_torchs_own(dtype):
    """Every pair of FP8 codes converts to the float32 bits torch's conversion gives (NaN codes to NaN)."""
    from tracing.sources.fp8 import fp8_to_float32
    i = torch.arange(1 << 16, dtype=torch.int32)
    codes = torch.stack([i & 255, i >> 8], 1).to(torch.uint8).view(dtype).reshape(512, 256)
    ours, theirs = torch.from_numpy(fp8_to_float32(codes)), codes.to(torch.float32)
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours[~ours.isnan()].view(torch.int32), theirs[~theirs.isnan()].view(torch.int32))


def test_mxfp4_gpt_oss_experts_as_transformers_dequantizes_them():
    """gpt-oss's stacked expert tensors: blocks [E, 2h, d/32, 16] of gate_up_proj [E, d, 2h] (gate and
    up interleaved). Our dequantizer equals transformers' own, bit for bit; an expert's rows read
    alone equal its rows of the whole; gate and up split as gpt-oss interleaves them."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from tracing.sources.mxfp4 import dequantize_mxfp4, split_gate_up
    E, d, h = 3, 64, 16
    gate_up = 0.05 * torch.randn(E, d, 2 * h, generator=torch.Generator().manual_seed(0))
    blocks, scales = mxfp4_quantize(gate_up.transpose(1, 2))  # stored [E, 2h, d/32, 16]
    ours = dequantize_mxfp4(blocks, scales)  # [E, 2h, d]: rows are units
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, d, 2h]
    assert torch.equal(ours.transpose(1, 2), theirs)
    assert ((ours.transpose(1, 2) - gate_up).abs() <= _mxfp4_bound(gate_up.transpose(1, 2)).transpose(1, 2)).all()
    rows = torch.tensor([1, 4, 5, 30])
    assert torch.equal(dequantize_mxfp4(blocks[2, rows], scales[2, rows]), ours[2, rows])
    gate, up = split_gate_up(theirs)
    assert torch.equal(gate[1, :, 3], ours[1, 6]) and torch.equal(up[1, :, 3], ours[1, 7])


def _same_bits(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Equal bit for bit where not NaN, and NaN at the same places."""
    nan = theirs.isnan()
    return torch.equal(ours.isnan(), nan) and torch.equal(ours[~nan].view(torch.int32), theirs[~nan].view(torch.int32))


@pytest.fixture(scope="module")
def mxfp4_every_code():
    """Blocks [1, 256, 32, 16]: row r holds every byte twice (shuffled per row) with the E8M0 scale r
    (0 to 255: subnormal 2^-127 up to 2^128 = inf) in its first 16 groups; then 2048 rows of random
    codes and scales around gpt-oss's (enough rows for the chunked, threaded decoding)."""
    g = torch.Generator().manual_seed(3)
    every = torch.stack([torch.randperm(512, generator=g) % 256 for _ in range(256)]).to(torch.uint8).reshape(1, 256, 32, 16)
    every_scales = torch.arange(256).to(torch.uint8).reshape(1, 256, 1).expand(1, 256, 32).clone()
    every_scales[:, :, 16:] = 120
    wide = torch.randint(0, 256, (1, 2048, 90, 16), generator=g, dtype=torch.uint8)
    wide_scales = torch.randint(100, 135, (1, 2048, 90), generator=g, dtype=torch.uint8)
    return (every, every_scales), (wide, wide_scales)


def test_mxfp4_every_code_and_scale_as_transformers_dequantizes_them(mxfp4_every_code):
    """Every E2M1 byte under every E8M0 scale (with zeros, subnormal results and inf), and a larger
    random tensor, dequantize bit for bit as transformers' own conversion does; rows read alone too."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from tracing.sources.mxfp4 import dequantize_mxfp4
    for blocks, scales in mxfp4_every_code:
        theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).transpose(1, 2)
        assert _same_bits(dequantize_mxfp4(blocks, scales), theirs)
        rows = torch.tensor([0, 1, 127, 200, 255])
        assert _same_bits(dequantize_mxfp4(blocks[0, rows], scales[0, rows]), theirs[0, rows])


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_block_dequantization_is_torchs_conversion_times_the_scales(dtype):
    """Every FP8 code (NaN codes too) times 128×128 block scales spanning tiny to large, whole
    (large enough for the chunked, threaded decoding) and by rows (one scale row per row),
    bit for bit as torch's own conversion times the expanded scales."""
    from tracing.sources.fp8 import dequantize_block, dequantize_scaled
    g = torch.Generator().manual_seed(4)
    r, c = 1536, 1408  # 12 × 11 blocks, the last column of blocks full
    codes = torch.randint(0, 256, (r, c), generator=g, dtype=torch.uint8).view(dtype)
    scale = torch.exp2(torch.randint(-20, 12, (12, 11), generator=g).float()) * torch.rand(12, 11, generator=g)
    want = codes.to(torch.float32) * scale.repeat_interleave(128, 0).repeat_interleave(128, 1)
    assert _same_bits(dequantize_block(codes, scale, 128, 128), want)
    rows = torch.tensor([0, 5, 127, 128, 900, 1535])
    assert _same_bits(dequantize_block(codes[rows], scale[rows // 128], 1, 128), want[rows])
    per_row = torch.rand(r, generator=g)
    assert _same_bits(dequantize_scaled(codes, per_row), codes.to(torch.float32) * per_row[:, None])


def test_mxfp4_without_scales_is_a_one_line_error(fam, tmp_path):
    key = "model.layers.0.mlp.down_proj_scales"
    _, q = written(fam, "llama", "mxfp4", "base")
    bad = tmp_path / "bad"
    shutil.copytree(q, bad)
    _edit_tensors(bad, lambda s: s.pop(key))
    line = _error(str(bad))
    assert "model.layers.0.mlp.down_proj_blocks has no " + key in line and "download it again" in line, line


CT_CASES = [("pack-quantized", INT4_GROUP), ("pack-quantized", dict(num_bits=8, type="int", symmetric=False, strategy="channel")),
            ("pack-quantized", dict(num_bits=3, type="int", symmetric=True, strategy="group", group_size=32)),
            ("naive-quantized", dict(num_bits=8, type="int", symmetric=False, strategy="group", group_size=16)),
            ("int-quantized", INT8_CHANNEL), ("float-quantized", FP8_BLOCK),
            ("float-quantized", dict(num_bits=8, type="float", symmetric=True, strategy="tensor"))]


@pytest.mark.parametrize("fmt, weights", CT_CASES, ids=lambda x: x if isinstance(x, str) else x["strategy"])
def test_compressed_tensors_equals_the_package_decompressors(fam, tmp_path, fmt, weights):
    """Every layer, and its sampled rows, as compressed-tensors' own decompressor gives it."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors import safe_open
    q = write_compressed(fam("llama")[1]["base"], tmp_path / "ct", fmt, **weights)
    ck = Checkpoint(str(q))
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))
    compressor = BaseCompressor.load_from_registry(fmt)
    idx = np.array([0, 3, 4, 17, 40, 63])
    with safe_open(q / "model.safetensors", framework="pt") as h:
        for i in range(ck.arch.L):
            for role in ("q", "v", "gate", "up", "down"):
                name = ck.arch.block_name(i, role)
                mod = name[: -len(".weight")]
                parts = {k[len(mod) + 1:]: h.get_tensor(k) for k in h.keys() if k.startswith(mod + ".")}
                theirs = compressor.decompress(parts, scheme)["weight"].float()
                assert torch.equal(ck.get(name), theirs), name
                rows = idx[idx < theirs.shape[0]]
                assert torch.equal(ck.get_rows(name, rows), theirs[torch.from_numpy(rows)]), name


def test_compressed_tensors_awq_recipe_folds_norm_gains(fam, tmp_path):
    """llm-compressor's recipe.yaml names AWQModifier: scales were moved out of the norms, so norm
    gains are folded before comparing, as for AWQ (the record says so)."""
    pytest.importorskip("compressed_tensors")
    from safetensors.torch import save_file

    from quant_writers import _state, awq_migrate
    from tracing.api import run_pair
    from tracing.options import Options
    _, paths, _ = fam("llama")
    migrated = tmp_path / "migrated"
    migrated.mkdir()
    shutil.copy(paths["ft"] / "config.json", migrated)
    cfg = json.loads((paths["ft"] / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in awq_migrate(_state(paths["ft"]), cfg, spread=2.0).items()},
              str(migrated / "model.safetensors"))
    q = write_compressed(migrated, tmp_path / "ct", "pack-quantized", **INT4_GROUP)
    plain = run_pair(str(paths["base"]), str(q), Options(stat=["cos"]), progress=False)[0]
    (q / "recipe.yaml").write_text("default_stage:\n  default_modifiers:\n    AWQModifier: {duo_scaling: true}\n"
                                   "    QuantizationModifier: {targets: [Linear], scheme: W4A16_ASYM}\n")
    folded = run_pair(str(paths["base"]), str(q), Options(stat=["cos"]), progress=False)[0]
    assert not plain["transforms"]["fold_norms"] and folded["transforms"]["fold_norms"]
    assert "AWQModifier" in folded["models"]["ft"]["quantization"]["undone"]
    assert folded["log10_pvalue"] < -6  # (what folding undoes is tested on AWQ folders in test_quantized.py)


def test_compressed_tensors_group_index():
    """Older act-order checkpoints store each input column's group (weight_g_idx): the columns of a
    weight quantized in a permuted order dequantize as the permuted columns."""
    from tracing.sources.compressed import dequantize
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, (6, 32), generator=g, dtype=torch.int8)
    s, z = torch.rand(6, 2, generator=g), torch.randint(-3, 3, (6, 2), generator=g, dtype=torch.int8)
    p = torch.randperm(32, generator=g)
    plain = dequantize(q, s, z, "group", group_size=16)
    assert torch.equal(dequantize(q[:, p], s, z, "group", g_idx=(torch.arange(32) // 16)[p]), plain[:, p])


@pytest.mark.parametrize("quant", ["nf4", "fp4", "int8"])
def test_bitsandbytes_equals_its_own_dequantizer(fam, quant):
    """Every layer and its sampled rows as bitsandbytes' CPU dequantizer gives them."""
    F = pytest.importorskip("bitsandbytes.functional")
    from safetensors import safe_open
    fmt = f"bnb-{quant}"
    _, q = written(fam, "qwen3_moe", fmt, "base")
    ck = Checkpoint(str(q))
    idx = np.array([0, 3, 4, 17, 30, 31])
    with safe_open(q / "model.safetensors", framework="pt") as h:
        for name in ck.names():
            lay = ck.quantized._stored(name)[2]
            if lay is None:
                continue
            if quant == "int8":
                theirs = F.int8_vectorwise_dequant(h.get_tensor(name), h.get_tensor(lay.parts["scb"]))
            else:
                state = F.QuantState.from_dict({k[len(name) + 1:]: h.get_tensor(k) for k in h.keys()
                                                if k.startswith(name + ".")}, device=torch.device("cpu"))
                theirs = F.dequantize_4bit(h.get_tensor(name), state)
            assert torch.allclose(ck.get(name), theirs.float(), rtol=1e-6, atol=0), name
            rows = idx[idx < theirs.shape[0]]
            assert torch.equal(ck.get_rows(name, rows), ck.get(name)[torch.from_numpy(rows)]), name


def test_bitsandbytes_blocks_span_rows(fam, tmp_path):
    """Blocks run over the flattened tensor: with 64-value blocks over rows of 32, a block holds two
    rows. (bitsandbytes 0.50's own CPU dequantizer gets this case wrong; its GPU kernels do not.)"""
    pytest.importorskip("bitsandbytes")
    hf, _ = written(fam, "llama", "bnb-nf4", "base")
    ck, ref = Checkpoint(str(write_bnb(hf, tmp_path / "b64", "nf4", blocksize=64))), Checkpoint(str(hf))
    idx = np.array([1, 2, 9, 30])
    for i in range(ck.arch.L):
        name = ck.arch.block_name(i, "up")
        a, b = ref.get(name), ck.get(name)
        assert bool(((a - b).abs() <= _flat_blocks(a, 64, 0.1519 * 1.01 + 0.01)).all()), name
        assert torch.equal(ck.get_rows(name, idx), b[torch.from_numpy(idx)]), name


def test_bitsandbytes_arithmetic_by_hand():
    """Codes high nibble first; nested absmax = code book value × its group's absmax + offset."""
    from tracing.sources.bnb import absmax_of, dequantize_4bit, dequantize_int8, nibbles
    assert nibbles(torch.tensor([0x1F, 0x20], dtype=torch.uint8)).tolist() == [1, 15, 2, 0]
    qm = torch.linspace(-1, 1, 16)
    nested = {"quant_map": torch.linspace(-1, 1, 256), "absmax": torch.tensor([2.0, 4.0]),
              "block": torch.tensor([0, 1]), "offset": 0.5}
    am = absmax_of(torch.tensor([255, 0], dtype=torch.uint8), nested)
    assert am.tolist() == [2.5, -3.5]
    w = dequantize_4bit(nibbles(torch.tensor([0xF0, 0x0F], dtype=torch.uint8)), qm, am, torch.tensor([0, 0, 1, 1]))
    assert w.tolist() == [2.5, -2.5, 3.5, -3.5]
    assert dequantize_int8(torch.tensor([[127, -127]], dtype=torch.int8), torch.tensor([2.0])).tolist() == [[2.0, -2.0]]


# ------------------------------------------------------------------------------------------
# bad input: one line naming the tensor and the fix, exit 2, no result file
# ------------------------------------------------------------------------------------------
def _broken(fam, tmp_path, fmt: str, edit) -> str:
    _, q = written(fam, "llama", fmt, "base")
    bad = tmp_path / "bad"
    shutil.copytree(q, bad)
    edit(bad)
    return str(bad)


def _edit_tensors(folder, fn):
    from safetensors.torch import load_file, save_file
    f = folder / "model.safetensors"
    state = load_file(f)
    fn(state)
    save_file(state, str(f), metadata={"format": "pt"})


def _edit_config(folder, fn):
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg["quantization_config"])
    (folder / "config.json").write_text(json.dumps(cfg))


def _error(spec: str) -> str:
    """The one-line error opening ``spec`` gives (the CLI prints it as ``error: …`` and exits 2, as
    the subprocess tests check)."""
    with pytest.raises(TracingError) as e:
        Checkpoint(spec)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_fp8_without_scales_is_a_one_line_error(fam, tmp_path):
    """Before this reader, a DeepSeek-layout folder was read as float weights and ended in a traceback."""
    key = "model.layers.1.mlp.up_proj.weight_scale_inv"
    spec = _broken(fam, tmp_path, "fp8-block", lambda d: _edit_tensors(d, lambda s: s.pop(key)))
    line = _one_line(spec, tmp_path)
    assert key in line and "download" in line, line


@pytest.mark.parametrize("fmt, key, says", [
    ("fp8-block", "model.layers.0.self_attn.q_proj.weight_scale_inv", ("16×24", "weight_block_size")),
    ("ct-int4-group", "model.layers.1.mlp.gate_proj.weight_scale", ("group", "(64, 2)", "config_groups"))])
def test_scales_of_the_wrong_shape_are_a_one_line_error(fam, tmp_path, fmt, key, says):
    _needs_writer(fmt)
    spec = _broken(fam, tmp_path, fmt, lambda d: _edit_tensors(d, lambda s: s.__setitem__(key, s[key][:, :1].contiguous())))
    line = _error(spec)
    assert key in line and all(x in line for x in says), line


def test_truncated_weights_are_a_one_line_error(fam, tmp_path):
    def cut(d):
        f = d / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    line = _error(_broken(fam, tmp_path, "fp8-block", cut))
    assert "model.safetensors is truncated" in line and "download it again" in line, line


@pytest.mark.parametrize("edit, says", [
    (lambda q: q["config_groups"]["group_0"].update(format="marlin-24"), "format 'marlin-24' (group group_0)"),
    (lambda q: q.update(format="nvfp4-pack-quantized"), "format 'nvfp4-pack-quantized'"),
    (lambda q: q.update(sparsity_config={"format": "sparse-16-bitmask"}), "sparsity format 'sparse-16-bitmask'")])
def test_unknown_compressed_tensors_format_is_a_one_line_error(fam, tmp_path, edit, says):
    _needs_writer("ct-int4-group")
    line = _error(_broken(fam, tmp_path, "ct-int4-group", lambda d: _edit_config(d, edit)))
    assert says in line and ("pack-quantized" in line or "ModelCompressor" in line), line


def test_bitsandbytes_without_quant_state_is_a_one_line_error(fam, tmp_path):
    _needs_writer("bnb-nf4")
    name = "model.layers.1.self_attn.k_proj.weight"
    spec = _broken(fam, tmp_path, "bnb-nf4", lambda d: _edit_tensors(d, lambda s: s.pop(name + ".absmax")))
    line = _error(spec)
    assert f"{name} has no {name}.absmax" in line and "download it again" in line, line


def test_unknown_quant_method_is_a_one_line_error(fam, tmp_path):
    spec = _broken(fam, tmp_path, "fp8-block", lambda d: _edit_config(d, lambda q: q.update(quant_method="hqq")))
    line = _error(spec)
    assert "'hqq' is not supported" in line and "fp8" in line, line
