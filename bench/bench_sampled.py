"""Sampled `cos` (``--rows K``) against full `cos` on synthetic Llama-2-7B-shaped checkpoints, and
on a Llama-70B-shaped block pair.

Driver (default): writes (or reuses) the bf16 checkpoints of bench_cos.py (base, fine-tune-like,
independent; one shard per block) and of bench_70b_block.py, then runs every variant × pair in its
own process and prints a markdown table.

    python -m bench.bench_sampled                            # K=256, 1024 on 8 and 32 blocks; full on 8 (and 32: ft)
    python -m bench.bench_sampled --full-blocks 8            # the full baseline on 8 blocks only
    python -m bench.bench_sampled --blocks 4 --rows 64,256 --no-70b
    python -m bench.bench_sampled --grid-only                # only the grid runs (store of sampled rows)

Every variant is ``tracing.compare(base, other, stat="cos"[, rows=K])`` in a fresh process. The
weight files' SHA-256 (the records' provenance) are computed once, before the timed runs, into a
hash cache shared by every variant (as on any second run over the same files), so the times are of
the test itself. Before each variant the two models' files are dropped from the page cache, so every
variant starts cold. ``bytes read`` is the process's ``read_bytes`` from ``/proc/self/io`` (storage
reads; pages already in the page cache are not counted); ``bytes needed`` is what the test must
read: K rows (or all h) of each up_proj, both models.

Grid (``--grid-rows``, default 1024, on the --blocks checkpoints): what a launch over a model list
costs with the store of sampled rows (:mod:`tracing.rowstore`). ``store-fill`` reads one model's K
rows of every block cold from its weights into an empty store (once per model in a grid);
``store-pair`` is one pair whose two models are both in the store (every other pair of a grid),
timed as in a launch's long-lived worker (transformers' config classes, imported once per process,
outside the timed region).
The 21-model grid (210 pairs) is extrapolated as 21 × fill + 210 × pair (one pair at a time, both
cores), against 210 × the cold sampled pair without the store.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench import common  # noqa: E402
from bench.common import GB, Timer, emit  # noqa: E402

SHAPE_7B = dict(d=4096, h=11008, V=32000, heads=32)
SHAPE_70B = dict(d=8192, h=28672, V=1024, heads=64, kv_heads=8)


def variant_cos(base: Path, other: Path, rows: int | None) -> dict:
    import tracing
    import tracing.api  # noqa: F401  (imports outside the timed region)
    from tracing.models import Checkpoint
    from tracing.stats import known_names
    known_names()
    arch = Checkpoint(str(base)).arch
    io0 = common.io_read_bytes()
    with Timer() as t:
        rec = tracing.compare(str(base), str(other), stat="cos", progress=False,
                              **({"rows": rows} if rows else {}))
    K = rows or arch.h
    return {**t.fields(), "log10_pvalue": rec["log10_pvalue"], "stat_s": rec["timings"]["statistic"],
            "bytes_read": common.io_read_bytes() - io0, "bytes_needed": 2 * arch.L * K * arch.d * 2,
            "rows": rows, "h": arch.h, "L": arch.L, "median_cos": rec["extra"].get("median_cos")}


def variant_store_fill(model: Path, store: Path, rows: int) -> dict:
    """Read one model's K sampled up_proj rows of every block into an empty store (cold weights)."""
    import tracing.api  # noqa: F401  (imports outside the timed region)
    from tracing.models import Checkpoint
    from tracing.rowstore import with_store
    from tracing.stats.base import sampled_rows
    ck = Checkpoint(str(model))
    S = sampled_rows(ck.arch.h, rows, 0)
    io0 = common.io_read_bytes()
    with Timer() as t:
        src = with_store(ck, store)
        for i in range(ck.arch.L):
            src.get_rows(ck.arch.units(i)[0].up, S)
    return {**t.fields(), "bytes_read": common.io_read_bytes() - io0, "store_counts": src.counts(), "rows": rows,
            "L": ck.arch.L}


def variant_store_pair(base: Path, other: Path, store: Path, rows: int) -> dict:
    """One pair whose two models' sampled rows are already in the store."""
    import tracing.api  # noqa: F401
    from tracing.api import run_pair
    from tracing.options import Options
    from tracing.models import Checkpoint
    from tracing.stats import known_names
    known_names()
    Checkpoint(str(base)).config  # transformers' config classes: imported once per process (a launch's worker)
    io0 = common.io_read_bytes()
    with Timer() as t:
        (rec,) = run_pair(str(base), str(other), Options(stat=["cos"], rows=rows), progress=False, rows_store=store)
    return {**t.fields(), "log10_pvalue": rec["log10_pvalue"], "stat_s": rec["timings"]["statistic"],
            "bytes_read": common.io_read_bytes() - io0, "rows_store": rec.get("rows_store"), "rows": rows}


def _hash_all(paths) -> None:
    from tracing.models import Checkpoint
    for p in paths:
        Checkpoint(str(p)).provenance()


def _runs(a, paths7, paths70):
    """(blocks, pair, rows or None, shape) of every run, sampled before full."""
    rows = [int(k) for k in a.rows.split(",") if k]
    pairs = [p for p in a.pairs.split(",") if p]
    out = []
    for L in sorted({a.blocks, a.full_blocks}):
        for pair in pairs:
            out += [(L, pair, k, "7b") for k in rows]
            if L == a.full_blocks or (L == a.blocks and pair in a.full_pairs.split(",")):
                out.append((L, pair, None, "7b"))
    if paths70 is not None:
        out += [(1, pair, k, "70b") for pair in pairs for k in rows]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=32, help="blocks of the 7B-shaped checkpoints (default 32)")
    ap.add_argument("--full-blocks", type=int, default=8, help="also run sampled and full cos on this prefix")
    ap.add_argument("--full-pairs", default="ft",
                    help="pairs also tested in full at --blocks (default ft: the independent 32-block pair's full "
                         "test takes ~10 min; '' for none)")
    ap.add_argument("--rows", default="256,1024", help="K values (default 256,1024)")
    ap.add_argument("--pairs", default="ft,indep")
    ap.add_argument("--no-70b", dest="b70", action="store_false", help="skip the 70B-shaped block pair")
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--d", type=int, default=SHAPE_7B["d"], help="residual width of the 7B-shaped pair")
    ap.add_argument("--h", type=int, default=SHAPE_7B["h"], help="MLP width of the 7B-shaped pair")
    ap.add_argument("--V", type=int, default=SHAPE_7B["V"])
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    ap.add_argument("--out", type=Path, default=common.ROOT / "bench" / "results")
    ap.add_argument("--grid-rows", type=int, default=1024, help="K of the grid runs (0: no grid runs)")
    ap.add_argument("--grid-only", action="store_true", help="only the grid runs")
    ap.add_argument("--variant", choices=["cos", "store-fill", "store-pair"])
    ap.add_argument("--base", type=Path)
    ap.add_argument("--other", type=Path)
    ap.add_argument("--store", type=Path)
    ap.add_argument("--k", type=int, default=0)
    a = ap.parse_args(argv)

    if a.variant == "cos":
        emit({"variant": "cos", **variant_cos(a.base, a.other, a.k or None)})
        return
    if a.variant == "store-fill":
        emit({"variant": a.variant, **variant_store_fill(a.base, a.store, a.k)})
        return
    if a.variant == "store-pair":
        emit({"variant": a.variant, **variant_store_pair(a.base, a.other, a.store, a.k)})
        return

    shape7 = dict(SHAPE_7B, d=a.d, h=a.h, V=a.V)
    root7 = a.workdir / f"cos-d{a.d}-h{a.h}-V{a.V}-L{a.blocks}"
    paths7 = common.ensure_family(root7, common.llama_config(L=a.blocks, **shape7), noise=a.noise)
    paths70 = None
    if a.b70:
        root70 = a.workdir / f"block70b-d{SHAPE_70B['d']}-h{SHAPE_70B['h']}-V{SHAPE_70B['V']}-L1"
        paths70 = common.ensure_family(root70, common.llama_config(L=1, **SHAPE_70B), noise=a.noise)
    views = {L: {n: common.prefix_view(p, root7 / f"view{L}" / n, L) for n, p in paths7.items()}
             for L in sorted({a.blocks, a.full_blocks})}
    hash_cache = a.workdir / "hash-cache"
    os.environ["TRACING_CACHE_DIR"] = str(hash_cache)
    t0 = time.time()
    _hash_all([*paths7.values(), *(paths70 or {}).values()])
    print(f"hashed the weight files once in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    records = []
    with open(common.log_path(a.workdir, "bench_sampled"), "a") as log:
        for L, pair, k, shape in ([] if a.grid_only else _runs(a, paths7, paths70)):
            ps = views[L] if shape == "7b" else paths70
            args = ["--variant", "cos", "--base", str(ps["base"]), "--other", str(ps[pair]), "--k", str(k or 0)]
            common.evict([ps["base"], ps[pair]])
            rec = common.run_child(__file__, args, log=log, hash_cache=hash_cache)
            rec.update(blocks=L, pair=pair, shape=shape, rows=k)
            records.append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
        grid = _grid_runs(a, views[a.blocks], hash_cache, log) if a.grid_rows else []
    header = f"bench_sampled — {common.machine_line()}"
    text = make_table(records) if records else ""
    if grid:
        text += (f"\n\nGrid with the store of sampled rows ({a.blocks} blocks, K = {a.grid_rows}):\n\n"
                 + grid_table(grid))
    print(f"\n{header}\n\n{text}")
    common.save_results(a.out, "bench_sampled", records + grid, f"{header}\n\n{text}")


def _grid_runs(a, paths: dict, hash_cache: Path, log) -> list[dict]:
    """Fill an empty store with each model (cold), then each pair from the store, then the same
    pairs cold without the store: the per-model and per-pair times of a grid."""
    import shutil
    store = a.workdir / "grid-store"
    shutil.rmtree(store, ignore_errors=True)
    out = []

    def child(kind, args, **tags):
        common.evict(paths.values())
        args = ["--variant", kind, "--store", str(store), "--k", str(a.grid_rows), *args]
        rec = common.run_child(__file__, args, log=log, hash_cache=hash_cache)
        rec.update(grid=kind, blocks=a.blocks, rows=a.grid_rows, **tags)
        print(json.dumps(rec), file=sys.stderr, flush=True)
        out.append(rec)

    for name, p in paths.items():
        child("store-fill", ["--base", str(p)], model=name)
    for pair in ("ft", "indep"):
        child("store-pair", ["--base", str(paths["base"]), "--other", str(paths[pair])], pair=pair)
    for pair in ("ft", "indep"):
        child("cos", ["--base", str(paths["base"]), "--other", str(paths[pair])], pair=pair)
    shutil.rmtree(store, ignore_errors=True)
    return out


def grid_table(recs: list[dict], n_models: int = 21) -> str:
    """Measured per-model and per-pair times, and the grid of ``n_models`` extrapolated from them."""
    ok = [r for r in recs if "error" not in r]
    fills = [r["wall_s"] for r in ok if r["grid"] == "store-fill"]
    stored = [r["wall_s"] for r in ok if r["grid"] == "store-pair"]
    cold = [r["wall_s"] for r in ok if r["grid"] == "cos"]
    rows = []
    for r in recs:
        what = {"store-fill": f"read one model into the store ({r.get('model')})",
                "store-pair": f"one pair from the store ({r.get('pair')})",
                "cos": f"one pair without the store, cold ({r.get('pair')})"}[r["grid"]]
        if "error" in r:
            rows.append([what, "failed: " + r["error"].splitlines()[-1][:80], "", "", ""])
            continue
        rows.append([what, common.fmt_s(r["wall_s"]), common.fmt_s(r["cpu_s"]), f"{r['bytes_read'] / GB:.2f}",
                     f"{r['log10_pvalue']:.4g}" if "log10_pvalue" in r else "—"])
    table = common.markdown_table(["run", "wall s", "CPU s", "GiB read", "log10 p"], rows)
    if not (fills and stored and cold):
        return table
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    n_pairs = n_models * (n_models - 1) // 2
    with_store = n_models * mean(fills) + n_pairs * mean(stored)
    without = n_pairs * mean(cold)
    return (f"{table}\n\n{n_models}-model grid ({n_pairs} pairs, one pair at a time), extrapolated: "
            f"with the store {n_models} × {mean(fills):.1f} s + {n_pairs} × {mean(stored):.1f} s = "
            f"{with_store / 60:.1f} min; without it {n_pairs} × {mean(cold):.1f} s = {without / 60:.1f} min.")


def make_table(records: list[dict]) -> str:
    full = {(r["shape"], r["blocks"], r["pair"]): r for r in records if r.get("rows") is None and "error" not in r}
    rows = []
    for r in records:
        what = "full" if r.get("rows") is None else f"K={r['rows']}"
        shape = "7B" if r["shape"] == "7b" else "70B block"
        if "error" in r:
            rows.append([shape, r["blocks"], r["pair"], what, "failed: " + r["error"].splitlines()[-1][:80]]
                        + [""] * 8)
            continue
        f = full.get((r["shape"], r["blocks"], r["pair"]))
        speed = "—" if f is None or r.get("rows") is None else f"{f['wall_s'] / r['wall_s']:.1f}×"
        rows.append([shape, r["blocks"], r["pair"], what, common.fmt_s(r["wall_s"]), common.fmt_s(r["stat_s"]),
                     common.fmt_s(r["cpu_s"]),
                     f"{r['load_start']:.1f}/{r['load_end']:.1f}", common.fmt_gb(r["peak_rss"]),
                     f"{r['bytes_read'] / GB:.2f}", f"{r['bytes_needed'] / GB:.3f}", speed,
                     f"{r['log10_pvalue']:.4g}"])
    return common.markdown_table(["shape", "blocks", "pair", "test", "wall s", "statistic s", "CPU s",
                                  "load avg start/end", "peak RSS GiB", "GiB read", "GiB needed", "faster than full", "log10 p"], rows)


def retable(jsonl: Path) -> str:
    """The table of the last run recorded in a results file (the records of one driver run)."""
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    return make_table(records)


if __name__ == "__main__":
    main()
