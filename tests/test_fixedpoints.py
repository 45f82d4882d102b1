"""The fixed-point statistic (``fixed``): its exact law, calibration on independent pairs, power on
partial sharing wherever the shared units sit, and how cos's summary and the report show it."""
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats
import torch

from helpers import finetuned, tiny_config, tiny_model
from tracing import fixedpoints
from tracing.api import compare_models
from tracing.results import summary


def _enumerated_tail(m: int, c: int) -> dict[int, Fraction]:
    """P(F ≥ k) by enumerating every permutation of m, fixed points counted on c given elements."""
    counts = np.zeros(c + 2, dtype=np.int64)
    for p in itertools.permutations(range(m)):
        counts[sum(p[i] == i for i in range(c))] += 1
    return {k: Fraction(int(counts[k:].sum()), math.factorial(m)) for k in range(c + 2)}


def test_tail_equals_enumeration():
    for m in range(1, 8):
        for c in range(m + 1):
            for k, exact in _enumerated_tail(m, c).items():
                got = 10 ** fixedpoints.log10_tail(k, m, c)
                assert got == pytest.approx(float(exact), rel=1e-12, abs=0), (m, c, k)


def _rational_tail(k: int, m: int, c: int) -> Fraction:
    """The tail formula in exact rational arithmetic, every term kept (no truncation)."""
    def q(n, r):
        return Fraction(sum((-1) ** i * math.comb(r, i) * math.factorial(n - i) for i in range(r + 1)),
                        math.factorial(n))
    return sum((Fraction(math.comb(c, j) * math.factorial(m - j), math.factorial(m)) * q(m - j, c - j)
                for j in range(k, c + 1)), Fraction(0))


@pytest.mark.parametrize("m,c", [(60, 60), (60, 45), (120, 100), (200, 7)])
def test_tail_equals_exact_rationals_and_bound(m, c):
    """Large m: the truncated log-space sums agree with exact rationals; P(F ≥ k) ≤ 1/k!."""
    for k in (1, 2, 3, 5, 7, 20, c):
        if k > c:
            continue
        exact = _rational_tail(k, m, c)
        lt = fixedpoints.log10_tail(k, m, c)
        assert lt == pytest.approx(math.log10(exact), abs=1e-12), (k, m, c)
        assert exact <= Fraction(1, math.factorial(k))


def _pit(rows, rng):
    """Randomised probability integral transform of each block's fixed-point count: uniform on
    [0, 1] exactly when the count follows the exact law."""
    out = []
    for r in rows:
        f, m, c = r["fixed_points"], r["n_pairs"], r["candidates"]
        ge, gt = 10 ** fixedpoints.log10_tail(f, m, c), 10 ** fixedpoints.log10_tail(f + 1, m, c)
        out.append(gt + rng.uniform() * (ge - gt))
    return out


@pytest.mark.parametrize("h2", [64, 48])
def test_calibrated_on_independent_pairs(h2):
    """Independent pairs (square and rectangular): each block's count follows the exact law (KS of
    the randomised PIT over 80 blocks), and the reported p-values are not anti-conservative."""
    rng = np.random.default_rng(5)
    pit, p = [], []
    for k in range(40):
        a = tiny_model(tiny_config(d=32, h=64, L=2, V=64), seed=4000 + k)
        b = tiny_model(tiny_config(d=32, h=h2, L=2, V=64), seed=5000 + k)
        rec = compare_models(a, b, "fixed").record
        pit += _pit(rec["per_layer"], rng)
        p.append(rec["pvalue"])
    ks_pit = scipy.stats.kstest(pit, "uniform").pvalue
    ks_p = scipy.stats.kstest(p, "uniform", alternative="greater").pvalue  # H0: P(p ≤ x) ≤ x
    print(f"fixed, h {64} vs {h2}: KS of the PIT p = {ks_pit:.3f} over {len(pit)} blocks; one-sided KS of the "
          f"p-values p = {ks_p:.3f}; rejected at 0.05: {sum(x <= 0.05 for x in p)}/40")
    assert ks_pit > 0.01 and ks_p > 0.01


def partly_from(src, other, lo: int, n: int = 20, noise: float = 0.05, seed: int = 0):
    """``other`` with the MLP units ``lo..lo+n-1`` of every block copied from ``src`` (gate and up
    rows, down columns), then fine-tuned with ``noise``: a model initialised partly from another."""
    m = finetuned(other, seed=seed, noise=0.0)
    with torch.no_grad():
        for la, lb in zip(src.model.layers, m.model.layers):
            for name in ("gate_proj", "up_proj"):
                getattr(lb.mlp, name).weight[lo:lo + n] = getattr(la.mlp, name).weight[lo:lo + n]
            lb.mlp.down_proj.weight[:, lo:lo + n] = la.mlp.down_proj.weight[:, lo:lo + n]
    return finetuned(m, seed=seed + 1, noise=noise)


@pytest.mark.parametrize("lo", [0, 50, 100])
def test_shared_units_found_wherever_they_sit(lo):
    """20 of 120 units shared: found at the start, the middle and the end of the index range (10
    seeds each); the copied units are exactly the fixed points."""
    cfg = tiny_config(d=40, h=120, L=2, V=64)
    found = cos_found = 0
    for k in range(10):
        a = tiny_model(cfg, seed=2000 + k)
        b = partly_from(a, tiny_model(cfg, seed=3000 + k), lo, seed=k)
        rec = compare_models(a, b, "fixed").record
        found += rec["log10_pvalue"] < -10
        cos_found += compare_models(a, b, "cos").log10_pvalue <= -2
        assert all(row["fixed_points"] >= 20 for row in rec["per_layer"])
    print(f"shared units {lo}..{lo + 19}: fixed {found}/10 at 1e-10, cos {cos_found}/10 at 0.01")
    assert found == 10


def test_cos_summary_and_report_show_partial_sharing(tmp_path):
    """cos misses units shared in the middle; its record carries the fixed-point count of the same
    matching, and the summary and the report row say so when the verdicts differ."""
    from tracing.report import write_report
    cfg = tiny_config(d=40, h=120, L=2, V=64)
    a = tiny_model(cfg, seed=2000)
    b = partly_from(a, tiny_model(cfg, seed=3000), 50)
    res = compare_models(a, b, "cos", save=tmp_path / "run" / "cos.p")
    fp = res.record["extra"]["fixed_points"]
    assert res.verdict == "not significant" and fp["log10_pvalue"] < -10 and fp["count"] >= 40
    assert fp["log10_pvalue"] == compare_models(a, b, "fixed").log10_pvalue
    text = summary(res)
    assert "fixed points of the same matching" in text and "partial sharing" in text, text
    indep = compare_models(a, tiny_model(cfg, seed=3001), "cos")
    assert "fixed points" not in summary(indep)
    report = write_report(tmp_path / "run").read_text()
    assert "partial sharing" in report, report


def test_planted_permutation_recovered_by_align():
    """A permuted fine-tune: the raw count sees nothing, --align restores every unit to its index."""
    cfg = tiny_config(d=32, h=64, L=2, V=64)
    a = tiny_model(cfg, seed=6000)
    rec = compare_models(a, finetuned(a, seed=6001), "fixed", permute=True, align=True).record
    assert rec["log10_pvalue"] > -2
    al = rec["aligned"]
    assert al["statistic"] == 2 * 64 and all(r["fixed_points"] == 64 for r in al["per_layer"])
    assert al["log10_pvalue"] < -80
