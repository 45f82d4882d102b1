"""P-values that never underflow: every tail probability is computed in log space.

Weight-tracing statistics produce p-values far below the smallest float
(``1e-308``): a fine-tuned model matched against its base gives Spearman
correlations within a hair of 1 over thousands of hidden units, and Fisher's
method then multiplies dozens of such layers together.  The float value
``0.0`` carries no information (and breaks every later computation), so this
module works with logarithms throughout:

* the *authoritative* value of a p-value is its ``log10`` (``log10_pvalue``
  in results), always finite;
* :func:`log10_to_float` gives the plain float for convenience (it may
  underflow to ``0.0`` -- never feed that back into a computation);
* :func:`format_pvalue` prints it for humans (``"0.032"``, ``"4.1e-05"``,
  ``"1e-4521"``).

Tail functions (:func:`t_logsf`, :func:`chi2_logsf`) return *natural* logs,
like ``scipy.stats``; they use scipy where scipy is finite and accurate and
switch to arbitrary precision (``mpmath``) in the far tail, where scipy's own
``logsf`` returns ``-inf``.  The statistical procedures (:func:`spearman`,
:func:`fisher`, :func:`permtest`, :func:`holm`, :func:`benjamini_hochberg`)
take and return ``log10`` p-values.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable, NamedTuple

import numpy as np

from .tails import chi2_logsf, t_logsf

__all__ = [
    "LOG10_E",
    "ln_to_log10",
    "log10_to_float",
    "format_pvalue",
    "t_logsf",
    "chi2_logsf",
    "SpearmanResult",
    "FisherResult",
    "PermtestResult",
    "PERMTEST_RTOL",
    "spearman",
    "spearman_pairs",
    "MIN_PAIRS",
    "fisher",
    "permtest",
    "holm",
    "benjamini_hochberg",
]

_LN10 = math.log(10.0)


class SpearmanResult(NamedTuple):
    """:func:`spearman` / :func:`spearman_pairs`: Spearman's r and its log10 p-value."""

    statistic: float
    log10_pvalue: float


class FisherResult(NamedTuple):
    """:func:`fisher`: X = -2 sum ln p_i and the log10 p-value of the combination."""

    statistic: float
    log10_pvalue: float


class PermtestResult(NamedTuple):
    """:func:`permtest`: the exact p-value (1+k)/(T+1) and its log10."""

    pvalue: float
    log10_pvalue: float


#: permuted values within this relative distance of the observed one are ties (scipy.stats.permutation_test's)
PERMTEST_RTOL = 100 * float(np.finfo(np.float64).eps)

#: log10(e): multiply a natural log by this to get a log10.
LOG10_E = 1.0 / _LN10

# --------------------------------------------------------------------------
# conversions and formatting
# --------------------------------------------------------------------------

def ln_to_log10(x):
    """Convert a natural log (scalar or numpy array) to a log10: ``x / ln(10)``."""
    return x / _LN10


def log10_to_float(l):
    """Return ``10**l`` as a float (or array of floats for array input).

    A convenience for display and legacy result keys only: values below
    ~1e-308 underflow to ``0.0`` (no error is raised).  NaN stays NaN.
    """
    with np.errstate(under="ignore", over="ignore"):
        out = np.power(10.0, np.asarray(l, dtype=float))
    return float(out) if out.ndim == 0 else out


def format_pvalue(log10p, digits: int = 2) -> str:
    """Format a p-value given by its log10 for humans; never returns ``"0.0"``.

    Ordinary p-values use ``digits`` significant digits in Python's ``g``
    style (``-1.49 -> "0.032"``, ``-4.39 -> "4.1e-05"``).  Values below the
    float range are written from the log directly: ``-4521 -> "1e-4521"``,
    ``-4520.49 -> "3.2e-4521"``.  ``None``, NaN and other non-finite input
    give ``"n/a"`` (a valid p-value always has a finite log10).
    """
    if log10p is None:
        return "n/a"
    l = float(log10p)
    if not math.isfinite(l):
        return "n/a"
    if l >= -300.0:  # 10**l is a normal float: let Python format it
        return f"{10.0 ** l:.{digits}g}"
    exponent = math.floor(l)
    mantissa = round(10.0 ** (l - exponent), digits - 1)
    if mantissa >= 10.0:  # e.g. 9.96 rounds up to 10
        mantissa /= 10.0
        exponent += 1
    return f"{mantissa:.{digits}g}e{exponent}"


def format_log10(log10p) -> str:
    """log10 p with two decimals (``-3024.46``), enough to agree with :func:`format_pvalue`'s
    two-digit mantissa (``3.5e-3025``); very small magnitudes keep two significant digits."""
    if log10p is None or not math.isfinite(float(log10p)):
        return "n/a"
    l = float(log10p)
    return f"{l:.2f}" if abs(l) >= 0.01 or l == 0 else f"{l:.2g}"


# --------------------------------------------------------------------------
# Spearman
# --------------------------------------------------------------------------

def _as_1d_array(v, name: str) -> np.ndarray:
    if v is not None and hasattr(v, "detach"):  # torch tensor, any device
        v = v.detach().cpu().numpy()
    arr = np.asarray(v)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D index vector, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must hold integer indices (got dtype {arr.dtype})")
    return arr


def _ranks(arr: np.ndarray, name: str) -> np.ndarray:
    """0-based ranks of distinct values as int64 (a permutation of 0..h-1 is its own rank vector)."""
    h = arr.shape[0]
    if arr.dtype.kind in "iu" and arr.min() == 0 and arr.max() == h - 1:
        seen = np.zeros(h, dtype=bool)
        seen[arr] = True
        if seen.all():  # already a permutation of 0..h-1
            return arr.astype(np.int64)
    order = np.argsort(arr, kind="stable")
    srt = arr[order]
    if np.any(srt[1:] == srt[:-1]):
        raise ValueError(f"{name} has repeated values; Spearman on index vectors needs distinct entries")
    ranks = np.empty(h, dtype=np.int64)
    ranks[order] = np.arange(h, dtype=np.int64)
    return ranks


def _sum_squared(d: np.ndarray) -> int:
    """Exact integer sum of d**2 (falls back to Python ints if int64 could overflow)."""
    h = d.shape[0]
    sq = d * d  # each |d| < h, so d*d fits int64 for any realistic h
    if h * (h * h - 1) // 3 <= np.iinfo(np.int64).max:  # the largest possible sum
        return int(sq.sum(dtype=np.int64))
    return sum(int(v) for v in sq)


def spearman(pi, sigma=None, alternative: str = "greater") -> SpearmanResult:
    """Spearman correlation of two index vectors and its log10 p-value.

    Parameters
    ----------
    pi, sigma
        Integer index vectors of the same length h >= 3 (numpy arrays, torch
        tensors or lists), typically permutations of 0..h-1 such as a
        matching's assignment; ``sigma=None`` means the identity ``0..h-1``.
        Entries must be distinct (they are replaced by their ranks, which for
        a permutation are the values themselves).
    alternative
        ``"greater"`` (default; the paper's one-sided test, small p means
        positively correlated = similar models), ``"less"`` or
        ``"two-sided"`` (what ``scipy.stats.spearmanr`` reports).

    Returns
    -------
    SpearmanResult(statistic=r, log10_pvalue)
        ``r`` is computed exactly from the integer sum of squared rank
        differences, so identical vectors give exactly ``1.0``.  The p-value
        is P(S <= s) under a uniformly random permutation (S = sum of d^2):
        exact for h <= 18 (:mod:`tracing.spearman_law`); beyond, the larger of
        the t tail (t = r sqrt((h-2)/(1-r^2)), h-2 degrees of freedom) and a
        tail matched to the exact variance and kurtosis of r, measured
        conservative.  A perfect match (r = 1, or r = -1 for "less") gets the
        exact null probability 1/h! of that event (2/h! two-sided, for
        r = +-1), and no p-value is reported below that floor.

    Raises ValueError for a length mismatch, h < 3, repeated entries or an
    unknown ``alternative``.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    a = _as_1d_array(pi, "pi")
    h = a.shape[0]
    b = np.arange(h, dtype=np.int64) if sigma is None else _as_1d_array(sigma, "sigma")
    if b.shape[0] != h:
        raise ValueError(f"pi and sigma must have the same length, got {h} and {b.shape[0]}")
    if h < 3:
        raise ValueError(f"Spearman needs at least 3 entries, got {h}")

    s = _sum_squared(_ranks(a, "pi") - _ranks(b, "sigma"))  # sum of d^2, exact
    denom = h * (h * h - 1)
    numer = denom - 6 * s  # r = numer / denom exactly
    r = float(Fraction(numer, denom))

    ln_h_fact = math.lgamma(h + 1)
    if alternative == "two-sided":
        ln_floor = math.log(2.0) - ln_h_fact
    else:
        ln_floor = -ln_h_fact

    if abs(numer) == denom:  # r = +-1 exactly: t is infinite
        perfect = numer > 0
        if alternative == "two-sided" or (alternative == "greater") == perfect:
            ln_p = ln_floor
        else:  # the opposite extreme of a one-sided test: p = 1
            ln_p = 0.0
        return SpearmanResult(r, ln_to_log10(ln_p))

    # the law of S (tracing.spearman_law): exact for small h, else the larger of the t tail
    # (t = N sqrt((h-2) / (6 s (2D - 6s))) from exact integers) and a matched-moment tail
    from .spearman_law import ln_lower_tail
    s_max = denom // 3  # S -> S_max - S reverses the order
    if alternative == "greater":
        ln_p = ln_lower_tail(h, s)
    elif alternative == "less":
        ln_p = ln_lower_tail(h, s_max - s)
    else:
        ln_p = min(0.0, math.log(2.0) + ln_lower_tail(h, min(s, s_max - s)))
    return SpearmanResult(r, ln_to_log10(max(ln_p, ln_floor)))


#: Fewest matched pairs for which :func:`spearman_pairs` reports a p-value.
MIN_PAIRS = 8


def spearman_pairs(x, y, alternative: str = "greater", min_pairs: int = MIN_PAIRS) -> SpearmanResult:
    """SPEARMAN of m matched pairs (x[k], y[k]): the rank correlation of the two index sequences.

    The general form of :func:`spearman` for matchings that leave rows out (degenerate rows,
    rectangular matchings): each sequence holds m distinct indices (any values, e.g. original
    row numbers), replaced by their ranks among themselves; r comes exactly from the integer sum
    of squared rank differences, with the same null law, floor -log10(m!) and ``alternative`` as
    :func:`spearman`.  For ``x = 0..h-1`` this is exactly ``spearman(y)``.

    Returns a :class:`SpearmanResult`, ``(nan, nan)`` when m < ``min_pairs`` (too few pairs to test).
    """
    a = _as_1d_array(x, "x")
    b = _as_1d_array(y, "y")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x and y must have the same length, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] < max(min_pairs, 3):
        return SpearmanResult(math.nan, math.nan)
    return spearman(b, a, alternative)


# --------------------------------------------------------------------------
# combining and permutation tests
# --------------------------------------------------------------------------

def _log10_array(log10_pvalues, name: str = "log10_pvalues") -> np.ndarray:
    """Float array of log10 p-values (None -> NaN); rejects values that are not log10 of a p in (0, 1]."""
    arr = np.array([np.nan if v is None else float(v) for v in np.ravel(np.asarray(log10_pvalues, dtype=object))],
                   dtype=float)
    finite = arr[~np.isnan(arr)]
    if np.any(np.isinf(finite)):
        raise ValueError(f"{name} must be finite log10 p-values (a p-value of 0 has no log); got -inf/inf")
    # allow rounding noise such as log10(1.0000000000000002)
    if np.any(finite > 1e-9):
        raise ValueError(f"{name} must be <= 0 (p-values <= 1), got max {finite.max()}")
    return np.minimum(arr, 0.0)


def fisher(log10_pvalues: Iterable) -> FisherResult:
    """Fisher's method for combining independent p-values, given and returned as log10.

    X = -2 sum ln p_i = -2 ln(10) sum log10 p_i, and p = P(chi2_{2k} > X) over
    the k entries that are not NaN/None (skipped, e.g. layers without a
    result).  Works entirely from the logs, so it is exact even when every
    p_i is 1e-4000.

    Returns a :class:`FisherResult` ``(X, log10_pvalue)``; ``(nan, nan)`` when there is no usable entry.
    Raises ValueError for infinite entries or entries > 0.
    """
    arr = _log10_array(log10_pvalues)
    arr = arr[~np.isnan(arr)]
    k = arr.size
    if k == 0:
        return FisherResult(math.nan, math.nan)
    stat = -2.0 * _LN10 * math.fsum(arr.tolist())
    return FisherResult(stat, ln_to_log10(chi2_logsf(stat, 2 * k)))


def permtest(observed: float, null_values, rtol: float = PERMTEST_RTOL) -> PermtestResult:
    """Permutation-test p-value for a statistic where smaller means more similar.

    p = (1 + #{v in null_values : v <= observed + rtol·|observed|}) / (T + 1), T = len(null_values):
    ties count as at least as extreme (conservative) and the observed value
    counts as one draw, so p is always one of 1/(T+1), ..., 1 and never 0.
    A permuted value within the relative tolerance ``rtol`` of the observed one
    is a tie (the same value computed in another order of rounding), as in
    ``scipy.stats.permutation_test``.

    Returns a :class:`PermtestResult` ``(p, log10_pvalue)``.  Raises ValueError for an empty null
    sample, NaN in ``null_values`` or a NaN ``observed``.
    """
    obs = float(observed)
    if math.isnan(obs):
        raise ValueError("permtest: the observed statistic is NaN")
    if null_values is not None and hasattr(null_values, "detach"):
        null_values = null_values.detach().cpu().numpy()
    null = np.asarray(null_values, dtype=float).ravel()
    n = null.size
    if n == 0:
        raise ValueError("permtest needs at least one permuted (null) value; got none (use --num_perm > 0)")
    if np.any(np.isnan(null)):
        raise ValueError(f"permtest: {int(np.isnan(null).sum())} of {n} null values are NaN")
    count = 1 + int(np.count_nonzero(null <= obs + abs(obs) * float(rtol)))
    return PermtestResult(count / (n + 1), math.log10(count) - math.log10(n + 1))


# --------------------------------------------------------------------------
# multiple testing (log10 in, log10 out)
# --------------------------------------------------------------------------

def _ascending(log10_pvalues):
    """(values, NaN-filled output, indices of the non-NaN values in ascending order)."""
    arr = _log10_array(log10_pvalues)
    idx = np.flatnonzero(~np.isnan(arr))
    return arr, np.full(arr.shape, np.nan), idx[np.argsort(arr[idx], kind="stable")]


def holm(log10_pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error), in log10.

    With the m non-NaN p-values sorted ascending, p_(j) becomes
    max_{i <= j} min(1, (m - i + 1) p_(i)); computed as log10(m - i + 1) +
    log10 p_(i), so tiny p-values stay exact.  NaN entries stay NaN and do
    not count towards m.  Returns a 1-D float array in input order.
    """
    arr, out, order = _ascending(log10_pvalues)
    m = order.size
    if m == 0:
        return out
    scaled = arr[order] + np.log10(np.arange(m, 0, -1, dtype=float))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 0.0)
    return out


def benjamini_hochberg(log10_pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in log10.

    With the m non-NaN p-values sorted ascending, p_(j) becomes
    min_{i >= j} min(1, m p_(i) / i); computed as log10 p_(i) + log10(m) -
    log10(i).  NaN entries stay NaN and do not count towards m.  Returns an
    array shaped like the input.
    """
    arr, out, order = _ascending(log10_pvalues)
    m = order.size
    if m == 0:
        return out
    scaled = arr[order] + math.log10(m) - np.log10(np.arange(1, m + 1, dtype=float))
    out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 0.0)
    return out
