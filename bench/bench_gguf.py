"""`cos` on a Llama-2-7B-shaped pair where one side is a GGUF Q4_0 file, against the same pair in
safetensors: time and peak RSS, each variant in its own process.

Driver (default): writes (or reuses) the synthetic bf16 base and fine-tune-like checkpoints of
bench/common.py with 4 blocks, writes the fine-tune as GGUF Q4_0 the way llama.cpp's converter lays
it out (names, rotary Q/K row permutation; output.weight Q8_0), then runs

  safetensors  tracing.compare(base, ft, stat="cos")             both bf16 safetensors folders
  gguf         tracing.compare(base, ft.Q4_0.gguf, stat="cos")   per-tensor dequantization

each in full and sampled (``--rows``, default 0 and 1024: only K rows of each up projection; in the
GGUF file only those rows are dequantized).

    python -m bench.bench_gguf                 # 4 blocks, full and K = 1024
    python -m bench.bench_gguf --blocks 2 --rows 0
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import common  # noqa: E402
from bench.common import module_name, GB, Timer, emit  # noqa: E402

SHAPE_7B = dict(d=4096, h=11008, V=32000, heads=32)


def variant(base: Path, other: Path, rows: int = 0) -> dict:
    import tracing
    import tracing.api  # noqa: F401
    from tracing.stats import known_names
    known_names()
    with Timer() as t:
        rec = tracing.compare(str(base), str(other), stat="cos", progress=False, **({"rows": rows} if rows else {}))
    return {**t.fields(), "log10_pvalue": rec["log10_pvalue"], "stat_s": rec["timings"]["statistic"],
            "load_s": rec["timings"]["load"], "quantization": rec["models"]["ft"].get("quantization")}


def write_gguf_child(src: Path, out: Path, qtype: str) -> None:
    """Runs in its own process: the writer holds the quantized tensors until it writes them."""
    from tests.quant_writers import write_gguf
    write_gguf(src, out, qtype, output_qtype="Q8_0", with_tokenizer=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--qtype", default="Q4_0")
    ap.add_argument("--d", type=int, default=SHAPE_7B["d"], help="residual width (default 4096)")
    ap.add_argument("--h", type=int, default=SHAPE_7B["h"], help="MLP width (default 11008)")
    ap.add_argument("--V", type=int, default=SHAPE_7B["V"], help="vocabulary (default 32000)")
    ap.add_argument("--heads", type=int, default=SHAPE_7B["heads"])
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    ap.add_argument("--out", type=Path, default=common.ROOT / "bench" / "results")
    ap.add_argument("--cleanup", action="store_true")
    ap.add_argument("--rows", default="0,1024", help="K values; 0 is the full test (default 0,1024)")
    ap.add_argument("--k", type=int, default=0)
    ap.add_argument("--variant", choices=["safetensors", "gguf"])
    ap.add_argument("--base", type=Path)
    ap.add_argument("--other", type=Path)
    ap.add_argument("--write-gguf", nargs=3, metavar=("SRC", "OUT", "QTYPE"))
    a = ap.parse_args(argv)

    if a.write_gguf:
        write_gguf_child(Path(a.write_gguf[0]), Path(a.write_gguf[1]), a.write_gguf[2])
        return
    if a.variant:
        emit({"variant": a.variant, **variant(a.base, a.other, a.k)})
        return

    root = a.workdir / f"gguf-d{a.d}-h{a.h}-V{a.V}-L{a.blocks}"
    cfg = common.llama_config(d=a.d, h=a.h, V=a.V, heads=a.heads, L=a.blocks)
    t0 = time.time()
    paths = common.ensure_family(root, cfg, names=("base", "ft"), noise=a.noise)
    gguf = root / "gguf" / f"ft.{a.qtype}.gguf"
    if not gguf.is_file():
        print(f"writing {gguf} ...", file=sys.stderr, flush=True)
        tmp = gguf.with_name(gguf.name + ".part")
        subprocess.run([sys.executable, "-m", module_name(__file__), "--write-gguf", str(paths["ft"]), str(tmp), a.qtype],
                       cwd=common.ROOT, check=True)
        tmp.rename(gguf)
    print(f"  ready in {time.time() - t0:.0f} s", file=sys.stderr)

    records = []
    with open(common.log_path(a.workdir, "bench_gguf"), "a") as log:
        for k in (int(x) for x in a.rows.split(",") if x):
            for name, other in (("safetensors", paths["ft"]), ("gguf", gguf)):
                args = ["--variant", name, "--base", str(paths["base"]), "--other", str(other), "--k", str(k)]
                rec = common.run_child(__file__, args, log=log)
                size = common.dir_size(other) if other.is_dir() else other.stat().st_size
                rec.update(variant=name, blocks=a.blocks, ft_size=size, rows=k)
                records.append(rec)
                print(json.dumps(rec), file=sys.stderr, flush=True)
    table = make_table(records, a.qtype)
    header = f"bench_gguf — {common.machine_line()}"
    print(f"\n{header}\n\n{table}")
    common.save_results(a.out, "bench_gguf", records, f"{header}\n\n{table}")
    if a.cleanup:
        import shutil
        shutil.rmtree(root, ignore_errors=True)


def make_table(records: list[dict], qtype: str) -> str:
    rows = []
    for r in records:
        test = f"K = {r['rows']}" if r.get("rows") else "full"
        if "error" in r:
            rows.append([r["blocks"], r["variant"], test, "failed: " + r["error"].splitlines()[-1][:80]] + [""] * 8)
            continue
        ref = next((x for x in records if x.get("variant") == "safetensors" and "error" not in x
                    and x.get("rows") == r.get("rows")), {})
        kind = f"bf16 base vs {qtype} GGUF" if r["variant"] == "gguf" else "bf16 base vs bf16 ft"
        rows.append([r["blocks"], kind, test, f"{r['ft_size'] / GB:.2f}", common.fmt_s(r["wall_s"]),
                     common.fmt_s(r["stat_s"]), common.fmt_s(r["cpu_s"]),
                     f"{r['load_start']:.1f}/{r['load_end']:.1f}", common.fmt_gb(r["peak_rss"]),
                     common.fmt_ratio(r["wall_s"], ref.get("wall_s")) + " / " +
                     common.fmt_ratio(r["peak_rss"], ref.get("peak_rss")), f"{r['log10_pvalue']:.4g}"])
    return common.markdown_table(["blocks", "pair", "test", "ft on disk GiB", "wall s", "statistic s", "CPU s",
                                  "load avg start/end", "peak RSS GiB",
                                  "vs safetensors: wall / RSS", "log10 p"], rows)


if __name__ == "__main__":
    main()
