"""Language-model loss of a mid-size synthetic Llama: block-streamed engine vs the full model.

    python -m bench.bench_eval                           # d=1024, h=2816, 16 blocks, V=32000
    python -m bench.bench_eval --samples 4 --block-size 256

Two bf16 checkpoints (base and a fine-tune-like copy) are written once; the loss is the mean
next-token cross-entropy on uniform random token ids (``--samples`` × ``--block-size``), computed
in float32, every variant in its own process:

  full         AutoModelForCausalLM.from_pretrained(dtype=float32), ``model(ids, labels=ids).loss``
               batch by batch (what a plain evaluation script does)
  streamed     tracing.evaluate.lm_losses with tracing.engine.Engine over the checkpoint:
               one block's weights in memory at a time
  full-pair    both models loaded, each evaluated (what ``--eval`` needs: base and fine-tuned loss)
  streamed-pair  both models as two lanes of one streamed pass (``--eval``'s path)
"""
from __future__ import annotations

import json
from pathlib import Path

from bench import common  # noqa: E402
from bench.common import Timer, emit  # noqa: E402

SHAPE = dict(d=1024, h=2816, V=32000, heads=16)


def _ids(V: int, n: int, T: int):
    import torch
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(0))


def variant(name: str, paths: list[Path], samples: int, block_size: int, batch: int) -> dict:
    import torch
    import transformers.masking_utils  # noqa: F401  (imports outside the timed region, for every variant)
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoConfig
    AutoConfig.from_pretrained(paths[0])
    V = json.loads((paths[0] / "config.json").read_text())["vocab_size"]
    ids = _ids(V, samples, block_size)
    if name.startswith("full"):
        from transformers import AutoModelForCausalLM
        kept = []  # full-pair keeps every model loaded, as evaluating both side by side does
        with Timer() as t:
            losses = []
            for p in paths:
                model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()
                total, count = 0.0, 0
                with torch.no_grad():
                    for b in range(0, samples, batch):
                        x = ids[b:b + batch]
                        n = x[:, 1:].numel()
                        total += float(model(input_ids=x, labels=x).loss) * n
                        count += n
                losses.append(total / count)
                kept.append(model)
    else:
        from tracing.engine import Engine
        from tracing.evaluate import lm_losses
        from tracing.models import Checkpoint
        lanes = [Checkpoint(p) for p in (paths if name == "streamed-pair" else paths[:1])]
        with Timer() as t:
            losses = lm_losses(Engine(dtype=torch.float32, batch_size=batch, progress=False), lanes, ids)
    tokens = samples * block_size * len(losses)
    return {**t.fields(), "losses": losses, "tokens": tokens, "tokens_per_s": tokens / t.wall}


VARIANTS = ("full", "streamed", "full-pair", "streamed-pair")


def main(argv=None):
    a = common.eval_shape_parser(__doc__, VARIANTS, samples=8).parse_args(argv)

    if a.variant:
        emit({"variant": a.variant, **variant(a.variant, a.paths, a.samples, a.block_size, a.batch)})
        return

    root, paths = common.ensure_eval_pair(a)
    params = sum(f.stat().st_size for f in paths["base"].glob("*.safetensors")) / 2
    records = common.run_eval_variants(
        __file__, "bench_eval", a, lambda v: [paths["base"], paths["ft"]] if v.endswith("pair") else [paths["base"]])

    table = make_table(records)
    header = (f"bench_eval — {common.machine_line()}\n\nmodel: d={a.d}, h={a.h}, {a.blocks} blocks, V={a.V}, "
              f"{params / 1e6:.0f}M parameters (bf16 on disk, float32 compute); data: {a.samples} × "
              f"{a.block_size} random token ids, batch {a.batch}")
    print(f"\n{header}\n\n{table}")
    common.save_results(a.out, "bench_eval", records, f"{header}\n\n{table}")
    if a.cleanup:
        import shutil
        shutil.rmtree(root, ignore_errors=True)


def make_table(records: list[dict]) -> str:
    by = {r["variant"]: r for r in records}
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["variant"], "failed: " + r["error"].splitlines()[-1][:80]] + [""] * 7)
            continue
        ref = by.get("full-pair" if r["variant"].endswith("pair") else "full", {})
        rel = "—"
        if ref.get("losses"):
            rel = f"{max(abs(x - y) / abs(y) for x, y in zip(r['losses'], ref['losses'])):.1e}"
        rows.append([r["variant"], ", ".join(f"{x:.6f}" for x in r["losses"]), rel, common.fmt_s(r["wall_s"]),
                     f"{r['tokens_per_s']:.0f}", f"{r['load_start']:.1f}/{r['load_end']:.1f}",
                     common.fmt_gb(r["peak_rss"]),
                     common.fmt_ratio(r["wall_s"], ref.get("wall_s")) + " / " +
                     common.fmt_ratio(r["peak_rss"], ref.get("peak_rss"))])
    return common.markdown_table(["variant", "loss (base, ft)", "max rel. diff vs full", "wall s", "tokens/s",
                                  "load avg start/end", "peak RSS GiB", "vs full: wall / RSS"], rows)


if __name__ == "__main__":
    main()
