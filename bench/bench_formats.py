"""Reading quantized expert blocks: FP8 block-scaled (DeepSeek-V3 shape) and MXFP4 (gpt-oss-120B
shape) against bfloat16 of the same shape, whole tensors and ``--rows 256``, each variant in its
own process.

Driver (default): writes (or reuses) a one-block Qwen3-MoE-layout checkpoint per shape with E
experts in bfloat16, then the same weights in the format (tests/quant_writers.py: FP8 with
128×128 ``weight_scale_inv`` blocks as DeepSeek ships them; MXFP4 ``_blocks`` / ``_scales`` as
gpt-oss ships them), and times reading every expert's gate, up and down projection to float32
through ``tracing.models.Checkpoint``:

  full   ``get(name)`` of every expert tensor
  rows   ``get_rows(name, K rows)`` of every expert tensor (K = 256, drawn as the sampled test does)

after one untimed pass, the median of ``--repeat`` passes, with the files in the page cache
(``warm``: the cost measured is the reader's, not the disk's) or dropped from it before every pass
(``cold``: as a checkpoint far larger than memory is read; the quantized files are 2-3.6x smaller).
The ratio columns divide by the bf16 read of the same shape, test and page cache in the same run
(wall time, and CPU time of the reading process: on a shared machine the wall time includes waiting
for a core, so both are given with the load average).

``gpt-oss-120b-stacked`` is gpt-oss's own layout: a gpt-oss block whose experts are stacked in
``experts.gate_up_proj`` / ``down_proj`` (bf16), and the same in MXFP4 as the release ships it
(tests/quant_writers.py ``write_mxfp4_gpt_oss``: blocks stored transposed, [E, out, in/32, 16]).

    python -m bench.bench_formats                # DeepSeek-V3 FP8, gpt-oss-120B MXFP4 (both layouts), 4 experts
    python -m bench.bench_formats --experts 2 --repeat 3 --cache warm
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench import common  # noqa: E402
from bench.common import module_name, Timer, emit  # noqa: E402

#: name -> (residual width d, expert width, format); "-stacked": gpt-oss's own layout (every expert of
#: a block in one ``experts.gate_up_proj`` / ``down_proj``, MXFP4 blocks stored transposed)
SHAPES = {"deepseek-v3": (7168, 2048, "fp8"), "gpt-oss-120b": (2880, 2880, "mxfp4"),
          "gpt-oss-120b-stacked": (2880, 2880, "mxfp4-gpt-oss")}


def config(d: int, h: int, experts: int, fmt: str = ""):
    from transformers import AutoConfig
    if fmt == "mxfp4-gpt-oss":
        return AutoConfig.for_model("gpt_oss", hidden_size=d, intermediate_size=h, num_local_experts=experts,
                                    num_experts_per_tok=2, num_hidden_layers=1, vocab_size=256, num_attention_heads=4,
                                    num_key_value_heads=1, head_dim=64, layer_types=["full_attention"],
                                    tie_word_embeddings=False)
    return AutoConfig.for_model("qwen3_moe", hidden_size=d, moe_intermediate_size=h, intermediate_size=h,
                                num_experts=experts, num_experts_per_tok=2, num_hidden_layers=1, vocab_size=256,
                                num_attention_heads=2, num_key_value_heads=1, head_dim=64, tie_word_embeddings=False)


def write_bf16(folder: Path, cfg, seed: int = 0) -> None:
    """Every tensor of the config, random, in bfloat16 (the layout ``save_pretrained`` writes)."""
    import torch
    from safetensors.torch import save_file

    from transformers import AutoModelForCausalLM

    from tracing.arch import arch_from_config
    arch = arch_from_config(cfg)
    g = torch.Generator().manual_seed(seed)
    if arch.model_type == "gpt_oss":  # stacked experts: the shapes of transformers' modules (its disk layout)
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(cfg).state_dict().items()}
    else:
        shapes = {arch.ref(name).stores[0][0]: tuple(arch.ref(name).shape) for name in arch.names()}
    state = {k: (0.02 * torch.randn(shape, generator=g)).bfloat16() for k, shape in shapes.items()}
    folder.mkdir(parents=True, exist_ok=True)
    cfg.to_json_file(folder / "config.json")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def write_quantized(src: Path, out: Path, fmt: str) -> None:
    from tests.quant_writers import write_fp8, write_mxfp4, write_mxfp4_gpt_oss
    if fmt == "fp8":
        write_fp8(src, out, block=(128, 128))
    elif fmt == "mxfp4-gpt-oss":
        write_mxfp4_gpt_oss(src, out)
    else:
        write_mxfp4(src, out)


def variant(folder: Path, test: str, k: int, repeat: int, cold: bool = False) -> dict:
    from tracing.models import Checkpoint
    from tracing.stats.base import sampled_rows
    ck = Checkpoint(str(folder))
    names = [n for u in ck.arch.units(0) for n in (u.gate, u.up, u.down)]
    rows = {n: sampled_rows(ck.arch.ref(n).shape[0], k, seed=0) for n in names}

    def one_pass() -> int:
        n_values = 0
        for n in names:
            t = ck.get(n) if test == "full" else ck.get_rows(n, rows[n])
            n_values += t.numel()
        return n_values

    one_pass()  # warm: page cache, tables
    times, cpu = [], []
    for _ in range(repeat):
        if cold:
            common.evict([folder])
        with Timer() as t:
            n_values = one_pass()
        times.append(t.wall)
        cpu.append(t.cpu)
    return {"read_s": statistics.median(times), "cpu_s": statistics.median(cpu), "values": n_values,
            "tensors": len(names), "all_s": times, "load_end": t.load1}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    ap.add_argument("--out", type=Path, default=common.ROOT / "bench" / "results")
    ap.add_argument("--cleanup", action="store_true")
    ap.add_argument("--variant", type=Path, help="(child) the folder to read")
    ap.add_argument("--test", choices=["full", "rows"])
    ap.add_argument("--cache", default="warm,cold", help="page cache states to measure: warm, cold or both")
    ap.add_argument("--write", nargs=3, metavar=("SRC", "OUT", "FORMAT"))
    a = ap.parse_args(argv)

    if a.write:
        write_quantized(Path(a.write[0]), Path(a.write[1]), a.write[2])
        return
    if a.variant:
        emit(variant(a.variant, a.test, a.rows, a.repeat, cold=a.cache == "cold"))
        return

    import subprocess
    records = []
    with open(common.log_path(a.workdir, "bench_formats"), "a") as log:
        for shape in a.shapes.split(","):
            d, h, fmt = SHAPES[shape]
            root = a.workdir / f"formats-{shape}-E{a.experts}"
            folders = {"bf16": root / "bf16", fmt: root / fmt}
            if not (folders["bf16"] / "model.safetensors").is_file():
                write_bf16(folders["bf16"], config(d, h, a.experts, fmt))
            if not (folders[fmt] / "model.safetensors").is_file():
                print(f"writing {folders[fmt]} ...", file=sys.stderr, flush=True)
                subprocess.run([sys.executable, "-m", module_name(__file__), "--write", str(folders["bf16"]), str(folders[fmt]), fmt],
                               cwd=common.ROOT, check=True)
            for cache in a.cache.split(","):
                for test in ("full", "rows"):
                    for kind, folder in folders.items():
                        args = ["--variant", str(folder), "--test", test, "--rows", str(a.rows), "--repeat", str(a.repeat),
                                "--cache", cache]
                        rec = common.run_child(__file__, args, log=log)
                        rec.update(shape=shape, d=d, h=h, experts=a.experts, format=kind, test=test, rows=a.rows,
                                   cache=cache, size=common.dir_size(folder))
                        records.append(rec)
                        print(json.dumps(rec), file=sys.stderr, flush=True)
            if a.cleanup:
                import shutil
                shutil.rmtree(root, ignore_errors=True)
    table = make_table(records)
    header = f"bench_formats — {common.machine_line()}\n\n{LEGEND}"
    print(f"\n{header}\n\n{table}")
    common.save_results(a.out, "bench_formats", records, f"{header}\n\n{table}")


LEGEND = ("Every expert's gate, up and down projection read to float32 (full: whole tensors; rows: 256 sampled rows "
          "of each), median of the timed passes, each variant in its own process. Page cache warm: files in memory "
          "(the reader's cost); cold: dropped before every pass (the disk's too). vs bf16: the bf16 read of the same "
          "shape, test and page cache in this run (wall, and CPU time of the reading process); load: the 1-minute "
          "load average at the end of the variant (2 cores: above 2, wall times include waiting for a core). "
          "Goal: dequantizing within 1.3x of the bf16 read.")


def make_table(records: list[dict]) -> str:
    rows = []
    for r in records:
        test = "full" if r["test"] == "full" else f"rows K = {r['rows']}"
        shape = f"{r['shape']} (d={r['d']}, expert {r['h']}) × {r['experts']} experts"
        cache = r.get("cache", "warm")
        if "error" in r:
            rows.append([shape, r["format"], test, cache, "failed: " + r["error"].splitlines()[-1][:80], "", "", "", "", "",
                         ""])
            continue
        ref = next((x for x in records if x["shape"] == r["shape"] and x["test"] == r["test"]
                    and x.get("cache", "warm") == cache and x["format"] == "bf16" and "error" not in x), {})
        rows.append([shape, r["format"], test, cache, f"{r['size'] / 2**20:.0f}", f"{r['read_s'] * 1000:.0f}",
                     f"{r['cpu_s'] * 1000:.0f}", common.fmt_ratio(r["read_s"], ref.get("read_s")),
                     common.fmt_ratio(r["cpu_s"], ref.get("cpu_s")), f"{r.get('load_end', float('nan')):.1f}",
                     common.fmt_gb(r["peak_rss"])])
    return common.markdown_table(["block", "stored as", "test", "page cache", "on disk MiB", "read ms (median)", "CPU ms",
                                  "vs bf16 (wall)", "vs bf16 (CPU)", "load", "peak RSS GiB"], rows)


if __name__ == "__main__":
    main()
