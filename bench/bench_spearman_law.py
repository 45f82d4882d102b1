"""Size of the per-layer Spearman test: P(p ≤ α) / α under H₀ (a uniformly random permutation), for
the toolkit's p-value and for the plain Student-t tail it replaced.

m ≤ 18 is computed exactly from the shipped counts; larger m by Monte Carlo (``--draws`` uniform
permutations per m), with the exact 95% interval of the ratio.  A ratio above 1 is anti-conservative.

    python -m bench.bench_spearman_law                       # ≈ 5 min on one core
    python -m bench.bench_spearman_law --m 24,64 --draws 1e6

End to end, ``--blockmap N``: the sampled block map (``cos --rows 16``) of N independent pairs of
24- and 32-block random models (d = 16, h = 32), overall Bonferroni p ≤ 0.05, with the exact 95%
interval of the rejection rate; ``--law t`` runs the same with the plain t tail (≈ 1.4 s a pair):

    python -m bench.bench_spearman_law --blockmap 300
    python -m bench.bench_spearman_law --blockmap 300 --law t
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parent.parent

from bench.common import machine_line, markdown_table, save_results  # noqa: E402
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
    return np.cumsum(law.sample_counts(m, draws, seed, chunk=200_000)) / draws, draws, f"MC {draws:.0e}"


def ratio(cdf, n: int, k: int, alpha: float) -> str:
    size = float(cdf[k]) if k >= 0 else 0.0
    if n == 0:
        return f"{size / alpha:.2f}"
    ci = binomtest(int(round(size * n)), n).proportion_ci(0.95, method="exact")
    return f"{size / alpha:.2f} [{ci.low / alpha:.2f}, {ci.high / alpha:.2f}]"


def random_source(L: int, seed: int, d: int = 16, h: int = 32, V: int = 32):
    """A random Llama-shaped model held in memory (only its tensors matter to cos)."""
    import torch
    from transformers import LlamaConfig

    from tracing.models import DictSource
    cfg = LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=h, num_hidden_layers=L,
                      num_attention_heads=2, num_key_value_heads=2)
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(V, d, generator=g), "model.norm.weight": torch.ones(d),
          "lm_head.weight": torch.randn(V, d, generator=g)}
    for i in range(L):
        pre = f"model.layers.{i}."
        for name, shape in (("mlp.gate_proj", (h, d)), ("mlp.up_proj", (h, d)), ("mlp.down_proj", (d, h)),
                            ("self_attn.q_proj", (d, d)), ("self_attn.k_proj", (d, d)),
                            ("self_attn.v_proj", (d, d)), ("self_attn.o_proj", (d, d))):
            sd[pre + name + ".weight"] = torch.randn(shape, generator=g)
        sd[pre + "input_layernorm.weight"] = torch.ones(d)
        sd[pre + "post_attention_layernorm.weight"] = torch.ones(d)
    return DictSource(sd, cfg, f"random{seed}")


def blockmap(n: int, which: str, save: bool) -> None:
    import torch

    from tracing import compare_models
    torch.set_num_threads(1)
    if which == "t":
        law.ln_lower_tail = ln_p_t
    t0 = time.time()
    pvals = []
    for k in range(n):
        pvals.append(compare_models(random_source(24, 2 * k), random_source(32, 2 * k + 1), stat="cos",
                                    rows=16).pvalue)
        if (k + 1) % 25 == 0:
            print(f"{k + 1} pairs, {sum(p <= 0.05 for p in pvals)} with p ≤ 0.05", flush=True)
    k = sum(p <= 0.05 for p in pvals)
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    row = ["24 × 32, --rows 16", which, n, f"{k}/{n} = {k / n:.3f} [{ci.low:.3f}, {ci.high:.3f}]",
           f"{(time.time() - t0) / n:.2f}"]
    table = (f"Block map of independent pairs, overall p ≤ 0.05 ({machine_line()})\n\n"
             + markdown_table(["grid", "per-cell law", "pairs", "rejected (95% CI)", "s / pair"], [row]))
    print(table)
    if save:
        save_results(ROOT / "bench" / "results", "bench_spearman_law", [{"blockmap": row}], table)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", default="8,9,12,16,18,19,20,24,32,48,64,128")
    ap.add_argument("--draws", type=float, default=1e7)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--blockmap", type=int, default=0, help="independent block-map pairs instead")
    ap.add_argument("--law", choices=("toolkit", "t"), default="toolkit")
    args = ap.parse_args(argv)
    if args.blockmap:
        return blockmap(args.blockmap, args.law, not args.no_save)
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
