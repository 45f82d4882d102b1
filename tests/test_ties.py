"""Duplicated units: exact copies of rows tie in every cosine, and a solver that breaks ties in index
order manufactures a rank correlation.  Copies are dropped before matching (as zero rows are), so
independent models with duplicated units stay calibrated and tie-free inputs are unchanged."""

import numpy as np
import pytest
import scipy.stats as sps
import torch

from helpers import logits, one_torch_thread, random_ids, random_like, tiny_config, tiny_model

from tracing.align import duplicate_rows, match_pairs
from tracing.lineage.rates import clopper_pearson
from tracing.models import from_module
from tracing.options import Options
from tracing.stats import Context, get

SIG = 0.01
H, HALF = 120, 60  # units HALF..H-1 copy units 0..HALF-1


def run(stat, base, ft, ids=None):
    ctx = Context(Options(stat=[stat]), progress=False, tokens=(lambda: ids) if ids is not None else None)
    return get(stat).fn(ctx, base, ft)


@pytest.fixture(scope="module")
def template():
    return from_module(tiny_model(tiny_config("llama", L=2, d=40, h=H, V=64), seed=0))


@pytest.fixture
def one_thread():
    with one_torch_thread():
        yield


_random_like = random_like


def _duplicated(src):
    """``src`` with units HALF..H-1 of every block copying units 0..HALF-1 (gate/up rows, down columns)."""
    for i in range(src.arch.L):
        for role, axis in (("gate", 0), ("up", 0), ("down", 1)):
            t = src.state[src.arch.block_name(i, role)]
            t.narrow(axis, HALF, HALF).copy_(t.narrow(axis, 0, HALF))
    return src


def _within_level(pvals, level=SIG):
    """The rejection rate's exact 99% interval contains ``level`` or lies below it."""
    k = int(np.sum(np.asarray(pvals) <= level))
    lo, _hi = clopper_pearson(k, len(pvals), confidence=0.99)
    return lo <= level, k


def test_duplicate_rows_marks_later_exact_copies():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(8, 5, generator=g)
    W[3] = W[1]
    W[6] = W[1]
    W[5] = -W[2]
    W[7] = W[0] * 2  # same direction, not a copy: kept
    W[4, 0], W[0, 0] = -0.0, 0.0
    W[4, 1:] = W[0, 1:]  # differs from row 0 only by the sign of a zero: a copy
    assert duplicate_rows(W).tolist() == [False, False, False, True, True, False, True, False]
    assert duplicate_rows(W, absolute=True).tolist() == [False, False, False, True, True, True, True, False]
    # among kept rows only: with row 1 left out, row 3 is the first of its copies
    keep = torch.ones(8, dtype=torch.bool)
    keep[1] = False
    assert duplicate_rows(W, keep=keep).tolist() == [False, False, False, False, True, False, True, False]
    assert not duplicate_rows(torch.randn(50, 7, generator=g)).any()


def test_match_pairs_drops_copies_and_counts_them():
    g = torch.Generator().manual_seed(5)
    A, B = torch.randn(H, 16, generator=g), torch.randn(HALF, 16, generator=g)
    B2 = torch.cat([B, B])
    m = match_pairs(A, B2)
    assert (m.dropped1, m.dropped2) == (0, HALF) and m.kept == (H, HALF) and m.n_pairs == HALF
    assert sorted(m.cols.tolist()) == list(range(HALF))  # the first copy of each unit is kept
    ref = match_pairs(A, B)
    assert np.array_equal(m.rows, ref.rows) and np.array_equal(m.cols, ref.cols)


@pytest.mark.parametrize("both", [False, True], ids=["ft-duplicated", "both-duplicated"])
def test_cos_independent_duplicated_units_within_level(template, one_thread, both):
    """The audit's setup (L = 2, d = 40, h = 120, units 60-119 copying 0-59), 200 independent pairs:
    before the fix 166/200 (177/200 with both sides duplicated) were called dependent at 0.01."""
    pvals = []
    for k in range(200):
        a = _random_like(template, 50_000 + 2 * k)
        b = _duplicated(_random_like(template, 50_001 + 2 * k))
        res = run("cos", _duplicated(a) if both else a, b)
        pvals.append(10 ** res.log10_pvalue)
        assert all(row["dropped"]["ft"] == HALF for row in res.per_layer)
    ok, k = _within_level(pvals)
    assert ok, f"{k}/200 independent pairs rejected at {SIG}"
    assert sps.kstest(pvals, "uniform").pvalue > 0.01


def test_emb_duplicate_columns_within_level(template, one_thread):
    """Duplicate embedding columns (residual dimensions 20-39 copying 0-19) in θ₂: KS over 60 pairs."""
    pvals = []
    for k in range(60):
        a, b = _random_like(template, 70_000 + 2 * k), _random_like(template, 70_001 + 2 * k)
        E = b.state[b.arch.embed]
        E[:, 20:40] = E[:, :20]
        res = run("emb", a, b)
        assert res.extra["dropped"] == {"base": 0, "ft": 20}
        pvals.append(10 ** res.log10_pvalue)
    ok, k = _within_level(pvals)
    assert ok, f"{k}/60 independent pairs rejected at {SIG}"
    assert sps.kstest(pvals, "uniform").pvalue > 0.01


def _widened(model, seed_cfg):
    """A Net2Net-style function-preserving widening: every MLP unit copied once, gate/up rows
    duplicated, down columns halved (both copies)."""
    wide = tiny_model(tiny_config("llama", **seed_cfg), seed=0)
    src, dst = model.state_dict(), wide.state_dict()
    with torch.no_grad():
        for name, t in dst.items():
            s = src[name]
            if name.endswith(("gate_proj.weight", "up_proj.weight")):
                t.copy_(torch.cat([s, s], dim=0))
            elif name.endswith("down_proj.weight"):
                t.copy_(torch.cat([s, s], dim=1) / 2)
            else:
                t.copy_(s)
    return wide


def test_net2net_widening_preserves_function_and_is_not_dependent():
    """θ₂: an independent 60-unit model widened to 120 units.  Before the fix: p = 0.0002, dependent."""
    narrow = tiny_model(tiny_config("llama", L=2, d=40, h=HALF, V=64), seed=21)
    wide = _widened(narrow, dict(L=2, d=40, h=H, V=64))
    ids = random_ids(64, seed=3)
    a, b = logits(narrow, ids), logits(wide, ids)
    assert ((a - b).abs().max() / a.abs().max()).item() <= 1e-5
    wide_src = from_module(wide)
    pvals = [10 ** run("cos", from_module(tiny_model(tiny_config("llama", L=2, d=40, h=H, V=64), seed=s)),
                       wide_src).log10_pvalue for s in range(100, 130)]
    assert sum(p <= SIG for p in pvals) <= 2 and sps.kstest(pvals, "uniform").pvalue > 0.01
    # power: the widened model against its own source is dependent (its kept rows are the source's)
    res = run("cos", from_module(narrow), wide_src)
    assert res.log10_pvalue < -20
    assert all(row["dropped"] == {"base": 0, "ft": HALF} and row["n_pairs"] == HALF for row in res.per_layer)


def test_match_duplicated_units_dropped_from_both_matchings(template, one_thread):
    """``match`` drops a copied unit from the gate and the |up| matching alike; independent pairs
    with duplicated units are not rejected more often than the level (one-sided KS over 30 pairs:
    ``match`` is approximate, calibrated or conservative)."""
    ids = random_ids(64, n=2, T=32, seed=0)
    pvals = []
    for k in range(30):
        a, b = _random_like(template, 90_000 + 2 * k), _duplicated(_random_like(template, 90_001 + 2 * k))
        res = run("match", a, b, ids)
        assert all(row["dropped"]["ft"] == HALF and row["n_pairs"] == HALF for row in res.per_layer)
        pvals.append(10 ** res.log10_pvalue)
    assert sum(p <= SIG for p in pvals) <= 2
    assert sps.kstest(pvals, "uniform", alternative="greater").pvalue > 0.01
