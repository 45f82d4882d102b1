"""Quantized checkpoints of every family (dense and mixture-of-experts).

GGUF files written as llama.cpp's converter writes them (tensor names from gguf-py's table, Gemma's
1 + w norm gains, GPT-NeoX's regrouped query_key_value, fused Phi-3 tensors): every tensor equals its
checkpoint's, the function is preserved, planted permutations are recovered, cos has power and is
calibrated, and bad files are one-line errors. GPTQ and AWQ folders (fused layers packed whole, as
AutoGPTQ and AutoAWQ pack them): every tensor within its group's rounding, planted permutations
recovered, power, calibration."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from family_models import DENSE, MOE, family_config, family_model, logits, random_ids, rel_diff, save_trio
from quant_writers import write_awq, write_gguf, write_gptq
from tracing.align import align
from tracing.errors import TracingError
from tracing.models import Checkpoint, load_module
from tracing.options import Options
from tracing.stats import get as get_stat
from tracing.stats.base import Context
from tracing.transforms import Permuted, random_permutations

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = DENSE + MOE
# their config is built from the GGUF metadata
FROM_METADATA = ("qwen3", "gemma2", "gemma3_text", "phi3", "mixtral", "qwen2_moe", "qwen3_moe")
# llama.cpp writes no output tensor for Gemma and Gemma 2 (their head is the embedding)
TIED = {"gemma": {"tie_word_embeddings": True}, "gemma2": {"tie_word_embeddings": True}}


def cos(base, ft):
    return get_stat("cos").fn(Context(Options(stat=["cos"]), progress=False), base, ft)


def gguf_folder(hf: Path, out: Path, qtype: str) -> str:
    """A folder holding the model's config.json and its GGUF file: the spec ``folder:file.gguf``."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(hf / "config.json", out / "config.json")
    f = write_gguf(hf, out / f"model.{qtype}.gguf", qtype)
    return f"{out}:{f.name}"


def calibration_ks(tmp_path: Path, family: str, seed: int, quantized) -> float:
    """KS p-value of cos over 30 independent pairs: a float model against an independent one
    read through ``quantized(float folder, k) -> spec``."""
    cfg = family_config(family)
    p = []
    for k in range(30):
        a, b = family_model(cfg, seed=seed + 2 * k), family_model(cfg, seed=seed + 1 + 2 * k)
        a.save_pretrained(tmp_path / f"a{k}")
        b.save_pretrained(tmp_path / f"b{k}")
        p.append(10 ** cos(Checkpoint(str(tmp_path / f"a{k}")), Checkpoint(quantized(tmp_path / f"b{k}", k)))
                 .log10_pvalue)
    return scipy.stats.kstest(p, "uniform").pvalue


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-families")
    cache = {}

    def make(family):
        if family not in cache:
            cache[family] = (*save_trio(root / family, family, **TIED.get(family, {})), root / family)
        return cache[family]
    return make


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_equals_the_checkpoint(fam, family):
    _, paths, root = fam(family)
    ref = Checkpoint(str(paths["base"]))
    specs = [gguf_folder(paths["base"], root / "g-f32", "F32")]
    if family in FROM_METADATA:
        specs.append(str(write_gguf(paths["base"], root / "bare" / "model.gguf", "F32")))
    for spec in specs:
        ck = Checkpoint(spec)
        assert ck.quantized is not None and ck.arch.model_type == ref.arch.model_type
        for k in ("L", "d", "h", "n_heads", "n_kv_heads", "head_dim", "V", "tied", "n_experts", "h_expert",
                  "h_shared"):
            assert getattr(ck.arch, k) == getattr(ref.arch, k), (spec, k)
        names = ref.arch.names()
        assert names == ck.arch.names()
        for n in names:
            if family.startswith("gemma") and n.endswith("norm.weight"):  # stored as 1 + w in float32: 1 ulp of 1
                assert torch.allclose(ck.get(n), ref.get(n), rtol=0, atol=2 ** -23), (spec, n)
            else:
                assert torch.equal(ck.get(n), ref.get(n)), (spec, n)


@pytest.mark.parametrize("family", FAMILIES)
def test_function_preserved_through_gguf(fam, family):
    model, paths, root = fam(family)
    ids = random_ids(model.config.vocab_size)
    ck = Checkpoint(gguf_folder(paths["base"], root / "g-fn", "F32"))
    assert rel_diff(logits(model, ids), logits(load_module(ck), ids)) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_permutation_recovered_from_q8(fam, family):
    _, paths, root = fam(family)
    base = Checkpoint(gguf_folder(paths["base"], root / "g-q8-base", "Q8_0"))
    ft = Checkpoint(gguf_folder(paths["ft"], root / "g-q8-ft", "Q8_0"))
    pi_e, pi_i = random_permutations(ft.arch, seed=11)
    al = align(base, Permuted(ft, pi_e, pi_i), progress=False)
    inv = lambda p: torch.argsort(p).numpy()  # noqa: E731
    assert np.array_equal(al.pi_e, inv(pi_e))
    for key, p in pi_i.items():
        assert np.array_equal(al.pi_i[key], inv(p)), key


@pytest.mark.parametrize("family", FAMILIES)
def test_cos_power_and_independence_on_q4(fam, family):
    _, paths, root = fam(family)
    base = Checkpoint(str(paths["base"]))
    dep = cos(base, Checkpoint(gguf_folder(paths["ft"], root / "g-q4-ft", "Q4_0")))
    assert dep.log10_pvalue < -6
    indep = cos(base, Checkpoint(gguf_folder(paths["indep"], root / "g-q4-indep", "Q4_0")))
    assert indep.log10_pvalue > math.log10(0.01)


def test_cos_calibrated_on_fused_q4_gguf(tmp_path):
    """Phi-3 (up rows read through the fused gate_up tensor of a Q4_0 file): 30 independent pairs."""
    assert calibration_ks(tmp_path, "phi3", 100, lambda f, k: gguf_folder(f, tmp_path / f"g{k}", "Q4_0")) > 0.01


def _one_line(spec: str, tmp_path: Path) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--base_model_id", spec, "--ft_model_id", spec,
                        "--stat", "cos", "--save", str(tmp_path / "r.p")], capture_output=True, text=True, cwd=ROOT)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-1500:]
    assert not (tmp_path / "r.p").exists()
    return lines[0]


def test_bad_gguf_inputs_are_one_line_errors(fam, tmp_path):
    _, paths, root = fam("olmo2")
    bare = write_gguf(paths["base"], tmp_path / "olmo2" / "model.gguf", "Q8_0")
    line = _one_line(str(bare), tmp_path)
    assert "cannot be built from its metadata" in line and "config.json" in line
    _, qpaths, _ = fam("qwen3")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shutil.copy(paths["base"] / "config.json", wrong / "config.json")  # an olmo2 config beside a qwen3 file
    f = write_gguf(qpaths["base"], wrong / "q.gguf", "Q8_0")
    with pytest.raises(TracingError, match="architecture is 'qwen3' but its config says 'olmo2'"):
        Checkpoint(f"{wrong}:{f.name}")
    cfg = json.loads((qpaths["base"] / "config.json").read_text())
    assert cfg["model_type"] == "qwen3"


PACKED = {"gptq": lambda hf, out: write_gptq(hf, out), "awq": lambda hf, out: write_awq(hf, out, spread=0)}


def _row_bound(ref: torch.Tensor) -> torch.Tensor:
    """Largest 4-bit asymmetric rounding error of each element: half a step of its row's range
    (a group's range is at most its row's), plus float16 rounding of the scale."""
    if ref.ndim == 1:
        return ref.abs() * 1e-3 + 1e-6  # stored in float16
    lo, hi = ref.amin(1, keepdim=True).clamp_max(0), ref.amax(1, keepdim=True).clamp_min(0)
    return ((hi - lo) / 15 * 0.51 + 1e-6).expand_as(ref) + ref.abs() * 2e-3


@pytest.mark.parametrize("fmt", sorted(PACKED))
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_int4_tensors_within_rounding(fam, family, fmt):
    _, paths, root = fam(family)
    ref = Checkpoint(str(paths["base"]))
    ck = Checkpoint(str(PACKED[fmt](paths["base"], root / f"{fmt}-base")))
    assert ck.quantized is not None and ck.quantized.format == fmt
    quantized = 0
    for n in ref.arch.names():
        a, b = ref.get(n), ck.get(n)
        assert a.shape == b.shape, n
        assert bool(((a - b).abs() <= _row_bound(a)).all()), (n, (a - b).abs().max())
        quantized += a.ndim == 2 and not torch.equal(a.half().float(), b)
    assert quantized >= 4 * ref.arch.L  # every block's linear layers went through the packing


@pytest.mark.parametrize("fmt", sorted(PACKED))
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_int4_permutation_recovered_and_power(fam, family, fmt):
    _, paths, root = fam(family)
    base_q = Checkpoint(str(PACKED[fmt](paths["base"], root / f"{fmt}-b")))
    ft_q = Checkpoint(str(PACKED[fmt](paths["ft"], root / f"{fmt}-f")))
    pi_e, pi_i = random_permutations(ft_q.arch, seed=11)
    al = align(base_q, Permuted(ft_q, pi_e, pi_i), progress=False)
    assert np.array_equal(al.pi_e, torch.argsort(pi_e).numpy())
    for key, p in pi_i.items():
        assert np.array_equal(al.pi_i[key], torch.argsort(p).numpy()), key
    base = Checkpoint(str(paths["base"]))
    assert cos(base, ft_q).log10_pvalue < -6
    indep = Checkpoint(str(PACKED[fmt](paths["indep"], root / f"{fmt}-i")))
    assert cos(base, indep).log10_pvalue > math.log10(0.01)


def test_cos_calibrated_on_fused_gptq(tmp_path):
    """Phi-3 GPTQ (the fused gate_up layer packed whole, act-order groups): 30 independent pairs."""
    assert calibration_ks(tmp_path, "phi3", 300, lambda f, k: str(write_gptq(f, tmp_path / f"q{k}", seed=k))) > 0.01


def test_cos_calibrated_on_moe_q4_gguf(tmp_path):
    """Qwen3-MoE (experts matched per block, each expert's up rows read from the stacked ffn_up_exps
    of a Q4_0 file): 30 independent pairs."""
    assert calibration_ks(tmp_path, "qwen3_moe", 500, lambda f, k: gguf_folder(f, tmp_path / f"g{k}", "Q4_0")) > 0.01


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_reads_sampled_rows_alone(fam, family, monkeypatch):
    """Sampled cos on a GGUF file dequantizes only the K chosen rows of each up projection (a fused
    tensor's role rows, a stacked tensor's expert rows), never the whole tensor."""
    from tracing.sources.gguf import GGUFBackend
    from tracing.stats.base import sampled_rows
    _, paths, root = fam(family)
    ck = Checkpoint(gguf_folder(paths["ft"], root / "g-rows", "Q4_0"))
    units = ck.arch.units(0)
    idx = sampled_rows(units[0].width, 16, seed=3)
    whole = {u.up: ck.get(u.up)[torch.from_numpy(idx)] for u in units}
    ck.quantized._last = None
    monkeypatch.setattr(GGUFBackend, "_dequantize", lambda *a: pytest.fail("a whole tensor was dequantized"))
    for u in units:
        assert torch.equal(ck.get_rows(u.up, idx), whole[u.up]), u.up


def test_metadata_key_table_is_transformers_own():
    """The GGUF metadata keys are read without transformers through a table of our own: it must be
    transformers' own table for every architecture whose config is built from the metadata."""
    from transformers.integrations import GGUF_CONFIG_MAPPING

    from tracing.sources.gguf import METADATA_ARCHS, metadata_keys
    families = {m if m.endswith("_moe") else a for a, m in METADATA_ARCHS.items()}  # as metadata_config picks
    for fam_key in sorted(families):
        assert metadata_keys(fam_key) == GGUF_CONFIG_MAPPING[fam_key], fam_key


@pytest.mark.parametrize("family", FROM_METADATA)
def test_config_as_data_gives_the_architecture_transformers_config_gives(fam, family):
    """The config read as data from a bare GGUF file and transformers' config object built from the
    same metadata give the same adapter view (every field of the Arch), and the data config holds
    every value transformers' config was given."""
    from tracing.arch import arch_from_config
    from tracing.sources.gguf import config_from_metadata, metadata_config, open_reader
    _, paths, root = fam(family)
    f = write_gguf(paths["base"], root / "bare-data" / "model.gguf", "F32")
    reader = open_reader(f)
    data, obj = metadata_config(reader, f), config_from_metadata(reader, f)
    assert arch_from_config(data) == arch_from_config(obj) == Checkpoint(str(f)).arch
    for key, value in data.items():
        if key != "rope_theta":  # transformers 5 keeps it in rope_parameters (per layer type for Gemma 3)
            assert getattr(obj, key) == value, key
