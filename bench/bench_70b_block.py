"""Llama-70B-shaped blocks (d=8192, h=28672, 64 heads, 8 KV heads): peak memory of `cos` and of a
streamed forward pass, on checkpoints holding only ``--blocks`` blocks and a small vocabulary.

    python -m bench.bench_70b_block                      # 2 blocks, V=1024
    python -m bench.bench_70b_block --blocks 1 --variants cos-streaming --pairs indep

Variants (one process each):
  cos-streaming   tracing.compare(base, other, stat="cos")  (pairs: ft = θ₁ + noise, indep)
  cos-floor       the floor of bench_cos.py: per block read both up_proj, float32 cosine matrix,
                  assignment (row argmax when it is a permutation, else scipy on the negated
                  float64 matrix) — serial, nothing else
  forward         tracing.engine.Engine: one lane, ``--tokens`` token ids through every block
  forward-pair    two lanes (base and fine-tune-like) in lockstep, as csh / match / --eval run

The target for `cos` is a peak RSS under 16 GB per block: a 28672² float64 cost matrix alone is
6.6 GB and its float32 cosine matrix 3.3 GB.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import common  # noqa: E402
from bench.common import GB, Timer, emit  # noqa: E402

SHAPE_70B = dict(d=8192, h=28672, heads=64, kv_heads=8)


def variant(name: str, paths: list[Path], tokens: int, sample: bool) -> dict:
    import torch
    sampler = common.RssSampler(0.5) if sample else None
    if sampler:
        sampler.__enter__()
    try:
        if name == "cos-streaming":
            from bench import bench_cos
            out = bench_cos.variant_streaming(paths[0], paths[1])
        elif name == "cos-floor":
            from bench import bench_cos
            out = bench_cos.variant_floor(paths[0], paths[1])
        else:
            import transformers.masking_utils  # noqa: F401
            import transformers.models.llama.modeling_llama  # noqa: F401
            from tracing.engine import Engine
            from tracing.evaluate import lm_losses
            from tracing.models import Checkpoint
            lanes = [Checkpoint(p) for p in paths]
            for lane in lanes:
                lane.config  # noqa: B018  (config parsed outside the timed region)
            V = lanes[0].arch.V
            ids = torch.randint(0, V, (1, tokens), generator=torch.Generator().manual_seed(0))
            with Timer() as t:
                losses = lm_losses(Engine(dtype=torch.float32, batch_size=1, progress=False), lanes, ids)
            out = {**t.fields(), "losses": losses}
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
    if sampler:
        out["rss_samples"] = [(round(t, 1), round(r / GB, 2)) for t, r in sampler.samples[::4]]
    return out


VARIANTS = ("cos-floor", "cos-streaming", "forward", "forward-pair")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--V", type=int, default=1024, help="vocabulary (small, to save disk; default 1024)")
    ap.add_argument("--d", type=int, default=SHAPE_70B["d"])
    ap.add_argument("--h", type=int, default=SHAPE_70B["h"])
    ap.add_argument("--heads", type=int, default=SHAPE_70B["heads"])
    ap.add_argument("--kv-heads", type=int, default=SHAPE_70B["kv_heads"])
    ap.add_argument("--tokens", type=int, default=32, help="token ids for the forward variants")
    ap.add_argument("--pairs", default="ft,indep")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--sample-rss", action="store_true", help="also record RSS over time (every 2 s)")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    ap.add_argument("--out", type=Path, default=common.ROOT / "bench" / "results")
    ap.add_argument("--cleanup", action="store_true")
    ap.add_argument("--variant", choices=VARIANTS)
    ap.add_argument("--paths", type=Path, nargs="+")
    a = ap.parse_args(argv)

    if a.variant:
        emit({"variant": a.variant, **variant(a.variant, a.paths, a.tokens, a.sample_rss)})
        return

    root = a.workdir / f"block70b-d{a.d}-h{a.h}-V{a.V}-L{a.blocks}"
    cfg = common.llama_config(d=a.d, h=a.h, V=a.V, heads=a.heads, kv_heads=a.kv_heads, L=a.blocks)
    print(f"writing/reusing synthetic checkpoints under {root} ...", file=sys.stderr, flush=True)
    paths = common.ensure_family(root, cfg)
    records = []
    a.out.mkdir(parents=True, exist_ok=True)
    extra = ["--tokens", str(a.tokens)] + (["--sample-rss"] if a.sample_rss else [])
    with open(common.log_path(a.workdir, "bench_70b_block"), "a") as log:
        for v in [v for v in a.variants.split(",") if v]:
            if v.startswith("cos"):
                runs = [(pair, [paths["base"], paths[pair]]) for pair in a.pairs.split(",") if pair]
            elif v == "forward":
                runs = [("base", [paths["base"]])]
            else:
                runs = [("base+ft", [paths["base"], paths["ft"]])]
            for pair, ps in runs:
                rec = common.run_child(__file__, ["--variant", v, "--paths", *map(str, ps), *extra], log=log)
                rec.update(variant=v, pair=pair, blocks=a.blocks)
                records.append(rec)
                print(json.dumps(rec), file=sys.stderr, flush=True)

    table = make_table(records)
    header = (f"bench_70b_block — {common.machine_line()}\n\nblocks: d={a.d}, h={a.h}, {a.heads} heads, "
              f"{a.kv_heads} KV heads, {a.blocks} block(s), V={a.V}")
    print(f"\n{header}\n\n{table}")
    common.save_results(a.out, "bench_70b_block", records, f"{header}\n\n{table}")
    if a.cleanup:
        import shutil
        shutil.rmtree(root, ignore_errors=True)


def make_table(records: list[dict]) -> str:
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["variant"], r["pair"], "failed: " + r["error"].splitlines()[-1][:80], "", "", "", ""])
            continue
        result = (f"log10 p = {r['log10_pvalue']:.4g}" if "log10_pvalue" in r
                  else "loss " + ", ".join(f"{x:.4f}" for x in r.get("losses", [])))
        rows.append([r["variant"], r["pair"], r["blocks"], common.fmt_s(r["wall_s"]),
                     f"{r['load_start']:.1f}/{r['load_end']:.1f}", common.fmt_gb(r["peak_rss"]), result])
    return common.markdown_table(["variant", "pair", "blocks", "wall s", "load avg start/end", "peak RSS GiB",
                                  "result"], rows)


if __name__ == "__main__":
    main()
