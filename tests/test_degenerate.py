"""Degenerate inputs: zero-padded or non-finite rows, matched cosines, and what the record shows."""
import math

import numpy as np
import pytest
import torch

from helpers import finetuned, one_torch_thread, random_like, tiny_config, tiny_model

from tracing.align import match_pairs
from tracing.models import from_module
from tracing.options import Options
from tracing.stats import Context, get


def ctx(stat, ids=None, **kw):
    return Context(Options(stat=[stat], **kw), progress=False, tokens=(lambda: ids) if ids is not None else None)


def run(stat, base, ft, ids=None, **kw):
    return get(stat).fn(ctx(stat, ids, **kw), base, ft)


def test_cos_records_median_matched_cosine_per_layer():
    cfg = tiny_config("llama", L=2, d=32, h=64, V=96)
    base = from_module(tiny_model(cfg, seed=1))
    ft = from_module(finetuned(tiny_model(cfg, seed=1), seed=2, noise=0.2))
    res = run("cos", base, ft)
    for row in res.per_layer:
        U1 = base.get(base.arch.block_name(row["layer"], "up"))
        U2 = ft.get(ft.arch.block_name(row["layer"], "up"))
        m = match_pairs(U1, U2)
        direct = torch.nn.functional.cosine_similarity(U1[m.rows], U2[m.cols], dim=1)
        assert row["median_cos"] == pytest.approx(float(np.median(direct.numpy())), abs=1e-5)
        assert 0.5 < row["median_cos"] <= 1.0
    assert res.extra["median_cos"] == pytest.approx(np.mean([r["median_cos"] for r in res.per_layer]))
    indep = run("cos", base, from_module(tiny_model(cfg, seed=5)))
    assert indep.extra["median_cos"] < 0.5


def test_match_pairs_cosines_on_solver_and_shortcut_paths():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    for W2 in (B, A[torch.randperm(40, generator=g)]):  # solver path, then the argmax shortcut
        m = match_pairs(A, W2)
        assert np.array_equal(m.rows, np.arange(40)) and sorted(m.cols.tolist()) == list(range(40))
        direct = torch.nn.functional.cosine_similarity(A[m.rows], W2[m.cols], dim=1).numpy()
        assert np.allclose(m.cos, direct, atol=1e-5)


# --------------------------------------------------------------------------------------------
# zero-padded hidden units
# --------------------------------------------------------------------------------------------
PAD = list(range(84, 96))  # h = 96: the last 12 units zeroed, as when h is padded to a round size


def _cfg():
    return tiny_config("llama", L=2, d=32, h=96, V=96)


def _padded(src, units=PAD):
    """``src`` with the given hidden units of every block zeroed (gate/up rows, down columns)."""
    from tracing.models import DictSource
    sd = {n: src.get(n).clone() for n in src.names()}
    for i in range(src.arch.L):
        sd[src.arch.block_name(i, "gate")][units] = 0
        sd[src.arch.block_name(i, "up")][units] = 0
        sd[src.arch.block_name(i, "down")][:, units] = 0
    return DictSource(sd, src.config, src.label)


@pytest.fixture(scope="module")
def template():
    return from_module(tiny_model(_cfg(), seed=0))


@pytest.fixture
def one_thread():
    with one_torch_thread():
        yield


_random_like = random_like


def _rejections(template, stat, n, pad_ft, seed0, ids=None):
    hits = 0
    for k in range(n):
        a = _padded(_random_like(template, seed0 + 2 * k))
        b = _random_like(template, seed0 + 2 * k + 1)
        res = run(stat, a, _padded(b) if pad_ft else b, ids)
        hits += res.log10_pvalue < SIG
    return hits


SIG = math.log10(0.01)
N_PAIRS = 100


@pytest.mark.parametrize("pad_ft", [True, False], ids=["both-padded", "base-padded"])
def test_cos_independent_zero_padded_pairs_not_rejected(template, one_thread, pad_ft):
    assert _rejections(template, "cos", N_PAIRS, pad_ft, seed0=1000) <= 3


@pytest.mark.parametrize("pad_ft", [True, False], ids=["both-padded", "base-padded"])
def test_match_independent_zero_padded_pairs_not_rejected(template, one_thread, pad_ft):
    ids = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(0))
    assert _rejections(template, "match", N_PAIRS, pad_ft, seed0=3000, ids=ids) <= 3


def test_dependent_zero_padded_pair_significant_and_dropped_rows_recorded(template):
    base = _padded(_random_like(template, 5))
    ft = _padded(_random_like(template, 5))  # same weights: then perturb every nonzero entry
    for n in ft.names():
        t = ft.state[n]
        t += 0.2 * t.abs().mean() * torch.randn(t.shape, generator=torch.Generator().manual_seed(9)) * (t != 0)
    ids = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(0))
    for stat in ("cos", "csh", "match"):
        res = run(stat, base, ft, ids)
        assert res.log10_pvalue < -6, stat
        for row in res.per_layer:
            assert row["dropped"] == {"base": len(PAD), "ft": len(PAD)}
            assert row["n_pairs"] == 96 - len(PAD)
        assert res.extra["dropped_rows"] == {"base": 2 * len(PAD), "ft": 2 * len(PAD)}


def test_unpadded_statistics_unchanged_bit_for_bit(template):
    """Equal shapes, no degenerate row: the p-values are exactly Spearman of the full assignments."""
    from tracing import pvalues
    from tracing.align import match
    a, b = _random_like(template, 11), _random_like(template, 12)
    b_dep = _random_like(template, 11)
    for other in (b, b_dep):
        res = run("cos", a, other)
        for row in res.per_layer:
            name = a.arch.block_name(row["layer"], "up")
            r, lp = pvalues.spearman(match(a.get(name), other.get(name)))
            assert (row["statistic"], row["log10_pvalue"]) == (r, lp)
            assert row["dropped"] == {"base": 0, "ft": 0} and row["n_pairs"] == 96
        X, lp = pvalues.fisher([row["log10_pvalue"] for row in res.per_layer])
        assert (res.statistic, res.log10_pvalue) == (X, lp)


def test_spearman_pairs_generalises_spearman():
    from tracing import pvalues
    g = np.random.default_rng(0)
    for alt in ("greater", "two-sided", "less"):
        p, q = g.permutation(50), g.permutation(50)
        assert pvalues.spearman_pairs(np.arange(50), p, alt) == pvalues.spearman(p, alternative=alt)
        assert pvalues.spearman_pairs(p, q, alt) == pvalues.spearman(p, q, alternative=alt)
    # original indices with gaps: only their ranks matter
    x = np.array([0, 3, 4, 9, 10, 20, 21, 30, 31])
    y = np.array([5, 1, 7, 8, 2, 40, 41, 50, 60])
    r, lp = pvalues.spearman_pairs(x, y)
    assert (r, lp) == pvalues.spearman(np.argsort(np.argsort(y)), np.argsort(np.argsort(x)))
    # identical order: the floor -log10(m!)
    assert pvalues.spearman_pairs(x, x)[1] == pytest.approx(-math.lgamma(10) / math.log(10))
    assert all(math.isnan(v) for v in pvalues.spearman_pairs(x[:7], y[:7]))


def test_match_pairs_drops_degenerate_rows_and_matches_rectangular():
    g = torch.Generator().manual_seed(3)
    B = torch.randn(30, 8, generator=g)
    perm = torch.randperm(30, generator=g)
    A = B[perm] + 0.01 * torch.randn(30, 8, generator=g)  # row i of A is row perm[i] of B
    A[[2, 5]] = 0
    A[7, 3] = float("nan")
    B[perm[[10, 11, 12]]] = 0
    B[perm[13], 0] = float("inf")
    m = match_pairs(A, B)
    assert (m.dropped1, m.dropped2) == (3, 4)
    kept1 = [i for i in range(30) if i not in (2, 5, 7)]
    kept2 = sorted(set(range(30)) - set(perm[[10, 11, 12, 13]].tolist()))
    # 27 kept rows of A, 26 of B: every kept row of B gets a partner, in original indices
    assert m.shape == (30, 30) and m.kept == (27, 26) and m.n_pairs == 26
    assert set(m.rows.tolist()) <= set(kept1) and np.all(np.diff(m.rows) > 0)
    assert sorted(m.cols.tolist()) == kept2
    planted = {i: int(perm[i]) for i in kept1 if int(perm[i]) in kept2}  # 23 rows with their true partner
    assert all(dict(zip(m.rows.tolist(), m.cols.tolist())).get(i) == j for i, j in planted.items())
    # swapped sides: every kept row of the first argument's smaller side is matched the same way
    m2 = match_pairs(B, A)
    assert m2.n_pairs == 26 and m2.rows.tolist() == kept2
    assert dict(zip(m2.cols.tolist(), m2.rows.tolist())) == dict(zip(m.rows.tolist(), m.cols.tolist()))


def test_layer_with_too_few_pairs_is_skipped_with_a_reason(template):
    a, b = _random_like(template, 21), _random_like(template, 22)
    name = a.arch.block_name(0, "up")
    a.state[name][4:] = 0  # block 0 keeps 4 rows
    res = run("cos", a, b)
    row0 = res.per_layer[0]
    assert math.isnan(row0["log10_pvalue"]) and row0["n_pairs"] == 4 and "at least 8" in row0["skipped"]
    assert res.extra["skipped_layers"] == [0]
    assert math.isfinite(res.log10_pvalue)
    from tracing import pvalues
    assert res.log10_pvalue == pvalues.fisher([res.per_layer[1]["log10_pvalue"]])[1]


# --------------------------------------------------------------------------------------------
# non-finite weights: an error when read, never a statistic
# --------------------------------------------------------------------------------------------
def _main(*args):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, str(root / "main.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=root, timeout=600, env=dict(__import__("os").environ, HF_HUB_OFFLINE="1",
                                                                PYTHONWARNINGS="ignore::FutureWarning"))


@pytest.mark.parametrize("tensor,where,value,stats", [
    # row 0 of up_proj: the argmax shortcut used to give r = 1 for it
    ("model.layers.0.mlp.up_proj.weight", (0, slice(None)), float("nan"), ("cos", "l2")),
    ("model.layers.1.self_attn.o_proj.weight", (3, 5), float("inf"), ("match", "l2")),  # read by these
])
def test_non_finite_weight_is_a_one_line_error(tmp_path, tensor, where, value, stats):
    cfg = tiny_config("llama", L=2, d=32, h=64, V=96)
    base = tiny_model(cfg, seed=1)
    base.save_pretrained(tmp_path / "base")
    bad = finetuned(base, seed=2, noise=0.2)
    with torch.no_grad():
        dict(bad.named_parameters())[tensor][where] = value
    bad.save_pretrained(tmp_path / "bad")
    for stat in stats:
        out = tmp_path / f"never_{stat}.p"
        r = _main("--base_model_id", tmp_path / "base", "--ft_model_id", tmp_path / "bad", "--stat", stat,
                  "--save", out, "--quiet", "--dataset", "random", "--num_samples", "2", "--block_size", "16")
        assert r.returncode == 2, r.stderr[-2000:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert tensor in lines[0] and str(tmp_path / "bad") in lines[0] and "non-finite" in lines[0]
        assert not out.exists()


def test_non_finite_activation_rows_are_dropped_not_an_error():
    from tracing.align import Matcher
    g = torch.Generator().manual_seed(0)
    H1, H2 = torch.randn(20, 16, generator=g), torch.randn(20, 16, generator=g)
    H1[3, 2], H2[7, 0] = float("nan"), float("inf")
    m = Matcher(workers=1)
    m.submit(0, H1, H2)
    res = m.results()[0]
    assert (res.dropped1, res.dropped2, res.n_pairs) == (1, 1, 19) and 3 not in res.rows and 7 not in res.cols


def _pruned(src, keep):
    """A width-pruned copy: only hidden units ``keep`` of every block (a smaller config)."""
    import copy
    from tracing.models import DictSource
    cfg = copy.deepcopy(src.config)
    cfg.intermediate_size = len(keep)
    sd = {n: src.get(n).clone() for n in src.names()}
    for i in range(src.arch.L):
        for role in ("gate", "up"):
            sd[src.arch.block_name(i, role)] = sd[src.arch.block_name(i, role)][keep]
        sd[src.arch.block_name(i, "down")] = sd[src.arch.block_name(i, "down")][:, keep]
    return DictSource(sd, cfg, "pruned")


def test_cos_matches_width_pruned_models_rectangularly(template):
    base, other = _random_like(template, 31), _random_like(template, 32)
    keep = sorted(torch.randperm(96, generator=torch.Generator().manual_seed(1))[:80].tolist())
    dep = run("cos", base, _pruned(base, keep))
    assert dep.log10_pvalue < -6 and all(r["n_pairs"] == 80 for r in dep.per_layer)
    assert run("cos", _pruned(base, keep), base).log10_pvalue < -6
    assert run("cos", base, _pruned(other, keep)).log10_pvalue > SIG


def test_non_finite_value_outside_the_rows_read_is_not_checked_and_the_record_says_so(tmp_path):
    """``cos --rows 16`` on safetensors reads 16 up rows of each block: a NaN in another row is never
    seen (reading the whole tensor would defeat sampling); the record says where finiteness was
    checked, and the full test, which reads the row, refuses the model."""
    import tracing
    from tracing.errors import TracingError
    from tracing.stats.base import sampled_rows
    cfg = tiny_config("llama", L=2, d=32, h=64, V=96)
    base = tiny_model(cfg, seed=1)
    bad = finetuned(base, seed=2, noise=0.2)
    unread = sorted(set(range(64)) - set(sampled_rows(64, 16, 0).tolist()))[0]
    with torch.no_grad():
        bad.model.layers[0].mlp.up_proj.weight[unread, 3] = float("nan")
    base.save_pretrained(tmp_path / "base")
    bad.save_pretrained(tmp_path / "bad")
    res = tracing.compare(str(tmp_path / "base"), str(tmp_path / "bad"), stat="cos", rows=16, seed=0)
    assert res.verdict == "dependent"
    assert "the tensors (rows) the statistic read" in res.record["finite_checked"]
    with pytest.raises(TracingError, match="non-finite"):
        tracing.compare(str(tmp_path / "base"), str(tmp_path / "bad"), stat="cos")
