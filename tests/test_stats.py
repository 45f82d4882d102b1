"""Statistical properties of every statistic, on tiny models with fixed seeds."""
import math
import weakref

import numpy as np
import pytest
import torch
from scipy import stats as sps

from helpers import finetuned, random_ids, tiny_config, tiny_model

import tracing
from tracing.align import align
from tracing.engine import Engine
from tracing.evaluate import lm_losses
from tracing.models import DictSource, from_module
from tracing.stats.jsd import jsd_per_token
from tracing.transforms import permute, rotate

SIG = math.log10(0.01)


def run(stat, base, ft, ids=None, **kw):
    return tracing.compare_models(base, ft, stat=stat, tokens=ids, **kw)


@pytest.fixture(scope="module")
def trio():
    cfg = tiny_config("llama", L=3, d=64, h=128, V=128)
    base = tiny_model(cfg, seed=1)
    ft = finetuned(base, seed=2, noise=0.2)
    other = tiny_model(cfg, seed=3)
    ids = random_ids(cfg.vocab_size, n=4, T=32, seed=0)
    return from_module(base, "base"), from_module(ft, "ft"), from_module(other, "other"), ids


@pytest.mark.parametrize("stat", ["cos", "emb", "csh", "match"])
def test_dependent_significant_independent_not(trio, stat):
    base, ft, other, ids = trio
    dep = run(stat, base, ft, ids)
    ind = run(stat, base, other, ids)
    assert dep.log10_pvalue < -6
    assert ind.log10_pvalue > SIG
    assert math.isfinite(dep.log10_pvalue)


def test_identical_models_give_the_exact_floor(trio):
    base, *_ = trio
    res = run("cos", base, base)
    h = base.arch.h
    floor = -math.lgamma(h + 1) / math.log(10)
    assert all(row["log10_pvalue"] == pytest.approx(floor) for row in res.per_layer)
    assert math.isfinite(res.log10_pvalue) and res.log10_pvalue < floor * base.arch.L * 0.9


def _independent_pairs(n, L=2, d=32, h=64, seed0=100):
    cfg = tiny_config("llama", L=L, d=d, h=h, V=96)
    for k in range(n):
        yield from_module(tiny_model(cfg, seed=seed0 + 2 * k)), from_module(tiny_model(cfg, seed=seed0 + 2 * k + 1))


def test_cos_calibrated_under_independence():
    ps = [10 ** run("cos", a, b).log10_pvalue for a, b in _independent_pairs(60)]
    assert sps.kstest(ps, "uniform").pvalue > 0.01
    assert min(ps) > 1e-4


def test_cos_after_alignment_still_calibrated():
    ps = []
    for a, b in _independent_pairs(60, seed0=500):
        aligned = align(a, b, progress=False).apply(b)
        ps.append(10 ** run("cos", a, aligned).log10_pvalue)
    assert sps.kstest(ps, "uniform").pvalue > 0.01


def test_permtest_values_are_multiples_of_one_over_T_plus_1(trio):
    base, ft, other, _ = trio
    T = 19
    for b in (ft, other):
        res = run("l2", base, b, num_perm=T)
        k = 10 ** res.log10_pvalue * (T + 1)
        assert abs(k - round(k)) < 1e-9 and 1 <= round(k) <= T + 1
    assert run("l2", base, ft, num_perm=T).log10_pvalue == pytest.approx(math.log10(1 / (T + 1)))


def test_l2_independent_pairs_not_always_significant():
    ps = [10 ** run("l2", a, b, num_perm=19).log10_pvalue for a, b in _independent_pairs(6, seed0=900)]
    assert np.mean(ps) > 0.2


def _flip_up_rows(src, frac=0.3, seed=0):
    """Negate some up rows and the matching down columns (function unchanged)."""
    sd = {n: src.get(n).clone() for n in src.names()}
    g = torch.Generator().manual_seed(seed)
    for i in range(src.arch.L):
        idx = torch.randperm(src.arch.h, generator=g)[: int(frac * src.arch.h)]
        sd[src.arch.block_name(i, "up")][idx] *= -1
        sd[src.arch.block_name(i, "down")][:, idx] *= -1
    return DictSource(sd, src.config, "flipped")


def test_robustness_as_the_paper_claims(trio):
    base, ft, _, ids = trio
    permuted, rotated, flipped = permute(ft, seed=7), rotate(ft, seed=8), _flip_up_rows(ft)
    # the flip really preserves the function
    la = lm_losses(Engine(progress=False), [ft, flipped, permuted, rotated], ids)
    assert max(la) - min(la) < 1e-4
    assert run("cos", base, permuted).log10_pvalue > SIG
    assert run("cos", base, rotated).log10_pvalue > SIG
    for view in (permuted, rotated, flipped):
        assert run("match", base, view, ids).log10_pvalue < -6
    # alignment undoes the permutation for cos
    assert run("cos", base, align(base, permuted, progress=False).apply(permuted)).log10_pvalue < -6


def test_jsd_matches_direct_float64_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    n = 9
    p = torch.softmax(a[..., :n].double(), -1).numpy()
    q = torch.softmax(b[..., :n].double(), -1).numpy()
    m = (p + q) / 2
    direct = 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1)
    assert np.allclose(jsd_per_token(a, b, n).numpy(), direct, rtol=1e-12, atol=1e-15)
    assert jsd_per_token(a, a, n).abs().max() < 1e-12


def test_jsd_statistic(trio):
    base, ft, other, ids = trio
    assert run("jsd", base, base, ids).statistic == pytest.approx(0, abs=1e-10)
    assert 0 < run("jsd", base, ft, ids).statistic < run("jsd", base, other, ids).statistic < math.log(2)


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "tied", "llama_bias"])
def test_engine_matches_full_model(kind):
    cfg = tiny_config(kind, L=3)
    model = tiny_model(cfg, seed=5)
    ids = random_ids(cfg.vocab_size, n=3, T=40, seed=1)  # T > mistral's sliding window of 16
    got = []
    Engine(batch_size=2, progress=False).run([from_module(model)], ids,
                                             on_logits=lambda b, lg, _ids: got.append(lg[0]))
    with torch.no_grad():
        ref = model(ids).logits
    assert torch.allclose(torch.cat(got), ref, atol=1e-5, rtol=1e-4)
    # perplexity equals exp of the Hugging Face labels loss on the same blocks
    loss = lm_losses(Engine(progress=False), [from_module(model)], ids)[0]
    with torch.no_grad():
        hf = model(ids, labels=ids).loss.item()
    assert loss == pytest.approx(hf, rel=1e-5)


def test_engine_activations_equal_whole_model_hooks_and_one_block_live():
    cfg = tiny_config("llama", L=4)
    model = tiny_model(cfg, seed=6)
    ids = random_ids(cfg.vocab_size, n=3, T=16, seed=2)
    ref = {}
    hooks = [layer.mlp.up_proj.register_forward_hook(
        lambda m, i, o, k=k: ref.__setitem__(k, o.reshape(-1, o.shape[-1]))) for k, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    previous = []
    seen = []

    def on_block(i, caps):
        # the previous block's activations are gone before this block's arrive
        assert all(r() is None for r in previous)
        previous[:] = [weakref.ref(c.up) for c in caps] + [weakref.ref(c.gate) for c in caps]
        assert torch.allclose(caps[0].up, ref[i], atol=1e-5)
        seen.append(i)

    eng = Engine(batch_size=2, progress=False)
    eng.run([from_module(model), from_module(model)], ids, on_block=on_block)
    assert seen == [0, 1, 2, 3]
    assert eng.max_live_blocks == 1


@pytest.mark.parametrize("full", [False, True])
def test_mode_records_its_path_and_endpoints(trio, full):
    base, ft, _, ids = trio
    res = run("mode", base, ft, ids, mlp_only=not full)
    x = res.extra
    l_base, l_ft = lm_losses(Engine(progress=False), [base, ft], ids)
    assert x["loss_at_alpha0"] == pytest.approx(l_base, rel=1e-6)
    assert x["barrier"] == pytest.approx(x["loss_alpha"] - 0.5 * (x["loss_at_alpha0"] + x["loss_at_alpha1"]))
    assert isinstance(x["notes"], list) and all(isinstance(n, str) and n for n in x["notes"])
    if full:  # the default: the path ends at θ₂ itself
        assert x["loss_at_alpha1"] == pytest.approx(l_ft, rel=1e-6)
        assert x["path"] == "all" and "is θ₂" in x["barrier_endpoints"]
    else:  # --mlp_only: only MLPs and norms move, α = 1 is a hybrid, not θ₂
        assert abs(x["loss_at_alpha1"] - l_ft) > 1e-4
        assert x["path"] == "mlp+norms" and "not θ₂" in x["barrier_endpoints"]
        assert any("not θ₂" in n for n in x["notes"])


def test_mode_summary_prints_the_whole_curve_with_each_alpha(trio):
    base, ft, _, ids = trio
    res = run("mode", base, ft, ids, alphas=[0, 0.25, 0.5, 0.75, 1])
    lines = res.summary().splitlines()
    curve = res.extra["curve"]
    assert [c["alpha"] for c in curve] == [0, 0.25, 0.5, 0.75, 1]
    for c in curve:  # one line per α asked for, naming its α, its loss and its barrier
        (line,) = [x for x in lines if x.strip().startswith(f"α = {c['alpha']:g}:")]
        assert f"loss {c['loss']:.4f}" in line and f"barrier {c['barrier']:.4f}" in line
    # the value line names its α (it never reads as "at α <loss>")
    assert any(f"LM loss at α = 0.5: {res.statistic:.6g}" in x for x in lines)
    assert not any(f"LM loss at α {res.statistic:.6g}" in x for x in lines)
