"""The sampled experts grid at the fewest rows it takes (``cos --rows 8``: 8 rows per expert, the
smallest sample the per-pair Spearman test accepts): calibrated over independent pairs, and
powerful on heavily fine-tuned copies whose experts were reordered (every expert paired with its
copy)."""
import math

import pytest
import scipy.stats
import torch

from family_models import family_config, family_model, noisy
from test_experts_sampled import _experts_moved
from test_frontier_families import run_stat
from tracing.models import from_module

K = 8


@pytest.mark.parametrize("family", ["deepseek_v3", "gpt_oss"])
def test_eight_rows_per_expert_calibrated(family):
    """The overall p at K = 8 is uniform over 30 independent pairs (KS), each pair its own seed."""
    p = []
    for k in range(30):
        c = family_config(family, d=32, h=32, E=3)
        a, b = (from_module(family_model(c, seed=1700 + 2 * k + s)) for s in (0, 1))
        res = run_stat("cos", a, b, rows=K, seed=k)
        assert res.extra["rows"] == K and all(r["n_pairs"] == K for r in res.per_layer)
        p.append(10 ** res.log10_pvalue)
    assert scipy.stats.kstest(p, "uniform").pvalue > 0.01, sorted(p)


@pytest.fixture(scope="module")
def deepseek():
    c = family_config("deepseek_v3", d=32, h=64, E=8, L=3)
    return c, family_model(c, seed=21)


@pytest.mark.parametrize("noise", [0.05, 1.0])
def test_eight_rows_per_expert_pair_every_expert(deepseek, noise):
    """A copy with noise of ``noise`` × each tensor's mean magnitude and its experts reordered: every
    expert paired with its copy on 8 rows, each pair significant; an independent model is not."""
    c, base = deepseek
    moved, pi = _experts_moved(noisy(base, seed=22, noise=noise), seed=23)
    res = run_stat("cos", from_module(base), from_module(moved), rows=K)
    assert res.extra["expert_matching"] == {str(i): torch.argsort(p).tolist() for i, p in pi.items()}
    floor = -math.log10(math.factorial(K))  # the per-pair floor of an exact test on 8 rows
    assert all(r["log10_pvalue"] < 0.6 * floor for r in res.per_layer) and res.log10_pvalue < -40
    indep = run_stat("cos", from_module(base), from_module(family_model(c, seed=24)), rows=K)
    assert indep.log10_pvalue > math.log10(0.01)
