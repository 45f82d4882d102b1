"""Upper tails of Student's t and chi-square as *natural* logs that never underflow.

scipy's special functions are used where they are finite and accurate (the same values as ``scipy.stats``'
``logsf``, without importing ``scipy.stats``); in the far tail, where scipy's own ``logsf``
returns ``-inf`` (below ~1e-308), the tail is computed in arbitrary precision (``mpmath``).
:mod:`tracing.pvalues` builds the p-values of the statistics on these.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import scipy.special as sc

# scipy's logsf is trusted while its result is above this natural log
# (e^-700 ~ 1e-304, safely inside the normal float range: below it scipy
# computes log(sf) of a subnormal or zero sf and loses accuracy, then -inf).
_SCIPY_LOG_FLOOR = -700.0

# Working precision (decimal digits) of the arbitrary-precision tails.  The
# results are logs of size up to ~1e7, so 40 digits leave > 30 correct digits.
_MP_DPS = 40

# Iteration cap of the continued fractions; far more than ever needed in the
# region where they are used (they converge in O(sqrt(a)) steps or better).
_CF_MAX_ITER = 100_000


def _check_finite(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _log_betainc_lower_cf(a, b, x):
    """ln I_x(a, b) (regularized lower incomplete beta) by its continued fraction.

    mpmath arguments; valid (and fast) for x < (a + 1) / (a + b + 2).  Modified
    Lentz evaluation; the prefactor x^a (1-x)^b / (a B(a, b)) is taken in logs.
    """
    tiny = mpmath.mpf(10) ** (-10 * _MP_DPS)
    eps = mpmath.mpf(10) ** (-_MP_DPS + 5)
    qab, qap, qam = a + b, a + 1, a - 1
    c = mpmath.mpf(1)
    d = 1 - qab * x / qap
    if abs(d) < tiny:
        d = tiny
    d = 1 / d
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < eps:
            break
    else:  # pragma: no cover - not reached in the documented range
        raise ArithmeticError(f"incomplete-beta continued fraction did not converge (a={a}, b={b}, x={x})")
    log_prefactor = (
        a * mpmath.log(x) + b * mpmath.log1p(-x)
        - mpmath.log(a) - (mpmath.loggamma(a) + mpmath.loggamma(b) - mpmath.loggamma(a + b))
    )
    return log_prefactor + mpmath.log(h)


def _t_logsf_mp(t: float, df: float) -> float:
    """ln P(T_df > t) in arbitrary precision.

    For t >= 0, P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t^2).  In the
    far tail x is small enough for the continued fraction; elsewhere (not
    normally reached: scipy covers it) mpmath's own betainc is used.
    """
    with mpmath.workdps(_MP_DPS):
        a, b = mpmath.mpf(df) / 2, mpmath.mpf(1) / 2
        tt = mpmath.mpf(abs(t))
        x = mpmath.mpf(df) / (mpmath.mpf(df) + tt * tt)
        if x < (a + 1) / (a + b + 2):
            log_upper = _log_betainc_lower_cf(a, b, x) - mpmath.log(2)
        else:
            log_upper = mpmath.log(mpmath.betainc(a, b, 0, x, regularized=True) / 2)
        if t >= 0:
            return float(log_upper)
        return float(mpmath.log1p(-mpmath.exp(log_upper)))


def _logsf(x: float, median, sf, cdf) -> float:
    """ln P(X > x) from a distribution's tail functions, computed as ``scipy.stats``' ``logsf``
    computes it (log of the upper tail above the median, log1p of minus the lower tail below it,
    on float64 arrays), so the value is the same to the last bit without importing scipy.stats."""
    v = np.asarray([x], dtype=np.float64)
    if v[0] > median:
        return float(np.log(sf(v))[0])
    return float(np.log1p(-cdf(v))[0])


def t_logsf(t: float, df: float) -> float:
    """Natural log of the Student-t upper tail, ln P(T_df > t).

    Finite for every finite ``t`` (``scipy.stats.t.logsf`` returns ``-inf`` once
    the tail is below ~1e-308, e.g. ``t_logsf(1e3, 11006)`` is about -24880).
    Uses scipy where its result is above e^-700, arbitrary precision beyond.

    Raises ValueError for non-finite ``t`` or ``df <= 0``.
    """
    t = _check_finite("t", t)
    df = _check_finite("df", df)
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    with np.errstate(all="ignore"):
        value = _logsf(t, sc.stdtrit(df, 0.5), lambda x: sc.stdtr(df, -x), lambda x: sc.stdtr(df, x))
    if math.isfinite(value) and value > _SCIPY_LOG_FLOOR:
        return value
    return _t_logsf_mp(t, df)


def _chi2_logsf_mp(x: float, df: float) -> float:
    """ln P(chi2_df > x) = ln Q(df/2, x/2) in arbitrary precision."""
    with mpmath.workdps(_MP_DPS):
        a, z = mpmath.mpf(df) / 2, mpmath.mpf(x) / 2
        return float(mpmath.log(mpmath.gammainc(a, z, mpmath.inf, regularized=True)))


def chi2_logsf(x: float, df: float) -> float:
    """Natural log of the chi-square upper tail, ln P(chi2_df > x).

    Finite for every finite ``x`` (``scipy.stats.chi2.logsf(1e4, 8)`` is
    ``-inf``; ``chi2_logsf(1e4, 8)`` is about -4976.24).  Uses scipy where its
    result is above e^-700, arbitrary precision beyond; fine for x up to 1e7
    and beyond.  ``x <= 0`` gives 0.0 (probability 1).

    Raises ValueError for non-finite ``x`` or ``df <= 0``.
    """
    x = _check_finite("x", x)
    df = _check_finite("df", df)
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if x <= 0:
        return 0.0
    with np.errstate(all="ignore"):
        value = _logsf(x, 2 * sc.gammaincinv(df / 2, 0.5), lambda v: sc.chdtrc(df, v), lambda v: sc.chdtr(df, v))
    if math.isfinite(value) and value > _SCIPY_LOG_FLOOR:
        return value
    return _chi2_logsf_mp(x, df)
