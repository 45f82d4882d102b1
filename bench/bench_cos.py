"""`cos` (φ_U) on synthetic Llama-2-7B-shaped checkpoints: streaming vs naive loading vs the floor.

Driver (default): writes three bf16 checkpoints (base, fine-tune-like, independent; one shard per
block), then runs every variant × pair in its own process and prints a markdown table.

    python -m bench.bench_cos                      # 32 blocks; naive only on the first 8 blocks
    python -m bench.bench_cos --blocks 4 --naive-blocks 4 --pairs ft

Variants (one process each):
  streaming  tracing.compare(base, other, stat="cos"): per-tensor reads, bounded-parallel matching
  naive      AutoModelForCausalLM.from_pretrained of both models (bf16), then the same per-block
             matching (tracing.align.match_layers) on the loaded up_proj weights
  floor      nothing but the unavoidable work, serially: per block read the two up_proj tensors,
             their float32 cosine matrix, the assignment (row argmax when it is a permutation,
             else scipy on the negated float64 matrix)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import common  # noqa: E402
from bench.common import GB, Timer, emit  # noqa: E402

SHAPE_7B = dict(d=4096, h=11008, V=32000, heads=32)


# ------------------------------------------------------------------------------------------
# variants (child processes)
# ------------------------------------------------------------------------------------------
def _pvalue(perms: dict) -> tuple[float, list[float]]:
    from tracing import pvalues
    per = [pvalues.spearman(perms[i])[1] for i in sorted(perms)]
    return pvalues.fisher(per)[1], per


def variant_streaming(base: Path, other: Path) -> dict:
    import tracing
    import tracing.api  # noqa: F401  (imports outside the timed region, as for the other variants)
    from tracing.stats import known_names
    known_names()
    with Timer() as t:
        rec = tracing.compare(str(base), str(other), stat="cos", progress=False)
    return {**t.fields(), "log10_pvalue": rec["log10_pvalue"], "timings": rec["timings"],
            "stat_s": rec["timings"]["statistic"]}


def variant_naive(base: Path, other: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from tracing.align import match_layers
    with Timer() as t:
        t0 = time.perf_counter()
        m1 = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        m2 = AutoModelForCausalLM.from_pretrained(other, dtype=torch.bfloat16)
        load_s = time.perf_counter() - t0
        L = m1.config.num_hidden_layers

        def load(i):
            return m1.model.layers[i].mlp.up_proj.weight.detach(), m2.model.layers[i].mlp.up_proj.weight.detach()

        t1 = time.perf_counter()
        perms = match_layers(range(L), load)
        stat_s = time.perf_counter() - t1
        lp, _ = _pvalue(perms)
    return {**t.fields(), "log10_pvalue": lp, "load_s": load_s, "stat_s": stat_s}


def variant_floor(base: Path, other: Path) -> dict:
    import numpy as np
    import torch
    from safetensors import safe_open
    from scipy.optimize import linear_sum_assignment

    def index(p):
        return json.loads((p / "model.safetensors.index.json").read_text())["weight_map"]

    i1, i2 = index(base), index(other)
    L = json.loads((base / "config.json").read_text())["num_hidden_layers"]
    perms, parts = {}, {"read": 0.0, "cosine": 0.0, "assign": 0.0}
    shortcut = 0
    with Timer() as t:
        for i in range(L):
            name = f"model.layers.{i}.mlp.up_proj.weight"
            t0 = time.perf_counter()
            with safe_open(base / i1[name], framework="pt") as f:
                A = f.get_tensor(name).float()
            with safe_open(other / i2[name], framework="pt") as f:
                B = f.get_tensor(name).float()
            t1 = time.perf_counter()
            A = A / A.norm(dim=1, keepdim=True)
            B = B / B.norm(dim=1, keepdim=True)
            C = A @ B.T
            del A, B
            t2 = time.perf_counter()
            am = C.argmax(dim=1)
            if torch.unique(am).numel() == am.numel():
                perms[i] = am.numpy()
                shortcut += 1
            else:
                cost = C.numpy().astype(np.float64)
                del C
                np.negative(cost, out=cost)
                perms[i] = linear_sum_assignment(cost)[1]
                del cost
            C = None
            t3 = time.perf_counter()
            parts["read"] += t1 - t0
            parts["cosine"] += t2 - t1
            parts["assign"] += t3 - t2
        lp, _ = _pvalue(perms)
    return {**t.fields(), "log10_pvalue": lp, "stat_s": t.wall, "parts": parts, "shortcut_blocks": shortcut}


VARIANTS = {"streaming": variant_streaming, "naive": variant_naive, "floor": variant_floor}


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=32, help="blocks in the synthetic checkpoints (default 32)")
    ap.add_argument("--naive-blocks", type=int, default=8,
                    help="block count of the naive comparison (two full bf16 7B models need ≈ 27 GB; default 8)")
    ap.add_argument("--pairs", default="ft,indep", help="ft (θ₂ = θ₁ + noise), indep (independent), or both")
    ap.add_argument("--variants", default="floor,streaming,naive")
    ap.add_argument("--noise", type=float, default=0.1, help="fine-tune noise, relative to the weights' std")
    ap.add_argument("--d", type=int, default=SHAPE_7B["d"], help="residual width (default 4096)")
    ap.add_argument("--h", type=int, default=SHAPE_7B["h"], help="MLP width (default 11008)")
    ap.add_argument("--V", type=int, default=SHAPE_7B["V"], help="vocabulary (default 32000)")
    ap.add_argument("--heads", type=int, default=SHAPE_7B["heads"])
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    ap.add_argument("--out", type=Path, default=common.ROOT / "bench" / "results")
    ap.add_argument("--cleanup", action="store_true", help="delete the synthetic checkpoints at the end")
    # child mode
    ap.add_argument("--variant", choices=sorted(VARIANTS))
    ap.add_argument("--base", type=Path)
    ap.add_argument("--other", type=Path)
    a = ap.parse_args(argv)

    if a.variant:
        emit({"variant": a.variant, **VARIANTS[a.variant](a.base, a.other)})
        return

    root = a.workdir / f"cos-d{a.d}-h{a.h}-V{a.V}-L{a.blocks}"
    cfg = common.llama_config(d=a.d, h=a.h, V=a.V, heads=a.heads, L=a.blocks)
    print(f"writing/reusing synthetic checkpoints under {root} ...", file=sys.stderr, flush=True)
    t0 = time.time()
    paths = common.ensure_family(root, cfg, noise=a.noise)
    print(f"  ready in {time.time() - t0:.0f} s ({common.dir_size(root) / GB:.1f} GB on disk)", file=sys.stderr)

    sizes = sorted({a.blocks, min(a.naive_blocks, a.blocks)}) if "naive" in a.variants else [a.blocks]
    variants = [v for v in a.variants.split(",") if v]
    pairs = [p for p in a.pairs.split(",") if p]
    records = []
    a.out.mkdir(parents=True, exist_ok=True)
    with open(common.log_path(a.workdir, "bench_cos"), "a") as log:
        for L in sizes:
            view = {n: common.prefix_view(p, root / f"view{L}" / n, L) for n, p in paths.items()}
            for pair in pairs:
                for v in variants:
                    if v == "naive" and L > a.naive_blocks:
                        continue
                    rec = common.run_child(__file__, ["--variant", v, "--base", str(view["base"]),
                                                      "--other", str(view[pair])], log=log)
                    rec.update(blocks=L, pair=pair, variant=v)
                    records.append(rec)
                    print(json.dumps(rec), file=sys.stderr, flush=True)

    table = make_table(records)
    header = f"bench_cos — {common.machine_line()}"
    print(f"\n{header}\n\n{table}")
    common.save_results(a.out, "bench_cos", records, f"{header}\n\n{table}")
    if a.cleanup:
        import shutil
        shutil.rmtree(root, ignore_errors=True)


def make_table(records: list[dict]) -> str:
    rows = []
    by = {(r["blocks"], r["pair"], r["variant"]): r for r in records}
    for r in records:
        floor = by.get((r["blocks"], r["pair"], "floor"), {})
        naive = by.get((r["blocks"], r["pair"], "naive"), {})
        if "error" in r:
            rows.append([r["blocks"], r["pair"], r["variant"], "failed: " + r["error"].splitlines()[-1][:80]] + [""] * 9)
            continue
        rows.append([r["blocks"], r["pair"], r["variant"], common.fmt_s(r["wall_s"]), common.fmt_s(r.get("stat_s")),
                     common.fmt_s(r["cpu_s"]), f"{r['load_start']:.1f}/{r['load_end']:.1f}",
                     common.fmt_gb(r["peak_rss"]),
                     common.fmt_ratio(r["wall_s"], floor.get("wall_s")),
                     common.fmt_ratio(r.get("stat_s"), floor.get("stat_s")),
                     common.fmt_ratio(r["wall_s"], naive.get("wall_s")) + " / " +
                     common.fmt_ratio(r["peak_rss"], naive.get("peak_rss")),
                     f"{r['log10_pvalue']:.4g}"])
    return common.markdown_table(
        ["blocks", "pair", "variant", "wall s", "statistic s", "CPU s", "load avg start/end", "peak RSS GiB",
         "wall / floor", "statistic / floor", "vs naive: wall / RSS", "log10 p"], rows)


if __name__ == "__main__":
    main()
