"""Sampled `cos` of hub models by HTTP range requests against downloading them, through a loopback
hub with a bandwidth cap, and what the same reads cost for whole frontier checkpoints.

The driver serves checkpoints with the test suite's hub stand-in (tests/hub_server.py: the hub's URL
layout on 127.0.0.1, the real huggingface_hub client pointed at it through ``HF_ENDPOINT``) capped
at ``--rate`` MB/s shared by all connections, and runs each variant as ``main.py --stat cos`` in a
fresh process with an empty Hugging Face cache:

- a Llama-2-7B-shaped bf16 pair (d = 4096, h = 11008, V = 32000, one shard per block; ``--blocks``,
  default 4), written whole: ``K=256``, ``K=1024`` (``--rows K``, the sampled rows read by range
  requests) and ``download K=1024`` (``--rows 1024 --download``, the whole models downloaded first);
- a Llama-2-70B-shaped bf16 pair (d = 8192, h = 28672, 8 KV heads; ``--blocks70``, default 2) written
  as sparse files: every header whole, data only in the up_proj rows the sampled tests read (base:
  random; fine-tune: base + noise), holes elsewhere — the server sends what the files hold, so the
  bytes and times of the range reads are those of a real checkpoint of that shape.

``MB sent`` is what the server sent (both models, config files included); ``wall s`` the process's
wall time. The extrapolation columns give the bytes each whole model costs (headers and K rows of
every up_proj: L·K·d·2 bytes) and their transfer time at the same cap, against downloading both.

The second table is computed from the shapes (nothing is served): the sampled experts grid of a
DeepSeek-V3-shaped 671B pair (FP8 with 128×128 block scales: K rows of every expert's and shared
expert's up_proj, the scale row of each 128-row block they fall in, K rows of the dense blocks'
up_proj, every file's header) and of a Qwen3.5-397B-shaped pair (bf16), for K rows per expert.

    python -m bench.bench_remote                    # 4 + 2 blocks, 100 MB/s
    python -m bench.bench_remote --blocks 2 --blocks70 1 --rate 50
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common  # noqa: E402
from bench.common import ROOT  # noqa: E402
from tests.hub_server import HubServer  # noqa: E402

MB = 1_000_000
SHAPES = {"7B": dict(L=32, d=4096, h=11008, total=13.5e9),
          "70B": dict(L=80, d=8192, h=28672, total=138e9)}
#: frontier mixtures of experts, as their config.json files give them (the Qwen3.5 shape as assumed
#: here: 60 blocks of 512 experts of width 1024 and a shared expert, bf16)
MOE_SHAPES = {
    "DeepSeek-V3 671B (FP8)": dict(L=61, dense=3, d=7168, h=18432, E=256, h_e=2048, shared=1, bytes=1, block=128,
                                   total=671e9 * 1.0),
    "Qwen3.5-397B (bf16)": dict(L=60, dense=0, d=4096, h=0, E=512, h_e=1024, shared=1, bytes=2, block=None,
                                total=397e9 * 2.0),
}


def write_sparse_pair(root: Path, cfg, ks: list[int], seed: int = 0, noise: float = 0.1) -> dict[str, Path]:
    """A base and a fine-tune of ``cfg``'s shape as sparse safetensors files: headers whole, the rows
    ``sampled_rows(h, K, seed)`` of every up_proj (for each K of ``ks``) written, holes elsewhere."""
    import json

    import numpy as np
    import torch

    from tracing.stats.base import sampled_rows
    h, d = cfg.intermediate_size, cfg.hidden_size
    rows = np.unique(np.concatenate([sampled_rows(h, k, seed) for k in ks]))
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("base", "ft"):
        folder = root / name
        out[name] = folder
        if (folder / "config.json").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        weight_map = {}
        for i, (file, shapes) in enumerate(common._shards(cfg)):
            head, pos = {}, 0
            for key, shape in shapes.items():
                n = int(np.prod(shape)) * 2
                head[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [pos, pos + n]}
                pos += n
                weight_map[key] = file
            blob = json.dumps(head, separators=(",", ":")).encode()
            blob += b" " * (-len(blob) % 8)
            start = 8 + len(blob)
            with open(folder / file, "wb") as f:
                f.write(len(blob).to_bytes(8, "little") + blob)
                f.truncate(start + pos)
                for key in (k for k in shapes if k.endswith("mlp.up_proj.weight")):
                    torch.manual_seed(seed * 1000 + i)  # the same base rows in both models
                    vals = torch.randn(rows.size, d) * 0.02
                    if name == "ft":
                        vals += noise * 0.02 * torch.randn(rows.size, d, generator=g)
                    data = vals.to(torch.bfloat16).view(torch.uint8).numpy().reshape(rows.size, -1)
                    base = start + head[key]["data_offsets"][0]
                    for r, row in zip(rows, data):
                        f.seek(base + int(r) * d * 2)
                        f.write(row.tobytes())
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        cfg.save_pretrained(folder)
    return out


def moe_bytes(s: dict, k: int) -> tuple[int, int]:
    """``(bytes of one model, of which scale rows)`` the sampled experts grid reads of a mixture of
    experts of shape ``s`` with ``k`` rows per expert up_proj (and per dense up_proj): rows, the
    scale row of every ``block``-row block a sampled row falls in (FP8), headers."""
    moe_blocks, units = s["L"] - s["dense"], s["E"] + s["shared"]
    kk = min(k, s["h_e"])
    rows = moe_blocks * units * kk * s["d"] * s["bytes"] + s["dense"] * min(k, s["h"] or 1) * s["d"] * s["bytes"]
    scales = 0
    if s["block"]:
        nb = s["h_e"] // s["block"]  # expected blocks a sample of kk rows touches
        touched = nb * (1 - np.prod([(s["h_e"] - s["block"] - j) / (s["h_e"] - j) for j in range(kk)]))
        scales = int(moe_blocks * units * touched * (-(-s["d"] // s["block"])) * 4)
    return rows + scales + header_bytes(s), scales


def header_bytes(s: dict) -> int:
    """The safetensors headers of a model of shape ``s``: the JSON entry of each of its tensors as
    the hub's checkpoints name them (experts one tensor each; FP8 weights with a scale tensor)."""
    import json
    parts = 2 if s["block"] else 1
    one = {"model.layers.59.mlp.experts.255.up_proj.weight": {"dtype": "F8_E4M3", "shape": [2048, 7168],
                                                              "data_offsets": [12345678901, 12345678901]}}
    entry = len(json.dumps(one, separators=(",", ":")))
    per_block = 3 * (s["E"] + s["shared"]) * parts + 16  # experts, shared expert, attention, norms, router
    return s["L"] * per_block * entry


def moe_table(ks: list[int], rate: float) -> str:
    rows = []
    for name, s in MOE_SHAPES.items():
        for k in ks:
            n, scales = moe_bytes(s, k)
            pair = 2 * n
            ok = "yes" if pair <= 2e9 and pair / rate <= 300 else "no"
            rows.append([name, k, f"{pair / 1e9:.2f}", f"{2 * scales / MB:.0f}", f"{100 * n / s['total']:.2f}%",
                         common.fmt_s(pair / rate), f"{2 * s['total'] / rate / 3600:.1f} h", ok])
    return common.markdown_table(["pair", "K per expert", "GB read (pair)", "of which scale rows MB",
                                  "of each model", f"s at {rate / MB:.0f} MB/s", "download both",
                                  "≤ 2 GB and ≤ 5 min"], rows)


def run_variant(server: HubServer, rows: int, download: bool, repo: str = "bench") -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-hf-cache-") as cache:
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": cache,
               "TRACING_CACHE_DIR": cache}
        before = sum(server.served.values())
        cmd = [sys.executable, str(ROOT / "main.py"), "--base_model_id", f"{repo}/base", "--ft_model_id", f"{repo}/ft",
               "--stat", "cos", "--rows", str(rows), "--quiet"] + (["--download"] if download else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return {"repo": repo, "rows": rows, "download": download, "wall_s": wall, "sent": sum(server.served.values()) - before,
            "summary": proc.stdout.strip().splitlines()[0]}


def extrapolate(shape: str, rows: int, rate: float) -> str:
    s = SHAPES[shape]
    n = 2 * s["L"] * rows * s["d"] * 2  # both models, bf16 rows
    return (f"{s['L']} blocks: {n / MB:.0f} MB ≈ {common.fmt_s(n / rate)} s (download {2 * s['total'] / MB / 1000:.0f} GB "
            f"≈ {2 * s['total'] / rate / 60:.0f} min)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=4, help="blocks of the 7B-shaped pair (written whole)")
    ap.add_argument("--blocks70", type=int, default=2, help="blocks of the 70B-shaped pair (sparse files; 0: none)")
    ap.add_argument("--rate", type=float, default=100, help="bandwidth cap in MB/s")
    ap.add_argument("--rows", default="256,1024")
    ap.add_argument("--moe-rows", default="4,8,16,64,256", help="K per expert in the frontier MoE table")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    a = ap.parse_args()
    ks = [int(k) for k in a.rows.split(",")]
    cfg = common.llama_config(d=4096, h=11008, L=a.blocks, V=32000, heads=32)
    repos = {"bench7b": common.ensure_family(a.workdir / f"remote-7b-L{a.blocks}", cfg, names=("base", "ft"))}
    if a.blocks70:
        cfg70 = common.llama_config(d=8192, h=28672, L=a.blocks70, V=32000, heads=64, kv_heads=8)
        repos["bench70b"] = write_sparse_pair(a.workdir / f"remote-70b-sparse-L{a.blocks70}", cfg70, ks)
    rate = a.rate * MB
    server = HubServer(rate=rate)
    sizes = {}
    for repo, paths in repos.items():
        for name, p in paths.items():
            server.add(f"{repo}/{name}", p)
            for f in p.glob("*.safetensors"):
                server.digest(f)  # the hub knows its digests; not part of any variant
        sizes[repo] = sum(f.stat().st_size for p in paths.values() for f in p.glob("*.safetensors"))
    recs = [run_variant(server, k, False, "bench7b") for k in ks] + [run_variant(server, ks[-1], True, "bench7b")]
    if a.blocks70:
        recs += [run_variant(server, k, False, "bench70b") for k in ks]
    server.close()
    rows = []
    for r in recs:
        shape = "7B" if r["repo"] == "bench7b" else "70B"
        blocks = a.blocks if shape == "7B" else a.blocks70
        what = f"{shape} ({blocks} blocks) " + (f"download K={r['rows']}" if r["download"] else f"K={r['rows']}")
        extra = "" if r["download"] else extrapolate(shape, r["rows"], rate)
        rows.append([what, f"{r['sent'] / MB:.1f}", f"{100 * r['sent'] / sizes[r['repo']]:.2f}%",
                     common.fmt_s(r["wall_s"]), r["summary"].split("  ")[0][:50], extra])
    moe = moe_table([int(k) for k in a.moe_rows.split(",")], rate)
    table = (f"{common.machine_line()}; loopback hub capped at {a.rate:.0f} MB/s; 7B-shaped bf16 pair of {a.blocks} "
             f"blocks ({sizes['bench7b'] / MB:.0f} MB of weights in all)"
             + (f", 70B-shaped bf16 pair of {a.blocks70} blocks ({sizes['bench70b'] / MB:.0f} MB, sparse files)"
                if a.blocks70 else "") + ".\n\n"
             + common.markdown_table(["variant", "MB sent", "of the weights", "wall s", "result",
                                      "both whole models at this cap (rows only)"], rows)
             + "\n\nSampled experts grid of frontier mixtures of experts, computed from their shapes (both models; "
               f"at {a.rate:.0f} MB/s):\n\n" + moe)
    print(table)
    common.save_results(ROOT / "bench" / "results", "bench_remote", recs, table)


if __name__ == "__main__":
    main()
