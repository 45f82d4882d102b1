"""MATCH of one block with and without the bf16 screen (:func:`tracing.cosine.screened_argmax`), on
bf16 rows held in memory: the sampled rows of a 7B up-projection (K = 1024 × 4096), a whole one
(11008 × 4096), and the sampled rows of a DeepSeek-V3 expert (K = 256 × 7168); for a fine-tune-like
pair (θ₂ = θ₁ + 10% noise, rows permuted) and an independent one.

    python -m bench.bench_screen                      # every shape, both pairs
    python -m bench.bench_screen --shapes 1024x4096 --reps 9   # ≈ 5 min for all shapes

Variants (one process each, alternating; medians of ``--reps`` matchings after one warm-up):
  float32   the screen off (the float32 cosine matrix, then the argmax shortcut or the solver)
  screen    the screen as shipped (on this CPU when it multiplies bf16 natively)
The matchings of the two variants are compared in the driver (equal, or the run fails).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

from bench import common  # noqa: E402

SHAPES = {"1024x4096": (1024, 4096), "11008x4096": (11008, 4096), "256x7168": (256, 7168)}
VARIANTS = ("float32", "screen")


def _pair(n: int, d: int, kind: str):
    import torch
    g = torch.Generator().manual_seed(n + d)
    W1 = 0.02 * torch.randn(n, d, generator=g)
    if kind == "ft":
        W2 = (W1 + 0.1 * 0.02 * torch.randn(n, d, generator=g))[torch.randperm(n, generator=g)]
    else:
        W2 = 0.02 * torch.randn(n, d, generator=g)
    return W1.to(torch.bfloat16), W2.to(torch.bfloat16)


def child(variant: str, shape: str, kind: str, reps: int) -> dict:
    import numpy as np
    import torch
    from tracing import align, cosine
    if variant == "float32":
        cosine.SCREEN_MIN_WORK = float("inf")
    W1, W2 = _pair(*SHAPES[shape], kind)
    settled = []
    real = align.screened_argmax
    align.screened_argmax = lambda *a, **k: (lambda r: (settled.append(r is not None), r)[1])(real(*a, **k))
    times = []
    for rep in range(reps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        res = align.match_pairs(W1, W2)
        if rep:
            times.append(time.perf_counter() - t0)
    digest = hashlib.sha256(np.ascontiguousarray(res.cols).tobytes()).hexdigest()[:16]
    return {"variant": variant, "shape": shape, "kind": kind, "median_s": statistics.median(times),
            "min_s": min(times), "settled": bool(settled and settled[-1]), "matching": digest,
            "native_bf16": cosine.native_bf16(), "threads": torch.get_num_threads()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--kinds", default="ft,indep")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=common.ROOT / "bench" / "results")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    ap.add_argument("--cleanup", action="store_true", help="accepted as by the other benchmarks (no files are written)")
    ap.add_argument("--variant", choices=VARIANTS)
    ap.add_argument("--shape", choices=sorted(SHAPES))
    ap.add_argument("--kind", choices=("ft", "indep"))
    a = ap.parse_args(argv)
    if a.variant:
        common.emit(child(a.variant, a.shape, a.kind, a.reps))
        return
    a.workdir.mkdir(parents=True, exist_ok=True)
    records = []
    with open(common.log_path(a.workdir, "bench_screen"), "w") as log:
        for shape in a.shapes.split(","):
            for kind in a.kinds.split(","):
                for variant in VARIANTS:
                    args = ["--variant", variant, "--shape", shape, "--kind", kind, "--reps", str(a.reps)]
                    rec = common.run_child(__file__, args, log=log)
                    if "error" in rec:
                        raise SystemExit(f"bench_screen {' '.join(args)} failed: {rec['error']}")
                    records.append(rec)
                    print(json.dumps(rec), flush=True)
    by = {(r["shape"], r["kind"], r["variant"]): r for r in records}
    rows = []
    for shape in a.shapes.split(","):
        for kind in a.kinds.split(","):
            f, s = by[(shape, kind, "float32")], by[(shape, kind, "screen")]
            if f["matching"] != s["matching"]:
                raise SystemExit(f"{shape} {kind}: the screen changed the matching")
            rows.append([shape, kind, f"{f['median_s'] * 1e3:.1f}", f"{s['median_s'] * 1e3:.1f}",
                         f"{s['median_s'] / f['median_s']:.2f}", "settled" if s["settled"] else "left to float32",
                         "equal"])
    table = (common.machine_line() + f"\n\nMATCH of one block, bf16 rows, medians of {a.reps} (native bf16: "
             f"{records[0]['native_bf16']}, {records[0]['threads']} threads):\n\n"
             + common.markdown_table(["rows × d", "pair", "float32 ms", "screen ms", "× float32", "screen",
                                      "matching"], rows))
    print("\n" + table)
    common.save_results(a.out, "bench_screen", records, table)


if __name__ == "__main__":
    main()
