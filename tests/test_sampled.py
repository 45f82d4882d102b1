"""Sampled cos and emb (--rows K): row reads, exactness under independence, power, bad input."""
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from helpers import finetuned, tiny_config, tiny_model

import tracing
from tracing.errors import TracingError
from tracing.models import Checkpoint, from_module
from tracing.stats.base import sampled_rows
from tracing.transforms import permute

SIG = math.log10(0.01)
DEMO_DEPENDENT = [("base-a", "a-docs"), ("base-a", "a-docs-v2"), ("base-a", "a-sys"), ("a-docs", "a-docs-v2"),
                  ("a-docs", "a-sys"), ("base-b", "b-docs")]
DEMO_INDEPENDENT = [("base-a", "base-b"), ("base-a", "base-c"), ("base-b", "base-c"), ("a-docs", "b-docs"),
                    ("a-sys", "base-c"), ("b-docs", "base-c")]


def run(stat, a, b, **kw):
    return tracing.compare_models(a, b, stat=stat, **kw)


def test_sampled_rows_depend_on_the_seed_only():
    a, b = sampled_rows(96, 32, seed=3), sampled_rows(96, 32, seed=3)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 96
    assert not np.array_equal(a, sampled_rows(96, 32, seed=4))
    with pytest.raises(TracingError):
        sampled_rows(96, 97, seed=0)


def test_checkpoint_reads_only_the_rows(tmp_path, monkeypatch):
    model = tiny_model(tiny_config(L=2, d=32, h=96), seed=5)
    model.save_pretrained(tmp_path / "m")
    ck = Checkpoint(str(tmp_path / "m"))
    name = ck.arch.block_name(1, "up")
    idx = sampled_rows(96, 20, seed=1)
    full = ck.get(name)[torch.from_numpy(idx)]
    monkeypatch.setattr(Checkpoint, "get", lambda *a, **k: pytest.fail("get_rows read the whole tensor"))
    assert torch.equal(ck.get_rows(name, idx), full)


def test_permuted_view_rows_match_the_full_view():
    src = from_module(tiny_model(tiny_config(L=2, d=32, h=96), seed=6))
    view = permute(src, seed=9)
    idx = sampled_rows(96, 24, seed=2)
    for i in range(2):
        for role in ("up", "gate"):
            name = src.arch.block_name(i, role)
            assert torch.equal(view.get_rows(name, idx), view.get(name)[torch.from_numpy(idx)])


def _independent_pairs(n, seed0=900):
    cfg = tiny_config("llama", L=2, d=64, h=96, V=96)
    for k in range(n):
        yield from_module(tiny_model(cfg, seed=seed0 + 2 * k)), from_module(tiny_model(cfg, seed=seed0 + 2 * k + 1))


@pytest.mark.parametrize("stat", ["cos", "emb"])
def test_sampled_pvalues_uniform_under_independence(stat):
    ps = []
    for a, b in _independent_pairs(60):
        res = run(stat, a, b, rows=32)
        assert res.extra["rows"] == 32 and res.extra["rows_seed"] == 0
        ps.append(10 ** res.log10_pvalue)
    assert sps.kstest(ps, "uniform").pvalue > 0.01
    assert min(ps) > 1e-4


@pytest.mark.parametrize("stat", ["cos", "emb"])
def test_sampled_noisy_copies_significant(stat):
    cfg = tiny_config("llama", L=2, d=64, h=96, V=96)
    for seed in range(3):
        base = tiny_model(cfg, seed=50 + seed)
        res = run(stat, from_module(base), from_module(finetuned(base, seed=seed, noise=0.3)), rows=32)
        assert res.log10_pvalue < -6


def test_sampled_identical_models_reach_the_floor_of_k():
    a = from_module(tiny_model(tiny_config(L=2, d=32, h=96), seed=8))
    res = run("cos", a, a, rows=40)
    floor = -math.lgamma(41) / math.log(10)
    assert all(row["log10_pvalue"] == pytest.approx(floor) and row["n_pairs"] == 40 for row in res.per_layer)


@pytest.mark.parametrize("pair", DEMO_DEPENDENT)
def test_demo_dependent_pairs_significant_with_64_rows(pair):
    res = tracing.compare(f"demo:{pair[0]}", f"demo:{pair[1]}", stat="cos", rows=64)
    assert res.log10_pvalue < SIG and res.extra["rows"] == 64
    assert tracing.compare(f"demo:{pair[0]}", f"demo:{pair[1]}", stat="emb", rows=32).log10_pvalue < SIG


@pytest.mark.parametrize("pair", DEMO_INDEPENDENT)
def test_demo_independent_pairs_not_significant_with_64_rows(pair):
    res = tracing.compare(f"demo:{pair[0]}", f"demo:{pair[1]}", stat="cos", rows=64)
    assert res.log10_pvalue > SIG


def test_sampled_with_align_recovers_a_permuted_copy():
    res = tracing.compare("demo:base-a", "demo:a-docs", stat="cos", rows=32, permute=True, align=True)
    assert res.log10_pvalue > SIG
    assert res["aligned"]["log10_pvalue"] < -20


@pytest.mark.parametrize("args, words", [
    (["--rows", "0"], "positive"), (["--rows", "-2"], "positive"), (["--rows", "129"], "larger than the MLP width"),
    (["--rows", "65", "--stat", "emb"], "residual width"), (["--rows", "8", "--stat", "cos,l2"], "only cos, emb"),
])
def test_bad_rows_one_line_exit_2(args, words, capsys, tmp_path):
    import main
    from tracing.cli_util import run_cli
    out = tmp_path / "x.p"
    code = run_cli(main.main, ["--base_model_id", "demo:base-a", "--ft_model_id", "demo:a-docs", "--quiet",
                               "--save", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and words in err
    assert not out.exists()


@pytest.mark.parametrize("stat", ["cos", "emb"])
def test_sampled_cost_is_a_fraction_of_the_full_cost(stat):
    from types import SimpleNamespace

    from tracing.arch import arch_from_config
    from tracing.options import Options
    from tracing.stats import get
    from tracing.stats.cost import Sizing
    arch = arch_from_config({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                             "num_hidden_layers": 32, "vocab_size": 32000, "num_attention_heads": 32})
    info = SimpleNamespace(arch=arch, params=arch.num_params(), bytes_per_param=2)
    full = get(stat).cost(Sizing.from_infos(info, info, Options(stat=[stat]), cpus=2))
    part = get(stat).cost(Sizing.from_infos(info, info, Options(stat=[stat], rows=1024), cpus=2))
    assert part.seconds < full.seconds / 5 and part.mem_bytes < full.mem_bytes


def test_rows_is_part_of_the_result_key_of_sampled_statistics_only():
    from tracing.options import Options
    assert Options(stat=["cos"], rows=64).key_for("cos") != Options(stat=["cos"]).key_for("cos")
    assert Options(stat=["emb"], rows=64).key_for("emb") != Options(stat=["emb"], rows=32).key_for("emb")
    assert Options(stat=["l2"]).key_for("l2") == Options(stat=["l2"], seed=0).key_for("l2")


def test_row_reader_reads_runs_of_rows_exactly(tmp_path):
    from safetensors.torch import save_file

    from tracing.rows import read_rows, runs
    t = torch.randn(50, 7).to(torch.bfloat16)
    save_file({"a": torch.zeros(3), "w": t}, str(tmp_path / "x.safetensors"))
    idx = np.array([0, 1, 2, 9, 20, 21, 49])
    assert runs(idx) == [(0, 0, 3), (3, 9, 1), (4, 20, 2), (6, 49, 1)]
    assert torch.equal(read_rows(tmp_path / "x.safetensors", "w", idx), t[torch.from_numpy(idx)])
    assert read_rows(tmp_path / "x.safetensors", "w", [3, 2]) is None  # unsorted: left to safetensors


def test_sampled_cos_never_reads_a_whole_up_projection(tmp_path, monkeypatch):
    cfg = tiny_config(L=2, d=32, h=96)
    base = tiny_model(cfg, seed=11)
    base.save_pretrained(tmp_path / "a")
    finetuned(base, seed=1, noise=0.2).save_pretrained(tmp_path / "b")
    real_get = Checkpoint.get

    def get(self, name, dtype=torch.float32):
        assert "up_proj" not in name, f"{name} read whole"
        return real_get(self, name, dtype)

    monkeypatch.setattr(Checkpoint, "get", get)
    res = tracing.compare(str(tmp_path / "a"), str(tmp_path / "b"), stat="cos", rows=24)
    assert res.extra["rows"] == 24 and res.log10_pvalue < -6


@pytest.mark.parametrize("family", ["phi3", "gpt_neox"])
def test_fused_tensor_rows_read_alone(family, tmp_path):
    """Roles stored inside a fused tensor (Phi-3 gate_up, GPT-NeoX's single up) read only their rows."""
    from family_models import family_config, family_model
    family_model(family_config(family, d=32, h=64), seed=4).save_pretrained(tmp_path / "m")
    ck = Checkpoint(str(tmp_path / "m"))
    idx = sampled_rows(ck.arch.h, 20, seed=5)
    for i in range(ck.arch.L):
        name = ck.arch.units(i)[0].up
        assert torch.equal(ck.get_rows(name, idx), ck.get(name)[torch.from_numpy(idx)])
