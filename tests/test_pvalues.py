"""Tests for tracing.pvalues: log-space p-values that never underflow to 0."""

import math

import mpmath
import numpy as np
import pytest
import scipy.stats

from tracing import pvalues as pv

LN10 = math.log(10.0)


def _swap_pairs(h, n_pairs, seed):
    """Identity permutation of length h with n_pairs random disjoint transpositions."""
    rng = np.random.default_rng(seed)
    perm = np.arange(h)
    idx = rng.choice(h, size=2 * n_pairs, replace=False)
    a, b = idx[:n_pairs], idx[n_pairs:]
    perm[a], perm[b] = b, a
    return perm


# --------------------------------------------------------------------------
# conversions / formatting
# --------------------------------------------------------------------------

def test_conversions():
    assert pv.LOG10_E == pytest.approx(math.log10(math.e), rel=1e-15)
    assert pv.ln_to_log10(math.log(0.05)) == pytest.approx(math.log10(0.05), rel=1e-15)
    np.testing.assert_allclose(pv.ln_to_log10(np.log([0.5, 1e-10])), np.log10([0.5, 1e-10]), rtol=1e-15)
    assert pv.log10_to_float(-2.0) == pytest.approx(0.01, rel=1e-15)
    assert pv.log10_to_float(-4521.0) == 0.0  # documented underflow, no exception
    assert math.isnan(pv.log10_to_float(float("nan")))


@pytest.mark.parametrize(
    "log10p, expected",
    [
        (math.log10(0.032), "0.032"),
        (math.log10(4.1e-05), "4.1e-05"),
        (0.0, "1"),
        (math.log10(0.5), "0.5"),
        (-4521.0, "1e-4521"),
        (-4521.0 + math.log10(3.2), "3.2e-4521"),
        (-1000.0 + math.log10(9.99), "1e-999"),  # mantissa rounding carries into the exponent
    ],
)
def test_format_pvalue(log10p, expected):
    assert pv.format_pvalue(log10p) == expected


def test_format_pvalue_never_zero_and_na():
    for l in (-300.5, -307.9, -308.5, -323.9, -324.5, -1e6):
        s = pv.format_pvalue(l)
        assert s not in ("0", "0.0") and "e-" in s, (l, s)
        assert float(s) == 0.0 or float(s) > 0  # parseable
        assert abs(int(s.split("e")[1]) - math.floor(l)) <= 1
    assert pv.format_pvalue(None) == "n/a"
    assert pv.format_pvalue(float("nan")) == "n/a"


# --------------------------------------------------------------------------
# tail functions
# --------------------------------------------------------------------------

@pytest.mark.parametrize("df", [1, 2, 3, 7, 30, 100, 1000, 11006, 30000])
def test_t_logsf_matches_scipy_where_finite(df):
    for t in [-30.0, -3.0, -0.5, 0.0, 0.3, 1.0, 2.5, 5.0, 10.0, 20.0, 35.0, 50.0, 1e3, 1e6, 1e100]:
        ref = float(scipy.stats.t.logsf(t, df))
        if math.isfinite(ref) and ref > -700:
            assert pv.t_logsf(t, df) == pytest.approx(ref, rel=1e-8, abs=1e-300), (t, df)


@pytest.mark.parametrize("df", [1, 2, 8, 64, 100, 1000])
def test_chi2_logsf_matches_scipy_where_finite(df):
    for x in [0.01, 0.5, 1.0, 3.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 1300.0, 2000.0, 1e4]:
        ref = float(scipy.stats.chi2.logsf(x, df))
        if math.isfinite(ref) and ref > -700:
            assert pv.chi2_logsf(x, df) == pytest.approx(ref, rel=1e-8, abs=1e-300), (x, df)


def test_scipy_underflows_but_we_do_not():
    assert scipy.stats.chi2.logsf(1e4, 8) == -np.inf  # the reason this module exists
    assert scipy.stats.t.logsf(1e3, 11006) == -np.inf
    assert math.isfinite(pv.chi2_logsf(1e4, 8))
    assert math.isfinite(pv.t_logsf(1e3, 11006))


def test_tails_finite_and_strictly_decreasing_far_out():
    chi = [pv.chi2_logsf(x, df) for df in (8, 1000) for x in (1e4, 1e5, 1e6, 1e7)]
    for df_block in (chi[:4], chi[4:]):
        assert all(math.isfinite(v) for v in df_block)
        assert all(a > b for a, b in zip(df_block, df_block[1:])), df_block
    ts = [pv.t_logsf(t, 11006) for t in (1e2, 1e3, 1e4, 1e6, 1e100, 1e300)]
    assert all(math.isfinite(v) for v in ts)
    assert all(a > b for a, b in zip(ts, ts[1:])), ts


@pytest.mark.parametrize("df", [1, 3, 11006, 30000])
def test_t_logsf_monotone_across_scipy_mpmath_switch(df):
    # a grid that crosses the point where scipy stops being trusted (ln sf = -700)
    if df <= 3:
        grid = np.geomspace(1e90, 1e306, 400)
    else:
        grid = np.linspace(30.0, 60.0, 400)
    values = np.array([pv.t_logsf(t, df) for t in grid])
    assert np.all(np.isfinite(values))
    assert np.all(np.diff(values) <= 0), df
    assert values[0] > -700 > values[-1]  # the grid really crosses the switch


@pytest.mark.parametrize("df", [2, 8, 1000])
def test_chi2_logsf_monotone_across_scipy_mpmath_switch(df):
    grid = np.linspace(1000.0, 5000.0, 400)
    values = np.array([pv.chi2_logsf(x, df) for x in grid])
    assert np.all(np.isfinite(values))
    assert np.all(np.diff(values) < 0)
    assert values[0] > -700 > values[-1]


def _chi2_even_exact(x, df):
    """ln P(chi2_df > x) for even df from the closed form e^{-z} sum_{i<k} z^i / i!, z = x/2."""
    with mpmath.workdps(60):
        z = mpmath.mpf(x) / 2
        s = mpmath.fsum(z**i / mpmath.factorial(i) for i in range(df // 2))
        return float(-z + mpmath.log(s))


@pytest.mark.parametrize("x, df", [(1e4, 8), (1e5, 8), (1e6, 2), (1e7, 64), (2000.0, 1000), (58947.0, 64)])
def test_chi2_logsf_exact_closed_form(x, df):
    assert pv.chi2_logsf(x, df) == pytest.approx(_chi2_even_exact(x, df), rel=1e-12)


def test_chi2_logsf_direct_mpmath():
    with mpmath.workdps(60):
        ref = float(mpmath.log(mpmath.gammainc(mpmath.mpf(501) / 2, mpmath.mpf(10) ** 6 / 2, mpmath.inf,
                                               regularized=True)))
    assert pv.chi2_logsf(1e6, 501) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("t", [1e307, 1.5e308])
def test_t_logsf_cauchy_closed_form(t):
    # df = 1: P(T > t) = atan(1/t) / pi
    with mpmath.workdps(40):
        ref = float(mpmath.log(mpmath.atan(1 / mpmath.mpf(t)) / mpmath.pi))
    assert ref < -700
    assert pv.t_logsf(t, 1) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("t", [1e160, 1e200, 1e300])
def test_t_logsf_df2_closed_form(t):
    # df = 2: P(T > t) = 1 / (sqrt(2 + t^2) (sqrt(2 + t^2) + t))
    with mpmath.workdps(40):
        tt = mpmath.mpf(t)
        r = mpmath.sqrt(2 + tt * tt)
        ref = float(-mpmath.log(r) - mpmath.log(r + tt))
    assert pv.t_logsf(t, 2) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("t, df", [(1e3, 11006), (200.0, 11006), (1e4, 1000)])
def test_t_logsf_direct_mpmath_betainc(t, df):
    with mpmath.workdps(60):
        x = mpmath.mpf(df) / (mpmath.mpf(df) + mpmath.mpf(t) ** 2)
        ref = float(mpmath.log(mpmath.betainc(mpmath.mpf(df) / 2, mpmath.mpf(1) / 2, 0, x, regularized=True) / 2))
    assert ref < -700
    assert pv.t_logsf(t, df) == pytest.approx(ref, rel=1e-12)


def test_tail_input_validation():
    for bad in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError):
            pv.t_logsf(bad, 10)
        with pytest.raises(ValueError):
            pv.chi2_logsf(bad, 10)
    with pytest.raises(ValueError):
        pv.t_logsf(1.0, 0)
    with pytest.raises(ValueError):
        pv.chi2_logsf(1.0, -2)
    assert pv.chi2_logsf(0.0, 4) == 0.0


# --------------------------------------------------------------------------
# Spearman
# --------------------------------------------------------------------------

@pytest.mark.parametrize("h", [3, 10, 11008])
def test_spearman_identical_is_exactly_one_with_factorial_floor(h):
    perm = np.random.default_rng(h).permutation(h)
    r, log10p = pv.spearman(perm, perm)
    assert r == 1.0
    assert math.isfinite(log10p)
    assert log10p == -math.lgamma(h + 1) / LN10
    # the identity default for sigma
    r, log10p = pv.spearman(np.arange(h))
    assert r == 1.0 and log10p == -math.lgamma(h + 1) / LN10


def test_spearman_perfect_two_sided_and_reversed():
    h = 12
    ln_fact = math.lgamma(h + 1)
    assert pv.spearman(np.arange(h), alternative="two-sided")[1] == pytest.approx((math.log(2) - ln_fact) / LN10)
    rev = np.arange(h)[::-1].copy()
    r, l = pv.spearman(rev)
    assert r == -1.0 and l == 0.0  # one-sided "greater": p = 1
    r, l = pv.spearman(rev, alternative="two-sided")
    assert r == -1.0 and l == pytest.approx((math.log(2) - ln_fact) / LN10)
    r, l = pv.spearman(rev, alternative="less")
    assert l == pytest.approx(-ln_fact / LN10)


def _matched_tail(h, r):
    """P(R ≥ r) for R/c with density ∝ (1 − x²)^(ν/2−1), variance 1/(h−1) and Spearman's exact kurtosis."""
    k = 3 * (25 * h**3 - 38 * h**2 - 35 * h + 72) / (25 * h * (h + 1) * (h - 1))
    nu = (3 * k - 3) / (3 - k)
    x = r / math.sqrt((nu + 1) / (h - 1))
    return scipy.stats.t.sf(x * math.sqrt(nu / (1 - x * x)), nu)


@pytest.mark.parametrize("h", [20, 57, 200, 1000])
def test_spearman_matches_scipy(h):
    rng = np.random.default_rng(1234 + h)
    for trial in range(5):
        a = rng.permutation(h)
        # mix of unrelated and positively related pairs
        b = rng.permutation(h) if trial % 2 == 0 else _swap_pairs(h, h // 4, trial)[a]
        ref = scipy.stats.spearmanr(a, b)
        r, l_greater = pv.spearman(a, b)
        assert r == pytest.approx(ref.statistic, rel=1e-12, abs=1e-12)
        t = ref.statistic * math.sqrt((h - 2) / (1 - ref.statistic**2))
        # the p-value is the larger of scipy's t tail and the tail matched to r's exact variance and
        # kurtosis at the next attainable value (tracing.spearman_law): never below the t tail
        _, l_two = pv.spearman(a, b, alternative="two-sided")
        _, l_less = pv.spearman(a, b, alternative="less")
        step = 12 / (h * (h * h - 1))  # r at the next attainable S
        rho = ref.statistic
        for got, t_tail, matched in ((l_greater, scipy.stats.t.sf(t, h - 2), _matched_tail(h, rho - step)),
                                     (l_two, ref.pvalue, 2 * _matched_tail(h, abs(rho) - step)),
                                     (l_less, scipy.stats.t.cdf(t, h - 2), _matched_tail(h, -rho - step))):
            assert got == pytest.approx(math.log10(min(1.0, max(t_tail, matched))), rel=1e-7, abs=1e-12)
            assert got >= math.log10(t_tail) - 1e-12


def test_spearman_accepts_torch_and_lists():
    torch = pytest.importorskip("torch")
    h = 50
    a = np.random.default_rng(5).permutation(h)
    b = _swap_pairs(h, 10, 6)
    expected = pv.spearman(a, b)
    assert pv.spearman(torch.from_numpy(a), torch.from_numpy(b)) == expected
    assert pv.spearman(a.tolist(), b.tolist()) == expected
    # ranks, not values: a monotone relabelling of the indices changes nothing
    assert pv.spearman(a * 3 + 7, b) == expected


def test_spearman_perturbed_large_h_is_tiny_finite_and_above_floor():
    h = 11008
    floor = -math.lgamma(h + 1) / LN10
    perm = _swap_pairs(h, 5, 0)
    r, log10p = pv.spearman(perm)
    assert r < 1.0
    assert math.isfinite(log10p)
    assert log10p < -1000
    assert log10p >= floor
    assert pv.spearman(perm, alternative="two-sided")[1] >= floor + math.log10(2) - 1e-9
    # more perturbation -> less significant
    assert pv.spearman(_swap_pairs(h, 500, 1))[1] > log10p


def test_spearman_small_h_clamped_to_floor():
    # h = 10 with one adjacent swap: r = 1 - 12/990, the t approximation gives
    # p below 1/10!, which is impossible; the exact law gives P(S <= 2) = (1 + 9)/10!
    # (the identity and the 9 adjacent swaps), above the floor.
    h = 10
    perm = np.arange(h)
    perm[[0, 1]] = perm[[1, 0]]
    r, log10p = pv.spearman(perm)
    t = r * math.sqrt((h - 2) / (1 - r * r))
    assert math.log10(scipy.stats.t.sf(t, h - 2)) < -math.lgamma(h + 1) / LN10  # premise
    assert log10p == pytest.approx(math.log10(10) - math.lgamma(h + 1) / LN10, rel=1e-12)
    for hh in range(3, 30):
        for seed in range(3):
            p = np.random.default_rng(seed).permutation(hh)
            assert pv.spearman(p)[1] >= -math.lgamma(hh + 1) / LN10 - 1e-12


def test_spearman_input_validation():
    with pytest.raises(ValueError):
        pv.spearman(np.arange(5), np.arange(6))
    with pytest.raises(ValueError):
        pv.spearman(np.arange(2))
    with pytest.raises(ValueError):
        pv.spearman([0, 1, 1, 3])
    with pytest.raises(ValueError):
        pv.spearman(np.arange(5), alternative="bigger")


# --------------------------------------------------------------------------
# Fisher
# --------------------------------------------------------------------------

def test_fisher_matches_scipy():
    rng = np.random.default_rng(7)
    for k in (1, 2, 5, 32):
        p = rng.uniform(1e-6, 1.0, size=k)
        ref = scipy.stats.combine_pvalues(p, method="fisher")
        stat, log10p = pv.fisher(np.log10(p))
        assert stat == pytest.approx(ref.statistic, rel=1e-12)
        assert log10p == pytest.approx(math.log10(ref.pvalue), rel=1e-9, abs=1e-12)


def test_fisher_skips_nan_and_none():
    p = np.array([0.01, 0.2, 0.5])
    expected = pv.fisher(np.log10(p))
    assert pv.fisher([math.log10(0.01), float("nan"), math.log10(0.2), None, math.log10(0.5)]) == expected
    assert all(math.isnan(v) for v in pv.fisher([float("nan"), None]))
    assert all(math.isnan(v) for v in pv.fisher([]))


def test_fisher_single_tiny_pvalue_is_identity():
    # with one p-value, P(chi2_2 > -2 ln p) = p exactly
    for l in (-3.0, -400.0, -4000.0):
        assert pv.fisher([l])[1] == pytest.approx(l, rel=1e-12)


def test_fisher_far_below_float_range():
    layers = 32
    stat, log10p = pv.fisher([-400.0] * layers)
    assert stat == pytest.approx(2 * LN10 * 400 * layers, rel=1e-12)
    assert math.isfinite(log10p)
    assert log10p < -400 * layers * 0.9
    assert log10p == pytest.approx(_chi2_even_exact(stat, 2 * layers) / LN10, rel=1e-12)


def test_fisher_rejects_zero_pvalue():
    with pytest.raises(ValueError):
        pv.fisher([-2.0, -np.inf])


# --------------------------------------------------------------------------
# permutation test
# --------------------------------------------------------------------------

def test_permtest_values_on_grid():
    rng = np.random.default_rng(3)
    T = 99
    null = rng.normal(size=T)
    for obs in np.linspace(-4, 4, 41):
        p, l = pv.permtest(obs, null)
        k = round(p * (T + 1))
        assert p == k / (T + 1)
        assert 1 <= k <= T + 1
        assert k == 1 + np.sum(null <= obs)
        assert l == pytest.approx(math.log10(p), rel=1e-14, abs=1e-15)


def test_permtest_ties_and_extremes():
    assert pv.permtest(2.0, [2.0] * 9) == (1.0, 0.0)  # all tied: conservative p = 1
    p, l = pv.permtest(1.0, [2.0, 3.0, 4.0])
    assert p == 0.25 and l == pytest.approx(math.log10(0.25))
    p, _ = pv.permtest(3.0, [1.0, 3.0, 5.0])  # one below, one tied
    assert p == 3 / 4


def test_permtest_counts_floating_point_ties():
    """A permuted value equal to the observed one in exact arithmetic but rounded the other way
    (sums in another order) is a tie, counted as at least as extreme, as scipy.stats.permutation_test does."""
    observed = 0.3 + 0.2 + 0.1  # 0.6
    tied = 0.1 + 0.2 + 0.3  # 0.6000000000000001
    assert tied > observed
    p, l = pv.permtest(observed, [tied] + [1.0] * 8)
    assert p == 2 / 10 and l == pytest.approx(math.log10(0.2))
    # beyond the relative tolerance (100 machine epsilons, scipy's) a larger value is not a tie
    assert pv.permtest(observed, [observed * (1 + 1e-9)] + [1.0] * 8).pvalue == 1 / 10
    assert pv.permtest(observed, [tied] * 9, rtol=0.0).pvalue == 1 / 10


def test_pvalue_results_are_named():
    r = pv.spearman([0, 1, 2, 3, 4])
    assert isinstance(r, pv.SpearmanResult) and r.statistic == 1.0 and r.log10_pvalue == r[1]
    f = pv.fisher([-1.0, -2.0])
    assert isinstance(f, pv.FisherResult) and (f.statistic, f.log10_pvalue) == tuple(f)
    t = pv.permtest(1.0, [2.0, 3.0, 4.0])
    assert isinstance(t, pv.PermtestResult) and t.pvalue == 0.25 and t == (0.25, t.log10_pvalue)
    assert isinstance(pv.spearman_pairs(range(3), range(3)), pv.SpearmanResult)


def test_permtest_errors():
    with pytest.raises(ValueError, match="at least one"):
        pv.permtest(1.0, [])
    with pytest.raises(ValueError):
        pv.permtest(1.0, [0.5, float("nan")])


# --------------------------------------------------------------------------
# multiple testing
# --------------------------------------------------------------------------

def _holm_float(p):
    p = np.asarray(p, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def _bh_float(p):
    p = np.asarray(p, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, m * p[i] / (rank + 1))
        adj[i] = running
    return adj


def test_holm_bh_match_float_implementation():
    rng = np.random.default_rng(11)
    for m in (1, 2, 7, 50):
        p = rng.uniform(1e-5, 1.0, size=m) ** 2
        np.testing.assert_allclose(pv.holm(np.log10(p)), np.log10(_holm_float(p)), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(pv.benjamini_hochberg(np.log10(p)), np.log10(_bh_float(p)),
                                   rtol=1e-10, atol=1e-12)
        assert np.all(pv.holm(np.log10(p)) <= 0) and np.all(pv.benjamini_hochberg(np.log10(p)) <= 0)


def test_holm_bh_tiny_and_nan():
    l = np.array([-4000.0, float("nan"), -3000.0, -1.0])
    h = pv.holm(l)
    b = pv.benjamini_hochberg(l)
    assert np.isnan(h[1]) and np.isnan(b[1])
    ok = ~np.isnan(l)
    assert np.all(np.isfinite(h[ok])) and np.all(np.isfinite(b[ok]))
    # m = 3 (NaN not counted)
    np.testing.assert_allclose(h[ok], [-4000 + math.log10(3), -3000 + math.log10(2), -1.0], rtol=1e-14)
    np.testing.assert_allclose(b[ok], [-4000 + math.log10(3), -3000 + math.log10(3 / 2), -1.0], rtol=1e-14)
    assert np.all(np.isnan(pv.holm([float("nan")])))
