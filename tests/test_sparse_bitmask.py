"""compressed-tensors' sparse bitmask formats (``sparsity_config.format`` ``sparse-24-bitmask`` and
``sparse-bitmask``), alone or wrapping a quantization format.

The package's own sparse compressors are gone from the releases installed here (they shipped up to
0.14.0): ``tests/data/ct_sparse.safetensors`` holds their output (see ``tests/data/make_ct_sparse.py``),
against which both the reader's arithmetic and the test writer are checked.  Tiny models written
sparse, with and without quantization: every layer is the package's quantization decompressor's
output on the kept codes, and zero elsewhere; planted permutations are recovered; ``cos`` is
significant on a sparse fine-tune against its dense base, not against an independent model, and
uniform over 30 independent pairs; a sampled row reads that row of the bitmask and its values only;
bad folders are one-line errors."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from family_models import save_trio
from quant_writers import mask_24, prune, sparse_compress, write_compressed, write_sparse
from test_formats import SIG, ReadLog, _edit_config, _edit_tensors, _error
from test_quantized_families import calibration_ks, cos
from tracing.align import align
from tracing.models import Checkpoint
from tracing.sources.sparse import scatter, unpack_bitmask
from tracing.transforms import Permuted, random_permutations

pytest.importorskip("compressed_tensors")

LEGACY = Path(__file__).with_name("data") / "ct_sparse.safetensors"
FP8_CHANNEL = dict(num_bits=8, type="float", symmetric=True, strategy="channel")
INT8_CHANNEL = dict(num_bits=8, type="int", symmetric=True, strategy="channel")
#: name -> (sparsity format, quantization format or None, weight arguments)
CASES = {
    "24-fp8": ("sparse-24-bitmask", "float-quantized", FP8_CHANNEL),
    "24-int8": ("sparse-24-bitmask", "int-quantized", INT8_CHANNEL),
    "24-bf16": ("sparse-24-bitmask", None, {}),
    "any-bf16": ("sparse-bitmask", None, {}),
    "any-int8": ("sparse-bitmask", "int-quantized", INT8_CHANNEL),
}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct-sparse")
    _, paths = save_trio(root, "llama")
    cache = {}

    def get(case: str, tag: str = "base") -> Path:
        if (case, tag) not in cache:
            sparsity, fmt, weights = CASES[case]
            cache[case, tag] = write_sparse(paths[tag], root / f"{case}-{tag}", sparsity, fmt, **weights)
        return cache[case, tag]
    get.paths = paths
    return get


def _legacy():
    from safetensors.torch import load_file
    state = load_file(LEGACY)
    return {c: {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(c + ".")}
            for c in sorted({k.split(".")[0] for k in state})}


@pytest.mark.parametrize("case", ["f32_24", "bf16_24", "fp8_24", "i8_24", "bf16_any", "i8_any"])
def test_reader_and_writer_agree_with_the_package_compressors(case):
    """The package's compressed tensors decode to its own decompressor's output (the dense input
    with the pruned values zeroed), and the test writer writes what the package wrote, bit for bit."""
    t = _legacy()[case]
    dense, c = t["dense"], t["dense"].shape[1]
    ours = scatter(t["compressed"], unpack_bitmask(t["bitmask"], c))
    assert ours.dtype == dense.dtype and ours.shape == dense.shape
    kept = unpack_bitmask(t["bitmask"], c)
    raw = (lambda x: x.view(torch.uint8)) if dense.dtype == torch.float8_e4m3fn else (lambda x: x)
    assert torch.equal(raw(ours)[kept], raw(dense)[kept]) and not raw(ours)[~kept].any()
    if "decompressed" in t:
        assert torch.equal(raw(ours), raw(t["decompressed"]))
    if case.endswith("_24"):
        assert (kept.reshape(-1, 4).sum(1) == 2).all()
    mine = sparse_compress(dense, "sparse-24-bitmask" if case.endswith("_24") else "sparse-bitmask")
    assert sorted(mine) == sorted(k for k in t if k not in ("dense", "decompressed"))
    for k, v in mine.items():
        assert v.dtype == t[k].dtype and torch.equal(raw(v) if k == "compressed" else v,
                                                     raw(t[k]) if k == "compressed" else t[k]), (case, k)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_layer_is_the_package_decompression_of_the_kept_codes(llama, tmp_path, case):
    """Each sparse layer equals the pruned weight (unquantized), or the package's quantization
    decompressor's output on the same model written dense (quantized); every other tensor as stored."""
    from safetensors.torch import load_file
    sparsity, fmt, weights = CASES[case]
    ck = Checkpoint(str(llama(case)))
    src = Checkpoint(str(llama.paths["base"]))
    if fmt:
        folder = write_compressed(llama.paths["base"], tmp_path / "dense", fmt, before=lambda t: prune(t, sparsity),
                                  **weights)
        dense, codes = Checkpoint(str(folder)), load_file(folder / "model.safetensors")
    layers = 0
    for n in src.names():
        a, b = src.get(n), ck.get(n)
        assert b.dtype == torch.float32 and b.shape == a.shape, n
        if ck.quantized.tensor_types().get(n, "").startswith(("sparse", "2:4 sparse")):
            layers += 1
            if fmt:  # the codes the package keeps (2:4: by int8 abs(), which drops codes of -128)
                kept = mask_24(codes[n]) if sparsity == "sparse-24-bitmask" else codes[n] != 0
                want = dense.get(n) * kept
            else:
                want = prune(a, sparsity).bfloat16().float()
            assert torch.equal(b, want), n
            if sparsity == "sparse-24-bitmask":
                assert ((b.reshape(-1, 4) != 0).sum(1) <= 2).all(), n
        else:
            assert torch.equal(b, a), n
    assert layers == 7 * ck.arch.L
    prov = ck.quantized.quantization()
    assert sparsity in prov["undone"] and prov["types"].startswith(("2:4 sparse " if "24" in case else "sparse "))


@pytest.mark.parametrize("case", ["24-fp8", "any-bf16"])
def test_planted_permutation_recovered_and_power(llama, case):
    base_q, ft_q = Checkpoint(str(llama(case))), Checkpoint(str(llama(case, "ft")))
    pi_e, pi_i = random_permutations(ft_q.arch, seed=11)
    al = align(base_q, Permuted(ft_q, pi_e, pi_i), progress=False)
    assert np.array_equal(al.pi_e, torch.argsort(pi_e).numpy())
    for key, p in pi_i.items():
        assert np.array_equal(al.pi_i[key], torch.argsort(p).numpy()), key
    base = Checkpoint(str(llama.paths["base"]))
    assert cos(base, ft_q).log10_pvalue < -6
    assert cos(base, Checkpoint(str(llama(case, "indep")))).log10_pvalue > SIG


def test_cos_calibrated_on_independent_pairs(tmp_path):
    """30 independent pairs (a dense model against an independent one, 2:4 sparse in FP8): uniform p-values."""
    sparsity, fmt, weights = CASES["24-fp8"]
    assert calibration_ks(tmp_path, "llama", 1300, lambda f, k: str(
        write_sparse(f, tmp_path / f"q{k}", sparsity, fmt, **weights))) > 0.01


@pytest.mark.parametrize("case", ["24-fp8", "any-int8"])
def test_sampled_rows_read_their_bitmask_row_and_values_only(llama, case, monkeypatch):
    ck = Checkpoint(str(llama(case, "ft")))
    names = [ck.arch.block_name(i, r) for i in range(ck.arch.L) for r in ("q", "up", "down")]
    idx = np.array([1, 2, 7, 19, 30])
    whole = {n: ck.get(n)[torch.from_numpy(idx)] for n in names}
    ck.quantized._last = None
    log = ReadLog(monkeypatch)
    for n in names:
        assert torch.equal(ck.get_rows(n, idx), whole[n]), n
    assert all(k.endswith(".shape") or math.prod(ck.quantized.meta(k).shape) == 1 for k in log.whole), log.whole
    for key, n in log.rows:
        stored = ck.quantized.meta(key).shape
        if key.endswith(".compressed") and len(stored) == 1:  # the values of those rows only
            mod = key[: -len(".compressed")]
            assert n == int(sum((ck.get(mod + ".weight")[i] != 0).sum() for i in idx)) < stored[0], key
        else:
            assert n == len(idx), key
    assert sum(k.endswith(".bitmask") for k, _ in log.rows) == len(names)


def _copy(src: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    return bad


def test_bad_sparse_folders_are_one_line_errors(llama, tmp_path):
    mod = "model.layers.1.mlp.up_proj"
    bad = _copy(llama("24-fp8"), tmp_path)
    _edit_tensors(bad, lambda s: s.pop(f"{mod}.bitmask"))
    line = _error(str(bad))  # without its bitmask the layer's values cannot be placed: nothing reads it as dense
    assert f"{mod}.weight is missing" in line and "download it again" in line, line
    shutil.rmtree(bad)
    bad = _copy(llama("any-bf16"), tmp_path)
    _edit_tensors(bad, lambda s: s.pop(f"{mod}.row_offsets"))
    line = _error(str(bad))
    assert f"{mod}.compressed has no {mod}.row_offsets" in line and "download it again" in line, line
    shutil.rmtree(bad)
    bad = _copy(llama("24-fp8"), tmp_path)
    _edit_tensors(bad, lambda s: s.__setitem__(f"{mod}.bitmask", s[f"{mod}.bitmask"][:, :1].contiguous()))
    line = _error(str(bad))
    assert f"{mod}.bitmask has shape" in line and "sparse-24-bitmask" in line, line
    shutil.rmtree(bad)
    bad = _copy(llama("24-fp8"), tmp_path)
    _edit_config(bad, lambda q: q.pop("sparsity_config"))
    line = _error(str(bad))
    assert "is stored sparse" in line and "sparsity_config" in line, line
