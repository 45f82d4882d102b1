"""The block map of ``match`` (every block pair of two models) against the ordinary per-layer ``match``.

    python bench/bench_blockmap.py                       # d=1024, h=2816, 16 blocks, V=32000 (bench_eval's shape)
    python bench/bench_blockmap.py --samples 2 --block-size 512 --blocks 8

Two bf16 checkpoints of the same shape (a base and a fine-tune-like copy) are written once; both
variants read the same ``--samples`` × ``--block-size`` random token ids (default 4 × 512 = 2,048),
each in its own process:

  per-layer   ``match`` as usual: both models in one lockstep pass, one gate and one up matching per block
  localized   ``match --localized``: one pass per model, θ₁'s activations kept, 2·L² matchings
  cos-localized        ``cos --localized``: up_proj rows of every block pair (weights only, L² matchings)
  cos-localized-rows   ``cos --localized --rows 256``: the same 256 rows of every block, 256 × 256 per cell

    python bench/bench_blockmap.py --variants cos-localized,cos-localized-rows
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Timer, emit  # noqa: E402

SHAPE = dict(d=1024, h=2816, V=32000, heads=16)
VARIANTS = ("per-layer", "localized", "cos-localized", "cos-localized-rows")
BASELINE = {"per-layer": "per-layer", "localized": "per-layer", "cos-localized": "cos-localized",
            "cos-localized-rows": "cos-localized"}  # what each variant is compared with
SAMPLED_ROWS = 256


def variant(name: str, paths: list[Path], samples: int, block_size: int, batch: int) -> dict:
    import torch
    import transformers.masking_utils  # noqa: F401  (imports outside the timed region)
    import transformers.models.llama.modeling_llama  # noqa: F401

    from tracing import compare_models
    from tracing.models import Checkpoint
    cfg = json.loads((paths[0] / "config.json").read_text())
    V = cfg["vocab_size"]
    ids = torch.randint(0, V, (samples, block_size), generator=torch.Generator().manual_seed(0))
    if name.startswith("cos"):
        kw = dict(stat="cos", localized=True)
        if name.endswith("rows"):
            kw["rows"] = min(SAMPLED_ROWS, cfg["intermediate_size"])
    else:
        kw = dict(stat="match", tokens=ids, localized=(name == "localized"), batch_size=batch, dtype="float32")
    with Timer() as t:
        res = compare_models(Checkpoint(paths[0]), Checkpoint(paths[1]), **kw)
    out = {**t.fields(), "log10_pvalue": res.log10_pvalue, "tokens": samples * block_size}
    if name != "per-layer":
        out["matched"] = res["matched"]
        out["correspondence"] = [list(c[:2]) for c in res["correspondence"]]
        out["spilled"] = bool(res["extra"].get("activations_spilled"))
    return out


def main(argv=None):
    a = common.eval_shape_parser(__doc__, VARIANTS, samples=4).parse_args(argv)

    if a.variant:
        emit({"variant": a.variant, **variant(a.variant, a.paths, a.samples, a.block_size, a.batch)})
        return

    root, paths = common.ensure_eval_pair(a)
    params = sum(f.stat().st_size for f in paths["base"].glob("*.safetensors")) / 2
    records = common.run_eval_variants(__file__, "bench_blockmap", a, lambda v: [paths["base"], paths["ft"]])

    table = make_table(records, a.blocks)
    header = (f"bench_blockmap — {common.machine_line()}\n\nmodels: d={a.d}, h={a.h}, {a.blocks} blocks, V={a.V}, "
              f"{params / 1e6:.0f}M parameters each (bf16 on disk, float32 compute); match data: "
              f"{a.samples} × {a.block_size} random token ids, batch {a.batch}")
    print(f"\n{header}\n\n{table}")
    common.save_results(a.out, "bench_blockmap", records, f"{header}\n\n{table}")
    if a.cleanup:
        import shutil
        shutil.rmtree(root, ignore_errors=True)


def make_table(records: list[dict], L: int) -> str:
    by = {r["variant"]: r for r in records}
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["variant"], "failed: " + r["error"].splitlines()[-1][:80]] + [""] * 5)
            continue
        ref = by.get(BASELINE[r["variant"]], {})
        cells = L if r["variant"] == "per-layer" else L * L
        found = "—"
        if "correspondence" in r:
            diag = sum(i == j for i, j in r["correspondence"])
            found = f"{r['matched']} matched, {diag}/{L} diagonal"
        rows.append([r["variant"], str(cells), f"{r['log10_pvalue']:.4g}", found, common.fmt_s(r["wall_s"]),
                     common.fmt_gb(r["peak_rss"]),
                     common.fmt_ratio(r["wall_s"], ref.get("wall_s")) + " / " +
                     common.fmt_ratio(r["peak_rss"], ref.get("peak_rss"))])
    return common.markdown_table(["variant", "block pairs", "log10 p", "block map", "wall s", "peak RSS GiB",
                                  "vs baseline: wall / RSS"], rows)


if __name__ == "__main__":
    main()
