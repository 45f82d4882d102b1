"""Size of the per-layer Spearman test: P(p ≤ α) / α under H₀ (a uniformly random permutation), for
the toolkit's p-value and for the plain Student-t tail it replaced.

m ≤ 18 is computed exactly from the shipped counts; larger m by Monte Carlo (``--draws`` uniform
permutations per m), with the exact 95% interval of the ratio.  A ratio above 1 is anti-conservative.

    python bench/bench_spearman_law.py                       # ≈ 5 min on one core
    python bench/bench_spearman_law.py --m 24,64 --draws 1e6
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_line, markdown_table, save_results  # noqa: E402
from tracing import spearman_law as law  # noqa: E402

ALPHAS = (0.05, 0.01, 1e-3, 1e-4, 1.3e-5, 1e-5, 1e-6)


def ln_p_toolkit(m: int, s: int) -> float:
    """ln p of S = s ("greater"), as :func:`tracing.pvalues.spearman` computes it."""
    return law.ln_lower_tail(m, s) if s else -math.lgamma(m + 1)


def ln_p_t(m: int, s: int) -> float:
    """The plain Student-t tail the toolkit used before (floored at 1/m!)."""
    return max(law._ln_upper_t(m, s), -math.lgamma(m + 1))


def rejecting(m: int, ln_p, alpha: float) -> int:
    """The largest k with p(S = 2k) ≤ α (p increases with S), or -1, by bisection."""
    lo, hi = -1, m * (m * m - 1) // 12
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ln_p(m, 2 * mid) <= math.log(alpha) else (lo, mid)
    return lo


def cdf_of_s(m: int, draws: int, seed: int = 0) -> tuple[np.ndarray, int, str]:
    """P(S ≤ 2k) for every k: exact (m ≤ EXACT_MAX) or counts of ``draws`` uniform permutations."""
    if law.exact(m):
        c = np.array(json.loads(law.TABLE.read_text())[str(m)], dtype=float)
        return np.cumsum(c) / math.factorial(m), 0, "exact"
    rng = np.random.default_rng([m, seed])
    hist = np.zeros(m * (m * m - 1) // 3 + 1, dtype=np.int64)
    i = np.arange(m)
    for a in range(0, draws, 200_000):
        perm = np.argsort(rng.random((min(200_000, draws - a), m)), axis=1)
        hist += np.bincount(((perm - i) ** 2).sum(axis=1), minlength=hist.size)
    return np.cumsum(hist[::2]) / draws, draws, f"MC {draws:.0e}"


def ratio(cdf, n: int, k: int, alpha: float) -> str:
    size = float(cdf[k]) if k >= 0 else 0.0
    if n == 0:
        return f"{size / alpha:.2f}"
    ci = binomtest(int(round(size * n)), n).proportion_ci(0.95, method="exact")
    return f"{size / alpha:.2f} [{ci.low / alpha:.2f}, {ci.high / alpha:.2f}]"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", default="8,9,12,16,18,19,20,24,32,48,64,128")
    ap.add_argument("--draws", type=float, default=1e7)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    rows, records = [], []
    for m in [int(v) for v in args.m.split(",")]:
        t0 = time.time()
        cdf, n, how = cdf_of_s(m, int(args.draws))
        for name, ln_p in (("toolkit", ln_p_toolkit), ("t tail (before)", ln_p_t)):
            cells = [ratio(cdf, n, rejecting(m, ln_p, a), a) for a in ALPHAS]
            rows.append([m, how, name] + cells)
            records.append({"m": m, "law": how, "p": name, "ratios": dict(zip(map(str, ALPHAS), cells)),
                            "seconds": round(time.time() - t0, 1)})
        print(rows[-2], rows[-1], flush=True)
    table = (f"P(p ≤ α) / α under H₀ for the one-sided per-layer Spearman p-value ({machine_line()})\n\n"
             + markdown_table(["m", "law of S", "p-value"] + [f"α = {a:g}" for a in ALPHAS], rows))
    print(table)
    if not args.no_save:
        save_results(ROOT / "bench" / "results", "bench_spearman_law", records, table)


if __name__ == "__main__":
    main()
