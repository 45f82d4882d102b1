"""The block map of ``match`` (every block pair of two models) against the ordinary per-layer ``match``.

    python -m bench.bench_blockmap                       # d=1024, h=2816, 16 blocks, V=32000 (bench_eval's shape)
    python -m bench.bench_blockmap --samples 2 --block-size 512 --blocks 8

Two bf16 checkpoints of the same shape (a base and a fine-tune-like copy) are written once; both
variants read the same ``--samples`` × ``--block-size`` random token ids (default 4 × 512 = 2,048),
each in its own process:

  per-layer   ``match`` as usual: both models in one lockstep pass, one gate and one up matching per block
  localized   ``match --localized``: one pass per model, θ₁'s activations kept, 2·L² matchings
  cos-localized        ``cos --localized``: up_proj rows of every block pair (weights only, L² matchings)
  cos-localized-rows   ``cos --localized --rows 256``: the same 256 rows of every block, 256 × 256 per cell
  localized-rows       ``match --localized --rows 256``: θ₁'s 256 sampled units (the same in every block)
                       against every unit of θ₂, only the cells passing the argmax screen matched
  smol-pruned-rows     ``match --rows 256`` on a SmolLM2-135M shape (d=576, h=1536, 30 blocks, 9 heads,
                       3 kv heads, V=49152; untied head) against its noisy copy with 10 blocks removed:
                       a 30 × 20 block map (chosen automatically for the different depths)
  smol-pruned          the same pair, full ``match`` block map (every unit, every cell)

    python -m bench.bench_blockmap --variants cos-localized,cos-localized-rows
    python -m bench.bench_blockmap --variants localized-rows,smol-pruned-rows
"""
from __future__ import annotations

import json
from pathlib import Path

from bench import common  # noqa: E402
from bench.common import Timer, emit  # noqa: E402

SHAPE = dict(d=1024, h=2816, V=32000, heads=16)
SMOL = dict(d=576, h=1536, V=49152, heads=9, kv_heads=3, L=30)
SMOL_REMOVED = (2, 5, 8, 11, 14, 17, 20, 23, 26, 29)  # θ₂ keeps the other 20 blocks, in order
VARIANTS = ("per-layer", "localized", "cos-localized", "cos-localized-rows", "localized-rows", "smol-pruned-rows",
            "smol-pruned")
BASELINE = {"per-layer": "per-layer", "localized": "per-layer", "cos-localized": "cos-localized",
            "cos-localized-rows": "cos-localized", "localized-rows": "per-layer",
            "smol-pruned-rows": "smol-pruned", "smol-pruned": "smol-pruned"}  # what each variant is compared with
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
    else:
        kw = dict(stat="match", tokens=ids, localized=(name != "per-layer"), batch_size=batch, dtype="float32")
    if name.endswith("rows"):
        kw["rows"] = min(SAMPLED_ROWS, cfg["intermediate_size"])
    with Timer() as t:
        res = compare_models(Checkpoint(paths[0]), Checkpoint(paths[1]), **kw)
    out = {**t.fields(), "log10_pvalue": res.log10_pvalue, "tokens": samples * block_size}
    if name != "per-layer":
        out["matched"] = res["matched"]
        out["correspondence"] = [list(c[:2]) for c in res["correspondence"]]
        out["spilled"] = bool(res["extra"].get("activations_spilled"))
        out["shape"] = res["extra"]["shape"]
        out["screen"] = {k: v for k, v in (res["extra"].get("screen") or {}).items() if k != "agreements"}
    return out


def smol_pair(a) -> list[Path]:
    """The SmolLM2-135M-shaped base and its noisy copy with :data:`SMOL_REMOVED` blocks removed."""
    root = a.workdir / "smol-135m"
    cfg = common.llama_config(d=SMOL["d"], h=SMOL["h"], V=SMOL["V"], heads=SMOL["heads"], kv_heads=SMOL["kv_heads"],
                              L=SMOL["L"])
    paths = common.ensure_family(root, cfg, names=("base", "ft"))
    kept = [i for i in range(SMOL["L"]) if i not in SMOL_REMOVED]
    pruned = root / "ft-pruned"
    if not (pruned / "config.json").is_file():
        common.blocks_view(paths["ft"], pruned, kept)
    return [paths["base"], pruned]


def expected_sources(variant: str, L: int) -> list[int]:
    """θ₁'s source block of each block of θ₂ in a variant's pair."""
    if variant.startswith("smol"):
        return [i for i in range(SMOL["L"]) if i not in SMOL_REMOVED]
    return list(range(L))


def main(argv=None):
    a = common.eval_shape_parser(__doc__, VARIANTS, samples=4).parse_args(argv)

    if a.variant:
        emit({"variant": a.variant, **variant(a.variant, a.paths, a.samples, a.block_size, a.batch)})
        return

    root, paths = common.ensure_eval_pair(a)
    params = sum(f.stat().st_size for f in paths["base"].glob("*.safetensors")) / 2
    smol = smol_pair(a) if any(v.startswith("smol") for v in a.variants.split(",")) else None
    records = common.run_eval_variants(__file__, "bench_blockmap", a,
                                       lambda v: smol if v.startswith("smol") else [paths["base"], paths["ft"]])

    table = make_table(records, a.blocks)
    header = (f"bench_blockmap — {common.machine_line()}\n\nmodels: d={a.d}, h={a.h}, {a.blocks} blocks, V={a.V}, "
              f"{params / 1e6:.0f}M parameters each (bf16 on disk, float32 compute); smol-*: d={SMOL['d']}, "
              f"h={SMOL['h']}, {SMOL['L']} blocks against 20 (blocks {', '.join(map(str, SMOL_REMOVED))} removed), "
              f"V={SMOL['V']}; match data: {a.samples} × {a.block_size} random token ids, batch {a.batch}")
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
            rows.append([r["variant"], "failed: " + r["error"].splitlines()[-1][:80]] + [""] * 7)
            continue
        ref = by.get(BASELINE[r["variant"]], {})
        L1, L2 = r.get("shape") or (L, L)
        cells = L if r["variant"] == "per-layer" else L1 * L2
        found = "—"
        if "correspondence" in r:
            want = expected_sources(r["variant"], L2)
            right = sum(want[j] == i for i, j in r["correspondence"])
            found = f"{r['matched']} matched, {right}/{L2} right"
            if r.get("screen"):
                found += f" ({r['screen']['tested']} cells solved)"
        rows.append([r["variant"], str(cells), f"{r['log10_pvalue']:.4g}", found, common.fmt_s(r["wall_s"]),
                     common.fmt_s(r.get("cpu_s")), f"{r.get('load_start', 0):.1f}", common.fmt_gb(r["peak_rss"]),
                     common.fmt_ratio(r["wall_s"], ref.get("wall_s")) + " / " +
                     common.fmt_ratio(r.get("cpu_s"), ref.get("cpu_s")) + " / " +
                     common.fmt_ratio(r["peak_rss"], ref.get("peak_rss"))])
    return common.markdown_table(["variant", "block pairs", "log10 p", "block map", "wall s", "CPU s", "load",
                                  "peak RSS GiB", "vs baseline: wall / CPU / RSS"], rows)


if __name__ == "__main__":
    main()
