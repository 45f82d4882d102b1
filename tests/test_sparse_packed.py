"""compressed-tensors' sparsity formats (``sparse-24-bitmask``, ``sparse-bitmask``) wrapping ``pack-quantized``
int4 / int8 weights.

The package's sparse compressor compresses ``<module>.weight`` only, and runs after the quantization
compressor, which has replaced it by ``weight_packed``: such a checkpoint stores its layers packed, as
``pack-quantized`` alone does, with no bitmask; the pruned values are zero codes.
``tests/data/ct_sparse_packed.safetensors`` holds what ``ModelCompressor`` 0.14.0 (the last release
with the sparse compressors) saved, against which the test writer and the reader's arithmetic are
checked.  Tiny models written that way: every layer equals the installed package's decompressor's
output and the pruned weight within half a quantization step (the pruned values zero in both); the
provenance names the format; planted permutations are recovered; ``cos`` is significant on a
sparse-quantized fine-tune against its dense base, not against an independent model, and uniform over
30 independent pairs; a sampled row reads its packed row and its scale row only, locally and by range
requests; bad folders are one-line errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from family_models import save_trio
from quant_writers import ct_compress, mask_24, prune, write_sparse
from test_formats import SIG, ReadLog, _edit_config, _edit_tensors, _error
from test_quantized_families import _one_line, calibration_ks, cos
from hub_server import serving
from test_remote import weight_bytes
from tracing.align import align
from tracing.models import Checkpoint
from tracing.sources.compressed import dequantize, unpack_int32
from tracing.transforms import Permuted, random_permutations

pytest.importorskip("compressed_tensors")

PACKAGE = Path(__file__).with_name("data") / "ct_sparse_packed.safetensors"
INT4_G32 = dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
INT4_G32_ASYM = dict(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32)
INT8_CHANNEL = dict(num_bits=8, type="int", symmetric=True, strategy="channel")
#: case of the package's file -> weight arguments
PACKAGE_QUANT = {"int4g32": INT4_G32, "int4g32asym": INT4_G32_ASYM, "int8ch": INT8_CHANNEL}
#: model case -> (family, sparsity format, weight arguments)
CASES = {
    "24-int4": ("llama", "sparse-24-bitmask", INT4_G32),
    "24-int8": ("llama", "sparse-24-bitmask", INT8_CHANNEL),
    "any-int4-asym": ("llama", "sparse-bitmask", INT4_G32_ASYM),
    "moe-24-int4": ("qwen3_moe", "sparse-24-bitmask", INT4_G32),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct-sparse-packed")
    trios, cache = {}, {}

    def paths(case: str) -> dict:
        """The float base, fine-tune and independent model of the case's family."""
        family = CASES[case][0]
        if family not in trios:
            trios[family] = save_trio(root / family, family)[1]
        return trios[family]

    def get(case: str, tag: str = "base") -> Path:
        if (case, tag) not in cache:
            _, sparsity, weights = CASES[case]
            cache[case, tag] = write_sparse(paths(case)[tag], root / f"{case}-{tag}", sparsity, "pack-quantized",
                                            **weights)
        return cache[case, tag]
    get.paths = paths
    return get


def _package():
    from safetensors import safe_open
    with safe_open(PACKAGE, framework="pt") as h:
        state = {k: h.get_tensor(k) for k in h.keys()}
        configs = json.loads(h.metadata()["configs"])
    cases = {}
    for key, t in state.items():
        case, layer, part = key.split(".")
        cases.setdefault(case, {}).setdefault(layer, {})[part] = t
    return cases, configs


@pytest.mark.parametrize("case", [f"{s}_{q}" for s in ("24", "any") for q in PACKAGE_QUANT])
def test_package_stores_packed_codes_without_a_bitmask(case):
    """What ModelCompressor saved: each layer's packed codes, scales and shape (zero points when
    asymmetric), no bitmask; the test writer writes the same bytes; the reader's arithmetic and the
    installed package's decompressor give what the package decompressed, bit for bit, zero wherever
    the weight was pruned."""
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    cases, configs = _package()
    weights = PACKAGE_QUANT[case.split("_")[1]]
    cfg = configs[case]
    assert cfg["format"] == "pack-quantized"
    assert cfg["sparsity_config"]["format"] == ("sparse-24-bitmask" if case.startswith("24") else "sparse-bitmask")
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))
    for layer, t in cases[case].items():
        stored = {k: v for k, v in t.items() if k != "decompressed"}
        t = {**t, "dense": cases[case.split("_")[0]][layer]["dense"]}
        want = {"weight_packed", "weight_scale", "weight_shape"} | ({"weight_zero_point"} if not weights["symmetric"] else set())
        assert set(stored) == want, (case, layer, sorted(stored))
        assert stored["weight_packed"].dtype == torch.int32 and stored["weight_shape"].dtype == torch.int64
        mine = ct_compress(t["dense"], "pack-quantized", **weights)
        assert sorted(mine) == sorted(stored)
        for k, v in mine.items():
            assert v.dtype == stored[k].dtype and torch.equal(v, stored[k]), (case, layer, k)
        r, c = t["dense"].shape
        q = unpack_int32(stored["weight_packed"], weights["num_bits"], c)
        zero = stored.get("weight_zero_point")
        if zero is not None:
            zero = unpack_int32(zero.T.contiguous(), weights["num_bits"], r).T
        ours = dequantize(q, stored["weight_scale"], zero, weights["strategy"], group_size=weights.get("group_size"))
        theirs = PackedQuantizationCompressor.decompress(stored, scheme)["weight"]
        assert torch.equal(ours, t["decompressed"]) and torch.equal(theirs.float(), t["decompressed"]), (case, layer)
        assert not ours[t["dense"] == 0].any()
        if case.startswith("24"):
            assert ((ours.reshape(-1, 4) != 0).sum(1) <= 2).all()


def _scale_step(stored: dict, weights: dict, shape) -> torch.Tensor:
    s = stored["weight_scale"].float()
    return s.reshape(-1, 1) if weights["strategy"] == "channel" else s[:, torch.arange(shape[1]) // weights["group_size"]]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_layer_is_the_package_decompression_and_the_pruned_weight(models, case):
    """Each layer (each expert) equals the installed package's decompressor on its stored parts, and
    its sampled rows those rows; it is the pruned weight within half a quantization step (a step when
    asymmetric, the zero point rounded), zero wherever the weight was pruned; the provenance names
    the sparsity format over pack-quantized and the quantization."""
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors import safe_open
    _, sparsity, weights = CASES[case]
    folder = models(case)
    ck, src = Checkpoint(str(folder)), Checkpoint(str(models.paths(case)["base"]))
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))
    types = ck.quantized.tensor_types()
    idx = np.array([0, 3, 5, 17, 30])
    layers = 0
    with safe_open(folder / "model.safetensors", framework="pt") as h:
        keys = set(h.keys())
        assert not any(k.endswith((".bitmask", ".compressed")) for k in keys)
        for n in src.names():
            a, b = src.get(n), ck.get(n)
            assert b.dtype == torch.float32 and b.shape == a.shape, n
            mod = n[: -len(".weight")]
            if f"{mod}.weight_packed" not in keys:
                assert torch.equal(b, a), n
                continue
            layers += 1
            stored = {k[len(mod) + 1:]: h.get_tensor(k) for k in keys if k.startswith(mod + ".weight_")}
            assert torch.equal(b, PackedQuantizationCompressor.decompress(stored, scheme)["weight"].float()), n
            rows = idx[idx < b.shape[0]]
            assert torch.equal(ck.get_rows(n, rows), b[torch.from_numpy(rows)]), n
            pruned = prune(a, sparsity)
            assert not b[pruned == 0].any(), n
            step = _scale_step(stored, weights, a.shape) * (0.5 if weights["symmetric"] else 1.0)
            assert ((b - pruned).abs() <= step * (1 + 1e-5) + 1e-7).all(), n
            if sparsity == "sparse-24-bitmask":
                assert ((b.reshape(-1, 4) != 0).sum(1) <= 2).all(), n
            kind = ("2:4 sparse" if "24" in sparsity else "sparse") + f" packed int{weights['num_bits']}"
            assert types[n].startswith(kind), (n, types[n])
    assert layers >= 7 * ck.arch.L
    prov = ck.quantized.quantization()
    assert prov["format"] == "compressed-tensors"
    g = "g32" if weights["strategy"] == "group" else "per-channel"
    assert prov["types"].startswith(f"{'2:4 sparse' if '24' in sparsity else 'sparse'} packed int{weights['num_bits']} {g}")
    assert f"{sparsity} over pack-quantized" in prov["undone"] and "no bitmask" in prov["undone"], prov["undone"]
    assert "put back in place" not in prov["undone"], prov["undone"]  # nothing was scattered


def test_the_package_config_reads_the_same(models, tmp_path):
    """The quantization_config ModelCompressor writes (group format null, no ignore lists) in place of
    the test writer's: the same tensors and provenance."""
    _, configs = _package()
    ours = Checkpoint(str(models("24-int4")))
    theirs = _copy(models("24-int4"), tmp_path)
    _edit_config(theirs, lambda q: (q.clear(), q.update(configs["24_int4g32"])))
    theirs = Checkpoint(str(theirs))
    assert theirs.quantized.quantization() == ours.quantized.quantization()
    for n in ours.names():
        assert torch.equal(theirs.get(n), ours.get(n)), n


@pytest.mark.parametrize("case", ["24-int4", "moe-24-int4"])
def test_planted_permutation_recovered_and_power(models, case):
    base_q, ft_q = Checkpoint(str(models(case))), Checkpoint(str(models(case, "ft")))
    pi_e, pi_i = random_permutations(ft_q.arch, seed=11)
    al = align(base_q, Permuted(ft_q, pi_e, pi_i), progress=False)
    assert np.array_equal(al.pi_e, torch.argsort(pi_e).numpy())
    for key, p in pi_i.items():
        assert np.array_equal(al.pi_i[key], torch.argsort(p).numpy()), key
    base = Checkpoint(str(models.paths(case)["base"]))
    assert cos(base, ft_q).log10_pvalue < -6
    assert cos(base, Checkpoint(str(models(case, "indep")))).log10_pvalue > SIG


def test_cos_calibrated_on_independent_pairs(tmp_path):
    """30 independent pairs (a dense model against an independent one, 2:4 sparse over packed int4 g32)."""
    assert calibration_ks(tmp_path, "llama", 1700, lambda f, k: str(
        write_sparse(f, tmp_path / f"q{k}", "sparse-24-bitmask", "pack-quantized", **INT4_G32))) > 0.01


@pytest.mark.parametrize("case", ["24-int4", "any-int4-asym"])
def test_sampled_rows_read_their_packed_row_and_scale_row_only(models, case, monkeypatch):
    ck = Checkpoint(str(models(case, "ft")))
    names = [ck.arch.block_name(i, r) for i in range(ck.arch.L) for r in ("q", "up", "down")]
    idx = np.array([1, 2, 7, 19, 30])
    whole = {n: ck.get(n)[torch.from_numpy(idx)] for n in names}
    ck.quantized._last = None
    log = ReadLog(monkeypatch)
    for n in names:
        assert torch.equal(ck.get_rows(n, idx), whole[n]), n
    assert all(k.endswith(".weight_shape") for k in log.whole), log.whole
    packed = [n for k, n in log.rows if k.endswith(".weight_packed")]
    assert len(packed) == len(names) and all(n == len(idx) for n in packed)
    assert all(n <= len(idx) for _, n in log.rows), log.rows  # scale rows; zero points: a word row per 8 rows


def _copy(src: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    return bad


def test_sparse_values_in_packed_words_are_a_one_line_error(models, tmp_path):
    """A bitmask over int32 words (packed codes, which compressed-tensors never stores sparse) would be
    read as the values themselves: refused, naming the tensor and its type, exit 2, no record."""
    mod = "model.layers.1.mlp.up_proj"

    def sparsify(s):
        packed = s.pop(f"{mod}.weight_packed")
        keep = mask_24(packed.float())
        s[f"{mod}.compressed"] = packed[keep].reshape(packed.shape[0], -1).contiguous()
        s[f"{mod}.bitmask"] = torch.from_numpy(np.packbits(keep.numpy(), axis=-1, bitorder="little"))
        s[f"{mod}.shape"] = torch.tensor(list(packed.shape)).reshape(-1, 1)
    bad = _copy(models("24-int4"), tmp_path)
    _edit_tensors(bad, sparsify)
    line = _one_line(str(bad), tmp_path)
    assert f"{mod}.compressed holds I32 values" in line and "weight_packed" in line, line


def test_unknown_sparsity_format_over_packed_is_a_one_line_error(models, tmp_path):
    bad = _copy(models("24-int4"), tmp_path)
    _edit_config(bad, lambda q: q["sparsity_config"].update(format="sparse-32-bitmask"))
    line = _error(str(bad))
    assert "sparsity format 'sparse-32-bitmask'" in line and "sparse-24-bitmask" in line, line


def test_sampled_rows_by_range_requests(models, tmp_path, monkeypatch):
    """The same folder on the loopback hub: sampled rows equal the local read, with the same
    provenance, and only those rows of the packed codes and scales are sent."""
    q = models("24-int4", "ft")
    hub = serving({"org/sparse-packed": q}, tmp_path, monkeypatch, stall=1.5)
    try:
        _range_reads(hub, q)
    finally:
        hub.close()


def _range_reads(hub, q: Path) -> None:
    remote, local = Checkpoint("org/sparse-packed", remote=True), Checkpoint(str(q))
    assert remote.resolved.remote and not any(remote.path.glob("*.safetensors"))
    assert remote.backend.tensor_types() == local.backend.tensor_types()
    assert remote.backend.quantization() == local.backend.quantization()
    up = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(local.arch.L)]
    idx = np.array([2, 9, 40])
    planned = remote.backend.header_bytes() + sum(remote.backend.planned_bytes(t, idx) for t in up)
    for t in up:
        assert torch.equal(remote.get_rows(t, idx), local.get_rows(t, idx)), t
    served = sum(weight_bytes(hub, "org/sparse-packed").values())
    assert served == planned
    row = sum(local.quantized.meta(f"{t[:-len('.weight')]}.{p}").shape[1] * 4 for t in up
              for p in ("weight_packed", "weight_scale"))
    assert served - remote.backend.header_bytes() <= len(idx) * row + 16 * len(up), served
