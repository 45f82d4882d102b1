"""`cos` on one mixture-of-experts block pair of frontier shape, full and sampled (``--rows K``),
extrapolated to the whole models.

Shapes (one MoE block; only the tensors `cos` reads are written: every routed expert's
``up_proj`` and the shared expert's, bf16, in shards of 16 experts):

- ``deepseek``: DeepSeek-V3 / Kimi K2 (d = 7168, 256 routed experts of width 2048, one shared
  expert of width 2048; 61 blocks of which the first 3 are dense with h = 18432; 671B parameters);
- ``qwen``: Qwen3.5-397B-A17B (d = 4096, 512 routed experts of width 1024, a shared expert of
  width 1024; 60 blocks, all MoE; 397B parameters).

    python -m bench.bench_moe_block                              # both shapes: sampled K=256, full on fewer experts
    python -m bench.bench_moe_block --shapes deepseek --rows 256 --full-experts 8,16

Variants, each in its own process (started cold: the weight files are dropped from the page cache
first), on the pair (base, ft = base + noise):

- ``sampled``: ``cos --rows K`` over all the block's experts (K rows of each expert's up_proj and of
  the shared expert's, experts paired on them);
- ``full``: ``cos`` over the first E experts only (``--full-experts``): the full grid pairs experts
  on the best cosine of every pair of their rows, E²·h²·d operations, so at 256 experts one block
  takes hours; it is measured at two expert counts and extrapolated as a·E + b·E² to all experts.

- ``blocks``: ``cos --rows K`` over several DeepSeek-shaped MoE blocks (``--blocks``, default 4; the
  files are sparse: only the K sampled rows of each expert hold data, see :func:`write_sparse_blocks`),
  one block after the other (``--workers 1``, with 1 and with 2 torch threads) and with blocks matched
  at once (``--workers 2``); the per-block numbers and the overall log10 p must be identical.

    python -m bench.bench_moe_block --part blocks                # only the multi-block variant

- ``cells``: the block map of two DeepSeek-shaped models of different depth: θ₁ the ``--blocks`` MoE
  blocks of the multi-block pair's base, θ₂ a noisy copy of its first ``--blocks`` − 1 blocks (the last
  one dropped), every block pair a cell (``--blocks`` × (``--blocks`` − 1) cells of 257 expert pairs).
  One cell after the other (``--workers 1``, with 1 and with 2 torch threads) against rows of cells
  at once (``--workers 2``), θ₂'s blocks read once and kept; and ``--workers 2`` with a memory budget too small to keep them
  (``--cells-budget-gb``), each cell then reading its block of θ₂. Every cell's log10 p, the
  correspondence and the overall log10 p must be identical.

    python -m bench.bench_moe_block --part cells --rows 128      # only the different-depth variant

Each child runs the statistic itself (``tracing.stats`` ``cos`` on two ``Checkpoint`` folders; the
records' provenance hashing is not timed) and reports wall and CPU time, peak RSS (``VmHWM``) and
the bytes it read from storage (``/proc/self/io``). The whole-model figures: the MoE blocks × the
block's time, plus each dense block as a dense sampled test (K rows of 18432, measured separately
by bench_sampled.py at ≈ 1 s per block pair; counted as such), and the fraction of the model's
weights read.
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

SHAPES = {
    "deepseek": dict(model_type="deepseek_v3", d=7168, E=256, w=2048, shared=1, blocks=61, moe_blocks=58,
                     dense_h=18432, params=671e9),
    "qwen": dict(model_type="qwen3_5_moe_text", d=4096, E=512, w=1024, shared=1, blocks=60, moe_blocks=60,
                 dense_h=0, params=397e9),
}
SHARD = 16  # experts per file
DENSE_BLOCK_S = 1.0  # a dense block pair's sampled test (K rows of h = 18432), see bench_sampled.py


def config(shape: dict, E: int) -> dict:
    """A config.json of one MoE block with E routed experts."""
    d, w = shape["d"], shape["w"]
    common_keys = dict(hidden_size=d, num_hidden_layers=1, vocab_size=1024, num_attention_heads=64,
                       num_key_value_heads=8, max_position_embeddings=4096, torch_dtype="bfloat16",
                       tie_word_embeddings=False)
    if shape["model_type"] == "deepseek_v3":
        return dict(common_keys, model_type="deepseek_v3", intermediate_size=shape["dense_h"], n_routed_experts=E,
                    moe_intermediate_size=w, n_shared_experts=shape["shared"], first_k_dense_replace=0,
                    num_experts_per_tok=8, n_group=1, topk_group=1, q_lora_rank=1536, kv_lora_rank=512,
                    qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, num_key_value_heads=64,
                    num_attention_heads=128)
    return dict(common_keys, model_type="qwen3_5_moe_text", intermediate_size=w, num_experts=E,
                moe_intermediate_size=w, shared_expert_intermediate_size=w * shape["shared"], num_experts_per_tok=10,
                head_dim=256, num_attention_heads=32, num_key_value_heads=2, layer_types=["full_attention"],
                linear_conv_kernel_dim=4, linear_key_head_dim=128, linear_value_head_dim=128,
                linear_num_key_heads=16, linear_num_value_heads=64)


def _names(shape: dict, E: int, block: int = 0) -> tuple[list[str], str]:
    p = f"model.layers.{block}.mlp."
    shared = f"{p}shared_experts.up_proj.weight" if shape["model_type"] == "deepseek_v3" else \
        f"{p}shared_expert.up_proj.weight"
    return [f"{p}experts.{e}.up_proj.weight" for e in range(E)], shared


def write_pair(root: Path, name: str, noise: float = 0.1, std: float = 0.02) -> dict[str, Path]:
    """``root/base`` and ``root/ft`` (= base + noise·std·N(0, 1)), reused when already written."""
    import torch
    from safetensors.torch import save_file
    shape = SHAPES[name]
    paths = {n: root / n for n in ("base", "ft")}
    if all((p / "model.safetensors.index.json").is_file() for p in paths.values()):
        return paths
    experts, shared = _names(shape, shape["E"])
    tensors = experts + [shared]
    g, gn = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    maps = {n: {} for n in paths}
    t0 = time.time()
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps(config(shape, shape["E"])))
    shards = [tensors[k:k + SHARD] for k in range(0, len(tensors), SHARD)]
    for k, names in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        base = {t: torch.randn(shape["w"], shape["d"], generator=g).mul_(std) for t in names}
        for n, p in paths.items():
            out = base if n == "base" else {t: v + std * noise * torch.randn(v.shape, generator=gn)
                                            for t, v in base.items()}
            save_file({t: v.to(torch.bfloat16) for t, v in out.items()}, p / fname, metadata={"format": "pt"})
            maps[n].update({t: fname for t in names})
        print(f"  wrote shard {k + 1}/{len(shards)} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    for n, p in paths.items():
        common.write_index(p, maps[n])
    return paths


def write_sparse_blocks(root: Path, name: str, blocks: int, K: int, seed: int = 0, noise: float = 0.1,
                        std: float = 0.02) -> dict[str, Path]:
    """``root/base`` and ``root/ft`` (= base + noise·std·N(0, 1)): ``blocks`` MoE blocks of the shape, one
    file per block holding every routed expert's and the shared expert's ``up_proj`` at full size
    (bf16), with data only in the K rows ``cos --rows K --seed seed`` samples; the rest are holes that
    take no disk and are never read. Reused when already written with the same settings."""
    import numpy as np
    import torch
    from tracing.stats.base import sampled_rows
    shape = SHAPES[name]
    d, w, E = shape["d"], shape["w"], shape["E"]
    paths = {n: root / n for n in ("base", "ft")}
    spec = {"shape": name, "blocks": blocks, "K": K, "seed": seed, "noise": noise, "std": std}
    if (root / "spec.json").is_file() and json.loads((root / "spec.json").read_text()) == spec:
        return paths
    rows = torch.from_numpy(np.asarray(sampled_rows(w, K, seed), dtype=np.int64))
    g = torch.Generator().manual_seed(0)
    maps = {n: {} for n in paths}
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps(dict(config(shape, E), num_hidden_layers=blocks)))
    t0 = time.time()
    for i in range(blocks):
        experts, shared = _names(shape, E, block=i)
        names = experts + [shared]
        fname = f"model-{i + 1:05d}-of-{blocks:05d}.safetensors"
        tensors = {t: ("BF16", [w, d]) for t in names}
        for n, p in paths.items():
            f, offset = common.open_sparse(p / fname, tensors, metadata={"format": "pt"})
            f.close()  # the rows are written through memory maps below
            maps[n].update({t: fname for t in names})
        start = offset[names[0]]  # the tensors lie one after the other from here
        files = {n: np.memmap(p / fname, dtype=np.int16, mode="r+", offset=start, shape=(len(names), w, d))
                 for n, p in paths.items()}
        for k in range(len(names)):
            base = torch.randn(K, d, generator=g).mul_(std)
            for n, mm in files.items():
                v = base if n == "base" else base + std * noise * torch.randn(base.shape, generator=g)
                mm[k][rows.numpy()] = v.to(torch.bfloat16).view(torch.int16).numpy()
        for mm in files.values():
            mm.flush()
        del files
        print(f"  wrote block {i + 1}/{blocks} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    for n, p in paths.items():
        common.write_index(p, maps[n])
    (root / "spec.json").write_text(json.dumps(spec))
    return paths


def view(src: Path, dst: Path, shape: dict, E: int) -> Path:
    """A folder holding the first E experts of ``src`` (links to its shards, a config naming E)."""
    dst.mkdir(parents=True, exist_ok=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    experts, shared = _names(shape, E)
    keep = {t: f for t, f in index["weight_map"].items() if t in set(experts) | {shared}}
    for f in set(keep.values()):
        if not (dst / f).exists():
            os.symlink(src / f, dst / f)
    common.write_index(dst, keep)
    (dst / "config.json").write_text(json.dumps(config(shape, E)))
    return dst


def variant(base: Path, other: Path, rows: int | None) -> dict:
    from tracing.models import Checkpoint
    from tracing.options import Options
    from tracing.stats import get as get_stat
    from tracing.stats.base import Context
    a, b = Checkpoint(base), Checkpoint(other)
    io0 = common.io_read_bytes()
    with Timer() as t:
        res = get_stat("cos").fn(Context(Options(stat=["cos"], rows=rows), progress=False), a, b)
    return {**t.fields(), "bytes_read": common.io_read_bytes() - io0, "log10_pvalue": res.log10_pvalue,
            "pairs": res.extra["num_pairs"], "experts": a.arch.n_experts, "rows": rows,
            "matching_ok": all(p == list(range(a.arch.n_experts)) for p in res.extra["expert_matching"].values())}


def variant_blocks(base: Path, other: Path, rows: int, workers: int, budget_gb: float | None = None) -> dict:
    """``cos --rows K`` over every block of the multi-block pair with ``workers`` blocks at once; of
    models of different depth, every cell of the block map with ``workers`` rows of cells at once
    (``budget_gb``: ``--mem_budget_gb``)."""
    from tracing.models import Checkpoint
    from tracing.options import Options
    from tracing.stats import get as get_stat
    from tracing.stats.base import Context
    a, b = Checkpoint(base), Checkpoint(other)
    io0 = common.io_read_bytes()
    options = Options(stat=["cos"], rows=rows, workers=workers, mem_budget_gb=budget_gb)
    with Timer() as t:
        res = get_stat("cos").fn(Context(options, progress=False), a, b)
    if res.extra.get("localized"):  # the block map: every cell, the correspondence
        found = {"per_pair": [res.extra["per_pair"], res.extra["correspondence"]],
                 "pairs": sum(map(sum, res.extra["per_pair_n"])), "cells": sum(n > 0 for r in res.extra["per_pair_n"]
                                                                              for n in r)}
    else:
        found = {"per_pair": [[r["layer"], r["expert"], r["partner"], r["log10_pvalue"]] for r in res.per_layer],
                 "pairs": res.extra["num_pairs"]}
    return {**t.fields(), "bytes_read": common.io_read_bytes() - io0, "log10_pvalue": res.log10_pvalue,
            "blocks": a.arch.L, "workers": workers, "rows": rows, "budget_gb": budget_gb, **found,
            "matching_ok": all(p == list(range(a.arch.n_experts)) for p in res.extra["expert_matching"].values())}


def extrapolate_blocks(name: str, rec: dict, cores: int) -> dict:
    """Whole model from the multi-block run: its MoE blocks at the measured CPU seconds per block,
    spread over min(workers, cores) cores (the wall time of an otherwise idle machine), and at the
    measured wall seconds per block (at the run's load); dense blocks at :data:`DENSE_BLOCK_S`."""
    s = SHAPES[name]
    dense = (s["blocks"] - s["moe_blocks"]) * DENSE_BLOCK_S
    per_cpu, per_wall = rec["cpu_s"] / rec["blocks"], rec["wall_s"] / rec["blocks"]
    return {"shape": name, "workers": rec["workers"], "threads": rec["threads"],
            "model_cpu_s": s["moe_blocks"] * per_cpu + dense,
            "model_idle_wall_s": s["moe_blocks"] * per_cpu / min(max(rec["workers"], rec["threads"]), cores) + dense,
            "model_wall_at_load_s": s["moe_blocks"] * per_wall + dense,
            "model_gb_read": s["moe_blocks"] * rec["bytes_read"] / rec["blocks"] / GB}


def run_blocks(a, log) -> tuple[list[dict], str]:
    """The multi-block variants (serial with 1 and 2 torch threads, then ``--workers`` at once), each a
    cold process: records and their tables."""
    import os as _os
    name = "deepseek"
    paths = write_sparse_blocks(a.workdir / f"{name}-blocks{a.blocks}-K{a.rows}", name, a.blocks, a.rows)
    runs = [(1, int(t)) for t in a.serial_threads.split(",")] + [(int(w), 2) for w in a.workers.split(",") if int(w) > 1]
    records, rows_out, model_rows = [], [], []
    serial = None
    for workers, threads in runs:
        common.evict(paths.values())
        rec = common.run_child(__file__, ["--variant", "blocks", "--rows", str(a.rows), "--threads", str(threads),
                                          "--workers", str(workers), "--paths", str(paths["base"]), str(paths["ft"])],
                               log=log)
        rec.update(shape=name, kind="blocks", threads=threads)
        records.append(rec)
        if "error" in rec:
            rows_out.append([name, a.blocks, workers, threads] + ["—"] * 6 + [rec["error"][:60]])
            continue
        serial = serial or rec
        same = rec["per_pair"] == serial["per_pair"] and rec["log10_pvalue"] == serial["log10_pvalue"]
        rows_out.append([name, a.blocks, workers, threads, common.fmt_s(rec["wall_s"]), common.fmt_s(rec["cpu_s"]),
                         f"{rec['cpu_s'] / rec['wall_s']:.2f}", f"{rec['load_start']:.0f}–{rec['load_end']:.0f}",
                         common.fmt_gb(rec["peak_rss"]), common.fmt_gb(rec["bytes_read"]),
                         f"{rec['log10_pvalue']:.6g}, {'identical' if same else 'DIFFERENT'}"])
        e = extrapolate_blocks(name, rec, _os.cpu_count() or 1)
        records.append(e)
        model_rows.append([name, workers, threads, common.fmt_s(e["model_cpu_s"]), common.fmt_s(e["model_idle_wall_s"]),
                           common.fmt_s(e["model_wall_at_load_s"]), f"{e['model_gb_read']:.0f}"])
    for r in records:
        r.pop("per_pair", None)
    table = common.markdown_table(["shape", "blocks", "workers", "torch threads", "wall s", "CPU s", "CPU/wall", "load",
                                   "peak RSS GB", "read GB", "log10 p (vs serial, 1 thread)"], rows_out)
    table += "\n\n" + common.markdown_table(
        ["shape", "workers", "torch threads", f"--rows {a.rows}: 58 MoE + 3 dense blocks, CPU s",
         "wall s on idle cores (CPU s / cores used)", "wall s at this load", "GB read"], model_rows)
    return records, table


def run_cells(a, log) -> tuple[list[dict], str]:
    """The different-depth variants (one cell after the other, rows of cells at once with θ₂'s blocks
    kept, and at once with a budget that keeps none), each a cold process: records and their table."""
    name = "deepseek"
    theta1 = write_sparse_blocks(a.workdir / f"{name}-blocks{a.blocks}-K{a.rows}", name, a.blocks, a.rows)["base"]
    theta2 = write_sparse_blocks(a.workdir / f"{name}-blocks{a.blocks - 1}-K{a.rows}", name, a.blocks - 1,
                                 a.rows)["ft"]  # the same draws: θ₁'s first blocks plus noise
    parallel = [int(w) for w in a.workers.split(",") if int(w) > 1]
    runs = [(1, int(t), None) for t in a.serial_threads.split(",")] + [(w, 2, None) for w in parallel] + \
        [(w, 2, a.cells_budget_gb) for w in parallel]
    records, rows_out, serial = [], [], None
    for workers, threads, budget in runs:
        common.evict([theta1, theta2])
        args = ["--variant", "blocks", "--rows", str(a.rows), "--threads", str(threads),
                "--workers", str(workers), "--paths", str(theta1), str(theta2)]
        rec = common.run_child(__file__, args + (["--budget-gb", str(budget)] if budget else []), log=log)
        rec.update(shape=name, kind="cells", threads=threads)
        records.append(rec)
        how = "kept" if budget is None else f"read per cell ({budget} GB budget)"
        if "error" in rec:
            rows_out.append([name, f"{a.blocks} × {a.blocks - 1}", workers, threads, how] + ["—"] * 6
                            + [rec["error"][:60]])
            continue
        serial = serial or rec
        same = rec["per_pair"] == serial["per_pair"] and rec["log10_pvalue"] == serial["log10_pvalue"]
        rows_out.append([name, f"{a.blocks} × {a.blocks - 1}", workers, threads, how, common.fmt_s(rec["wall_s"]),
                         common.fmt_s(rec["cpu_s"]), f"{rec['cpu_s'] / rec['wall_s']:.2f}",
                         f"{rec['load_start']:.1f}–{rec['load_end']:.1f}", common.fmt_gb(rec["peak_rss"]),
                         common.fmt_gb(rec["bytes_read"]),
                         f"{rec['log10_pvalue']:.6g}, {'identical' if same else 'DIFFERENT'}"])
    for r in records:
        r.pop("per_pair", None)
    table = common.markdown_table(["shape", "blocks θ₁ × θ₂", "workers", "torch threads", "θ₂'s blocks", "wall s",
                                   "CPU s", "CPU/wall", "load", "peak RSS GB", "read GB",
                                   "log10 p (vs one cell after the other)"], rows_out)
    return records, f"`cos --rows {a.rows}`, block map of models of different depth\n\n{table}"


def extrapolate(name: str, sampled: dict, full: list[dict], rows: int) -> dict:
    """Whole-model time and bytes read from one block pair's measurements."""
    import numpy as np
    s = SHAPES[name]
    out = {"shape": name, "blocks": s["blocks"], "moe_blocks": s["moe_blocks"]}
    dense = s["blocks"] - s["moe_blocks"]
    out["sampled_model_s"] = s["moe_blocks"] * sampled["wall_s"] + dense * DENSE_BLOCK_S
    out["sampled_model_cpu_s"] = s["moe_blocks"] * sampled["cpu_s"] + dense * DENSE_BLOCK_S
    out["threads"] = sampled.get("threads")
    per_model = s["moe_blocks"] * (s["E"] + s["shared"]) * rows * s["d"] + dense * rows * s["d"]
    out["sampled_fraction_read"] = per_model / s["params"]
    out["sampled_block_gb_read"] = sampled["bytes_read"] / GB
    ok = [r for r in full if "error" not in r]
    if len(ok) >= 2:  # wall = a·E + b·E² through the measured points (least squares)
        E = np.array([r["experts"] for r in ok], dtype=float)
        coef, *_ = np.linalg.lstsq(np.stack([E, E ** 2], 1), np.array([r["wall_s"] for r in ok]), rcond=None)
        out["full_block_s"] = float(coef @ [s["E"], s["E"] ** 2])
        out["full_model_s"] = s["moe_blocks"] * out["full_block_s"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="deepseek,qwen")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--full-experts", default="8,16", help="expert counts the full grid is measured at")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR / "moe_block")
    ap.add_argument("--cleanup", action="store_true", help="delete the synthetic checkpoints at the end")
    ap.add_argument("--threads", default="2",
                    help="torch threads of the sampled variant, comma-separated for several runs (default 2)")
    ap.add_argument("--part", choices=("all", "single", "blocks", "cells"), default="all",
                    help="one block pair of each shape (single), the multi-block variant (blocks), both (all), or "
                         "the block map of models of different depth (cells)")
    ap.add_argument("--blocks", type=int, default=4, help="MoE blocks of the multi-block variant (default 4)")
    ap.add_argument("--workers", default="2", help="blocks at once of the parallel multi-block runs, comma-separated")
    ap.add_argument("--serial-threads", default="1,2",
                    help="torch threads of the multi-block (and cells) runs of one block (cell) after the other, "
                         "comma-separated")
    ap.add_argument("--cells-budget-gb", type=float, default=0.5,
                    help="--mem_budget_gb of the cells run that keeps none of θ₂'s blocks (default 0.5)")
    ap.add_argument("--variant", choices=("sampled", "full", "blocks"), help=argparse.SUPPRESS)
    ap.add_argument("--budget-gb", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--paths", nargs=2, type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.variant:
        import torch
        torch.set_num_threads(int(a.threads))
        if a.variant == "blocks":
            emit({**variant_blocks(*a.paths, a.rows, int(a.workers), a.budget_gb), "threads": int(a.threads)})
            return
        emit({**variant(*a.paths, a.rows if a.variant == "sampled" else None), "threads": int(a.threads)})
        return
    records, rows_out, extra = [], [], []
    log = open(common.log_path(a.workdir, "bench_moe_block"), "a")
    if a.part in ("blocks", "cells"):
        records, table = (run_blocks if a.part == "blocks" else run_cells)(a, log)
        table = f"{common.machine_line()}\n\n{table}"
        print(table)
        common.save_results(common.ROOT / "bench" / "results", "bench_moe_block", records, table)
        return
    for name in a.shapes.split(","):
        s = SHAPES[name]
        paths = write_pair(a.workdir / name, name)
        runs = [("sampled", s["E"], paths, n) for n in a.threads.split(",")]
        for E in filter(None, a.full_experts.split(",")):
            runs.append(("full", int(E), {n: view(p, a.workdir / f"{name}-E{E}" / n, s, int(E))
                                          for n, p in paths.items()}, "2"))
        got = {"full": []}
        for kind, E, ps, threads in runs:
            for p in paths.values():
                common.evict([p])
            rec = common.run_child(__file__, ["--variant", kind, "--rows", str(a.rows), "--threads", threads,
                                              "--paths", str(ps["base"]), str(ps["ft"])], log=log)
            rec.update(shape=name, kind=kind)
            records.append(rec)
            got["full"].append(rec) if kind == "full" else got.setdefault("sampled", rec)
            rows_out.append([name, (kind if kind == "full" else f"--rows {a.rows}") + f", {threads} thr.", E,
                             common.fmt_s(rec.get("wall_s")), common.fmt_s(rec.get("cpu_s")),
                             f"{rec.get('load_start', 0):.0f}–{rec.get('load_end', 0):.0f}",
                             common.fmt_gb(rec.get("peak_rss")), common.fmt_gb(rec.get("bytes_read")),
                             rec.get("matching_ok", rec.get("error", "")[:60])])
        if "error" not in got.get("sampled", {"error": 1}):
            extra.append(extrapolate(name, got["sampled"], got["full"], a.rows))
    table = common.markdown_table(["shape", "variant", "experts", "wall s", "CPU s", "load", "peak RSS GB",
                                   "read GB", "experts paired right"], rows_out)
    model_rows = [[e["shape"], e["blocks"], e["threads"], common.fmt_s(e["sampled_model_s"]),
                   common.fmt_s(e["sampled_model_cpu_s"]),
                   f"{100 * e['sampled_fraction_read']:.1f}%",
                   common.fmt_s(e.get("full_model_s")) if e.get("full_model_s") else "—"] for e in extra]
    table += "\n\n" + common.markdown_table(["shape", "blocks", "threads", f"--rows {a.rows}: whole model, wall s",
                                             "CPU s",
                                             "weights read", "full: whole model, s (extrapolated)"], model_rows)
    if a.part == "all":
        more, blocks_table = run_blocks(a, log)
        records += more
        table += "\n\n" + blocks_table
    table = f"{common.machine_line()}\n\n{table}"
    print(table)
    common.save_results(common.ROOT / "bench" / "results", "bench_moe_block", records + extra, table)
    if a.cleanup:
        import shutil
        shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
