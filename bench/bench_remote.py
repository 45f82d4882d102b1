"""Sampled `cos` of hub models by HTTP range requests against downloading them, through a loopback
hub with a bandwidth cap.

The driver writes (or reuses) a Llama-2-7B-shaped bf16 pair (d = 4096, h = 11008, V = 32000, one
shard per block; ``--blocks``, default 4), serves it with the test suite's hub stand-in
(tests/hub_server.py: the hub's URL layout on 127.0.0.1, the real huggingface_hub client pointed at
it through ``HF_ENDPOINT``) capped at ``--rate`` MB/s shared by all connections, and runs each
variant as ``main.py --stat cos`` in a fresh process with an empty Hugging Face cache:

- ``K=256``, ``K=1024``: ``--rows K``, the sampled rows read by range requests;
- ``download K=1024``: ``--rows 1024 --download``, the whole model downloaded first (as before).

``MB sent`` is what the server sent (both models, config files included); ``wall s`` the process's
wall time. The last columns extrapolate the sampled reads to whole models by the byte count each
model costs (headers and K rows of every up_proj: L·K·d·2 bytes) at the same cap.

    python -m bench.bench_remote                    # 4 blocks, 100 MB/s
    python -m bench.bench_remote --blocks 2 --rate 50
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common  # noqa: E402
from bench.common import ROOT  # noqa: E402
from tests.hub_server import HubServer  # noqa: E402

MB = 1_000_000
SHAPES = {"7B (32 blocks)": dict(L=32, d=4096, h=11008, total=13.5e9),
          "70B (80 blocks)": dict(L=80, d=8192, h=28672, total=138e9)}


def run_variant(server: HubServer, rows: int, download: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-hf-cache-") as cache:
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": cache,
               "TRACING_CACHE_DIR": cache}
        before = sum(server.served.values())
        cmd = [sys.executable, str(ROOT / "main.py"), "--base_model_id", "bench/base", "--ft_model_id", "bench/ft",
               "--stat", "cos", "--rows", str(rows), "--quiet"] + (["--download"] if download else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return {"rows": rows, "download": download, "wall_s": wall, "sent": sum(server.served.values()) - before,
            "summary": proc.stdout.strip().splitlines()[0]}


def extrapolate(rows: int, rate: float) -> list[str]:
    out = []
    for name, s in SHAPES.items():
        n = 2 * s["L"] * rows * s["d"] * 2  # both models, bf16 rows
        out.append(f"{name}: {n / MB:.0f} MB ≈ {n / rate:.1f} s (download {2 * s['total'] / MB / 1000:.0f} GB ≈ "
                   f"{2 * s['total'] / rate / 60:.0f} min)")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--rate", type=float, default=100, help="bandwidth cap in MB/s")
    ap.add_argument("--rows", default="256,1024")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    a = ap.parse_args()
    cfg = common.llama_config(d=4096, h=11008, L=a.blocks, V=32000, heads=32)
    paths = common.ensure_family(a.workdir / f"remote-7b-L{a.blocks}", cfg, names=("base", "ft"))
    rate = a.rate * MB
    server = HubServer(rate=rate)
    for name, p in paths.items():
        server.add(f"bench/{name}", p)
        for f in p.glob("*.safetensors"):
            server.digest(f)  # the hub knows its digests; not part of any variant
    size = sum(f.stat().st_size for p in paths.values() for f in p.glob("*.safetensors"))
    ks = [int(k) for k in a.rows.split(",")]
    recs = [run_variant(server, k, False) for k in ks] + [run_variant(server, ks[-1], True)]
    server.close()
    rows = []
    for r in recs:
        what = f"download K={r['rows']}" if r["download"] else f"K={r['rows']}"
        extra = "" if r["download"] else "; ".join(extrapolate(r["rows"], rate))
        rows.append([what, f"{r['sent'] / MB:.1f}", f"{100 * r['sent'] / size:.2f}%", common.fmt_s(r["wall_s"]),
                     r["summary"].split("  ")[0][:60], extra])
    table = (f"{common.machine_line()}; loopback hub capped at {a.rate:.0f} MB/s; 7B-shaped bf16 pair, "
             f"{a.blocks} blocks, {size / MB:.0f} MB of weights in all.\n\n"
             + common.markdown_table(["variant", "MB sent", "of the weights", "wall s", "result",
                                      "whole models at this cap (rows only)"], rows))
    print(table)
    common.save_results(ROOT / "bench" / "results", "bench_remote", recs, table)


if __name__ == "__main__":
    main()
