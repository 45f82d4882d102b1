"""The null law of Spearman's statistic: exact counts for small m, valid p-values for every m ≥ 8."""
import itertools
import json
import math

import numpy as np
import pytest

from tracing import pvalues as pv
from tracing import spearman_law as law

LN10 = math.log(10.0)
ALPHAS = (0.05, 0.01, 1e-3, 1e-4, 1.3e-5, 1e-5, 1e-6)


def _brute_counts(m):
    i = np.arange(m)
    S = np.array([int(((np.array(p) - i) ** 2).sum()) for p in itertools.permutations(range(m))])
    return np.bincount(S // 2, minlength=m * (m * m - 1) // 6 + 1).tolist()


@pytest.mark.parametrize("m", [3, 4, 5, 6, 7, 8])
def test_counts_match_enumeration(m):
    assert law.count_permutations(m) == _brute_counts(m)


def test_shipped_table_is_the_dynamic_programme():
    table = json.loads(law.TABLE.read_text())
    assert sorted(map(int, table)) == list(range(3, law.EXACT_MAX + 1))
    for m in range(3, 13):
        assert table[str(m)] == law.count_permutations(m)
    for m in range(3, law.EXACT_MAX + 1):
        c = table[str(m)]
        assert sum(c) == math.factorial(m) and c == c[::-1]  # S -> S_max - S is a bijection


def _p_of_s(m, alternative="greater"):
    """log10 p of every attainable S (via spearman on a permutation with that S is impractical; the
    p-value depends on the pairs only through S, so it is computed from S directly)."""
    return np.array([_log10p(m, 2 * k, alternative) for k in range(m * (m * m - 1) // 6 + 1)])


def _log10p(m, s, alternative):
    D = m * (m * m - 1)
    if s == 0 and alternative != "less":
        return -math.lgamma(m + 1) / LN10 + (math.log10(2) if alternative == "two-sided" else 0)
    sm = D // 3
    if alternative == "greater":
        return law.ln_lower_tail(m, s) / LN10
    if alternative == "less":
        return law.ln_lower_tail(m, sm - s) / LN10
    return min(0.0, (math.log(2) + law.ln_lower_tail(m, min(s, sm - s))) / LN10)


def _size(cdf, lp, alpha):
    """P(p ≤ α) when p is increasing in S and P(S ≤ 2k) = cdf[k]."""
    k = np.flatnonzero(lp <= math.log10(alpha))
    return cdf[k.max()] if k.size else 0.0


@pytest.mark.parametrize("m", range(8, law.EXACT_MAX + 1))
def test_exact_law_is_exact_for_small_m(m):
    """m ≤ 18: P(p ≤ α) equals P(S ≤ s) for α = p(s), and never exceeds α at any level."""
    c = np.array(json.loads(law.TABLE.read_text())[str(m)], dtype=float)
    cdf = np.cumsum(c) / math.factorial(m)
    lp = _p_of_s(m)
    assert np.allclose(10 ** lp, cdf, rtol=1e-12)
    for a in ALPHAS + (1e-8, 1e-10):
        assert _size(cdf, lp, a) <= a * (1 + 1e-12)


def test_spearman_agrees_with_the_law_on_permutations():
    rng = np.random.default_rng(8)
    for m in (8, 12, 18, 19, 40, 300):
        for _ in range(5):
            p = rng.permutation(m)
            s = int(((p - np.arange(m)) ** 2).sum())
            for alt in ("greater", "less", "two-sided"):
                assert pv.spearman(p, alternative=alt)[1] == pytest.approx(_log10p(m, s, alt), rel=1e-12, abs=1e-15)


def _rejecting(m, alpha):
    """The largest k with p(S = 2k) ≤ α (p increases with S), or -1: found by bisection."""
    lo, hi = -1, m * (m * m - 1) // 12  # p at the centre of the law is far above any α used here
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _log10p(m, 2 * mid, "greater") <= math.log10(alpha):
            lo = mid
        else:
            hi = mid
    return lo


@pytest.mark.parametrize("m", [19, 24, 32, 48, 64])
def test_beyond_the_table_never_anti_conservative(m):
    """m > 18: the p-value is the larger of the t tail and the matched tail at s + 2.  Against
    4·10⁵ uniform permutations, P(p ≤ α) stays within the Monte Carlo band of α or below it, for
    α = 0.05 … 1e-5 (the plain t tail fails this for m = 19 … 48 at α ≤ 1e-3)."""
    from scipy.stats import binomtest
    n = 400_000
    cum = np.cumsum(law.sample_counts(m, n, seed=1))
    for a in ALPHAS:
        k = _rejecting(m, a)
        hits = int(cum[k]) if k >= 0 else 0
        assert binomtest(hits, n, a, alternative="greater").pvalue > 1e-3, (m, a, hits / n / a)


def test_matched_tail_is_finite_and_monotone():
    for m in (19, 64, 1024, 11008):
        ks = np.unique(np.linspace(1, m * (m * m - 1) // 6, 400).astype(int))
        lp = [law.ln_lower_tail(m, 2 * int(k)) for k in ks]
        assert all(math.isfinite(v) and v <= 0 for v in lp)
        assert np.all(np.diff(lp) >= -1e-9)
        assert lp[0] >= -math.lgamma(m + 1)
