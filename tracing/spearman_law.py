"""The null law of Spearman's statistic for m matched pairs: exact for small m, a conservative tail beyond.

Under H₀ the partner ranks of the m matched pairs form a uniformly random permutation π of
0..m-1, and the statistic is S = Σ (i − π(i))² (r = 1 − 6S / (m(m²−1)); S is always even).  The
one-sided ("greater") p-value is P(S ≤ s) for the observed s; "less" is P(S ≥ s) = P(S ≤ S_max − s)
(S ↦ S_max − S reverses π).

- m ≤ :data:`EXACT_MAX`: **exact**, from the number of permutations with each value of S, counted
  by a dynamic programme over the set of ranks already used (:func:`count_permutations`; the counts
  are shipped in ``spearman_law.json``, rebuilt by ``python -m tracing.spearman_law``).
- m > :data:`EXACT_MAX`: the larger of two tails — the Student-t tail of r at s (the classical
  approximation, t = r√((m−2)/(1−r²)), m − 2 degrees of freedom) and a Pearson type II tail at the
  next attainable value s + 2: r/c has density ∝ (1 − x²)^(ν/2−1), its variance and fourth moment
  equal to the exact ones of r (1/(m−1) and the exact kurtosis), i.e. t' = (r/c)√(ν/(1−r²/c²)) on ν
  degrees of freedom.  The t tail alone is anti-conservative in the tail for every m (P(p ≤ 1e-5) is
  about 2× nominal at m = 16 and 1 + 19/m times for large m); the matched tail at s + 2 is measured
  conservative (bench/bench_spearman_law.py).

Everything is returned as a natural log.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from .tails import t_logsf

#: largest m whose law is exact (the counts table)
EXACT_MAX = 18
TABLE = Path(__file__).with_name("spearman_law.json")


def count_permutations(m: int) -> list[int]:
    """``c[k]`` = the number of permutations π of 0..m-1 with Σ (i − π(i))² = 2k, k = 0..S_max/2.

    Rows i are placed in order; a state is the set of columns already used (a bit mask) and holds
    the counts of every partial sum.  Work and memory grow as C(m, m/2) · m³/3 (m = 18: ~1 GB).
    """
    W = m * (m * m - 1) // 3 + 1
    states = np.array([0], dtype=np.int64)
    counts = np.zeros((1, W), dtype=np.int64)
    counts[0, 0] = 1
    reach = 0  # largest partial sum so far
    for i in range(m):
        nxt = np.unique(np.concatenate([states[(states >> j) & 1 == 0] | (1 << j) for j in range(m)]))
        out = np.zeros((nxt.size, W), dtype=np.int64)
        for j in range(m):
            sel = np.flatnonzero((states >> j) & 1 == 0)
            if sel.size:
                step = (i - j) ** 2
                top = min(reach, W - 1 - step)
                out[np.searchsorted(nxt, states[sel] | (1 << j)), step:step + top + 1] += counts[sel, :top + 1]
        reach = min(W - 1, reach + max(i, m - 1 - i) ** 2)
        states, counts = nxt, out
    c = [int(v) for v in counts[0][::2]]
    if sum(c) != math.factorial(m):  # pragma: no cover - an overflow or a bug, never expected
        raise ArithmeticError(f"the counts for m={m} do not add up to m!")
    return c


@lru_cache(maxsize=None)
def _log_cdf(m: int) -> np.ndarray:
    """ln P(S ≤ 2k) for k = 0..S_max/2, exact (from the shipped counts)."""
    counts = json.loads(TABLE.read_text())[str(m)]
    ln_total = math.lgamma(m + 1)
    cum, out = 0, []
    for c in counts:
        cum += c  # Python integers: exact
        out.append(math.log(cum) - ln_total)
    return np.array(out)


def _kurtosis(m: int) -> float:
    """E r⁴ / (E r²)² of Spearman's r under H₀ (E r² = 1/(m−1))."""
    return 3 * (25 * m ** 3 - 38 * m ** 2 - 35 * m + 72) / (25 * m * (m + 1) * (m - 1))


def _ln_upper_t(m: int, s: int) -> float:
    """ln P(T_{m−2} > t), t = r√((m−2)/(1−r²)) from the exact integers (as :func:`tracing.pvalues.spearman`)."""
    D = m * (m * m - 1)
    if s == 0:
        return -math.inf
    if 6 * s >= 2 * D:  # r = -1
        return 0.0
    return t_logsf((D - 6 * s) * math.sqrt((m - 2) / float(6 * s * (2 * D - 6 * s))), m - 2)


def _ln_upper_pearson2(m: int, s: int) -> float:
    """ln P(R ≥ r(s)) for R/c with density ∝ (1 − x²)^(ν/2−1) matching r's variance and kurtosis."""
    k = _kurtosis(m)
    nu = (3 * k - 3) / (3 - k)
    c = math.sqrt((nu + 1) / (m - 1))
    D = m * (m * m - 1)
    x = (D - 6 * s) / D / c
    if x <= -1:
        return 0.0
    return t_logsf(x * math.sqrt(nu / (1 - x * x)), nu)


def ln_lower_tail(m: int, s: int) -> float:
    """ln P(S ≤ s) under H₀ (exact for m ≤ EXACT_MAX, conservative beyond); ``s`` an attainable
    (even) value of S."""
    if m <= EXACT_MAX:
        return float(_log_cdf(m)[s // 2])
    return min(0.0, max(_ln_upper_t(m, s), _ln_upper_pearson2(m, s + 2)))


def exact(m: int) -> bool:
    """Whether the p-value for m pairs comes from the exact law."""
    return m <= EXACT_MAX


def sample_counts(m: int, draws: int, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """Monte Carlo check of the law: ``c[k]`` = how many of ``draws`` uniform permutations of
    0..m-1 have S = 2k (a fixed seed)."""
    rng = np.random.default_rng([m, seed])
    hist = np.zeros(m * (m * m - 1) // 3 + 1, dtype=np.int64)
    i = np.arange(m)
    for a in range(0, draws, chunk):
        perm = np.argsort(rng.random((min(chunk, draws - a), m)), axis=1)
        hist += np.bincount(((perm - i) ** 2).sum(axis=1), minlength=hist.size)
    return hist[::2]


def build(m_max: int = EXACT_MAX, path: Path = TABLE) -> None:
    """Write the counts of m = 3..m_max to ``path``."""
    lines = [f'"{m}": {json.dumps(count_permutations(m), separators=(",", ":"))}' for m in range(3, m_max + 1)]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":  # pragma: no cover
    build()
