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

- a DeepSeek-V3-shaped FP8 pair (transformers' DeepseekV3Config: d = 7168, 256 experts of width 2048
  and a shared expert, MLA attention, 128 × 128 block scales; one dense block and ``--moe-blocks``
  MoE blocks, default 1, one shard per block) written as sparse files: every header whole (each
  tensor as the release names and stores it), data only in the up_proj rows the grid reads at each
  K of ``--moe-k`` (default 8 and 32) and their scale rows; the fine-tune's experts are the base's
  in another order, plus noise. ``--dry-run`` (headers only: the fixed part) and ``--rows K`` for
  each K: MB and requests sent, wall, the child's CPU, experts paired right, log10 p; carried to
  58 MoE + 3 dense blocks from the bytes and requests of each kind of file and the per-block time.

The last table is computed from the shapes (nothing is served): the sampled experts grid of a
DeepSeek-V3-shaped 671B pair (FP8 with 128×128 block scales: K rows of every expert's and shared
expert's up_proj, the scale row of each 128-row block they fall in, K rows of the dense blocks'
up_proj, every file's header) and of a Qwen3.5-397B-shaped pair (bf16), for K rows per expert.

    python -m bench.bench_remote                    # 4 + 2 blocks, 1 DeepSeek-V3 MoE block, 100 MB/s
    python -m bench.bench_remote --blocks 2 --blocks70 1 --rate 50
    python -m bench.bench_remote --blocks 0 --blocks70 0 --moe-k 8,32   # the DeepSeek-V3-shaped pair only
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from bench import common  # noqa: E402
from bench.common import ROOT  # noqa: E402
from tracing.sources.remote_quantized import SMALL_WHOLE, SMALL_WHOLE_RATIO  # noqa: E402
from tests.hub_server import HubServer  # noqa: E402

MB = 1_000_000
SHAPES = {"7B": dict(L=32, d=4096, h=11008, total=13.5e9),
          "70B": dict(L=80, d=8192, h=28672, total=138e9)}
#: frontier mixtures of experts, as their published configs give them (Qwen3.5-397B-A17B: 60 blocks,
#: d = 4096, 512 experts of width 1024 and a shared expert of width 1024, bf16)
MOE_SHAPES = {
    "DeepSeek-V3 671B (FP8)": dict(L=61, dense=3, d=7168, h=18432, E=256, h_e=2048, shared=1, bytes=1, block=128,
                                   total=671e9 * 1.0),
    "Qwen3.5-397B (bf16)": dict(L=60, dense=0, d=4096, h=0, E=512, h_e=1024, shared=1, bytes=2, block=None,
                                total=397e9 * 2.0),
}


def write_sparse_pair(root: Path, cfg, ks: list[int], seed: int = 0, noise: float = 0.1) -> dict[str, Path]:
    """A base and a fine-tune of ``cfg``'s shape as sparse safetensors files: headers whole, the rows
    ``sampled_rows(h, K, seed)`` of every up_proj (for each K of ``ks``) written, holes elsewhere."""
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
            weight_map.update(dict.fromkeys(shapes, file))
            f, offset = common.open_sparse(folder / file, {k: ("BF16", s) for k, s in shapes.items()})
            with f:
                for key in (k for k in shapes if k.endswith("mlp.up_proj.weight")):
                    torch.manual_seed(seed * 1000 + i)  # the same base rows in both models
                    vals = torch.randn(rows.size, d) * 0.02
                    if name == "ft":
                        vals += noise * 0.02 * torch.randn(rows.size, d, generator=g)
                    data = vals.to(torch.bfloat16).view(torch.uint8).numpy().reshape(rows.size, -1)
                    base = offset[key]
                    for r, row in zip(rows, data):
                        f.seek(base + int(r) * d * 2)
                        f.write(row.tobytes())
        common.write_index(folder, weight_map)
        cfg.save_pretrained(folder)
    return out


def moe_bytes(s: dict, k: int) -> tuple[int, int]:
    """``(bytes of one model, of which scale rows)`` the sampled experts grid reads of a mixture of
    experts of shape ``s`` with ``k`` rows per expert up_proj (and per dense up_proj): rows, the
    scale row of every ``block``-row block a sampled row falls in (FP8; the whole scale tensor when
    the reader takes it in one request), headers."""
    moe_blocks, units = s["L"] - s["dense"], s["E"] + s["shared"]
    kk = min(k, s["h_e"])
    rows = moe_blocks * units * kk * s["d"] * s["bytes"] + s["dense"] * min(k, s["h"] or 1) * s["d"] * s["bytes"]
    scales = 0
    if s["block"]:
        nb = s["h_e"] // s["block"]  # expected blocks a sample of kk rows touches
        touched = nb * (1 - np.prod([(s["h_e"] - s["block"] - j) / (s["h_e"] - j) for j in range(kk)]))
        row = (-(-s["d"] // s["block"])) * 4
        if nb * row <= SMALL_WHOLE and nb <= SMALL_WHOLE_RATIO * touched:  # the scale tensor read whole
            touched = nb
        scales = int(moe_blocks * units * touched * row)
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


FP8_BLOCK = 128


def v3_config(moe_blocks: int):
    """DeepSeek-V3's config (transformers' defaults are the 671B shapes) with one dense block and
    ``moe_blocks`` MoE blocks, FP8 with 128 × 128 block scales as the release ships it."""
    from transformers import DeepseekV3Config
    cfg = DeepseekV3Config(num_hidden_layers=1 + moe_blocks, first_k_dense_replace=1, torch_dtype="bfloat16")
    cfg.quantization_config = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                               "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    return cfg


def v3_block(cfg, i: int) -> dict[str, tuple[str, list[int]]]:
    """``{tensor: (dtype, shape)}`` of block i as the DeepSeek-V3 release names and stores them: MLA
    attention, a dense MLP (block 0) or 256 experts one tensor each, a shared expert and the router;
    every linear layer float8_e4m3fn with its ``weight_scale_inv``."""
    d, p, heads = cfg.hidden_size, f"model.layers.{i}.", cfg.num_attention_heads
    qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    linear = {"self_attn.q_a_proj": [cfg.q_lora_rank, d], "self_attn.q_b_proj": [heads * qk, cfg.q_lora_rank],
              "self_attn.kv_a_proj_with_mqa": [cfg.kv_lora_rank + cfg.qk_rope_head_dim, d],
              "self_attn.kv_b_proj": [heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank],
              "self_attn.o_proj": [d, heads * cfg.v_head_dim]}
    out = {p + "input_layernorm.weight": ("BF16", [d]), p + "post_attention_layernorm.weight": ("BF16", [d]),
           p + "self_attn.q_a_layernorm.weight": ("BF16", [cfg.q_lora_rank]),
           p + "self_attn.kv_a_layernorm.weight": ("BF16", [cfg.kv_lora_rank])}
    mlps = {"mlp.": cfg.intermediate_size} if i < cfg.first_k_dense_replace else \
        {**{f"mlp.experts.{e}.": cfg.moe_intermediate_size for e in range(cfg.n_routed_experts)},
         "mlp.shared_experts.": cfg.moe_intermediate_size * cfg.n_shared_experts}
    for m, h in mlps.items():
        linear.update({m + "gate_proj": [h, d], m + "up_proj": [h, d], m + "down_proj": [d, h]})
    if i >= cfg.first_k_dense_replace:
        out[p + "mlp.gate.weight"] = ("BF16", [cfg.n_routed_experts, d])
        out[p + "mlp.gate.e_score_correction_bias"] = ("F32", [cfg.n_routed_experts])
    for name, (r, c) in linear.items():
        out[p + name + ".weight"] = ("F8_E4M3", [r, c])
        out[p + name + ".weight_scale_inv"] = ("F32", [-(-r // FP8_BLOCK), -(-c // FP8_BLOCK)])
    return out


def write_sparse_v3(root: Path, moe_blocks: int, ks: list[int], seed: int = 0, noise: float = 0.1) -> dict[str, Path]:
    """A DeepSeek-V3-shaped FP8 pair of 1 dense and ``moe_blocks`` MoE blocks as sparse files (one
    shard per block and one for the embeddings and head): every header whole, data only in the rows
    the sampled grid reads at each K of ``ks`` (those rows of every up_proj and their scale rows),
    holes elsewhere. The fine-tune's expert e of block i is the base's expert ``order(i)[e]`` plus
    noise (values N(0, 0.02), the noise ``noise`` × 0.02)."""
    import torch

    from tracing.stats.base import sampled_rows
    cfg = v3_config(moe_blocks)
    d = cfg.hidden_size
    out = {name: root / name for name in ("base", "ft")}
    if all((p / "config.json").is_file() for p in out.values()):
        return out
    shards = [("model-embed.safetensors", {"model.embed_tokens.weight": ("BF16", [cfg.vocab_size, d]),
                                           "model.norm.weight": ("BF16", [d]),
                                           "lm_head.weight": ("BF16", [cfg.vocab_size, d])})]
    shards += [(f"model-block-{i:02d}.safetensors", v3_block(cfg, i)) for i in range(cfg.num_hidden_layers)]

    def values(i: int, e, n: int, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The base's sampled rows of unit e of block i (float32) and the scale rows they fall in."""
        g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{i}/{e}".encode()))
        scales = 2e-4 * (0.8 + 0.4 * torch.rand(-(-n // FP8_BLOCK), -(-d // FP8_BLOCK), generator=g))
        return 0.02 * torch.randn(rows.size, d, generator=g), scales

    for name, folder in out.items():
        if (folder / "config.json").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        weight_map = {}
        for file, tensors in shards:
            weight_map.update(dict.fromkeys(tensors, file))
            f, offset = common.open_sparse(folder / file, tensors)
            with f:
                for key in (k for k in tensors if k.endswith("up_proj.weight")):
                    i, n = int(key.split(".")[2]), tensors[key][1][0]
                    rows = np.unique(np.concatenate([sampled_rows(n, k, seed) for k in ks]))
                    unit = key.split(".mlp.")[1].rsplit(".", 2)[0]  # experts.<e>, shared_experts or up_proj's MLP
                    if name == "ft" and unit.startswith("experts."):
                        unit = f"experts.{expert_order(cfg, i)[int(unit.split('.')[1])]}"
                    vals, scales = values(i, unit, n, rows)
                    if name == "ft":
                        g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/ft/{key}".encode()))
                        vals = vals + noise * 0.02 * torch.randn(vals.shape, generator=g)
                    full = scales[torch.from_numpy(rows // FP8_BLOCK)].repeat_interleave(FP8_BLOCK, 1)[:, :d]
                    codes = (vals / full).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
                    base = offset[key]
                    for r, row in zip(rows, codes):
                        f.seek(base + int(r) * d)
                        f.write(row.tobytes())
                    sbase, srow = offset[key + "_scale_inv"], scales.shape[1] * 4
                    for b in np.unique(rows // FP8_BLOCK):
                        f.seek(sbase + int(b) * srow)
                        f.write(scales[b].numpy().astype("<f4").tobytes())
        common.write_index(folder, weight_map)
        cfg.save_pretrained(folder)
    return out


def expert_order(cfg, i: int) -> list[int]:
    """The fine-tune's expert e of block i is the base's expert ``expert_order(cfg, i)[e]``."""
    return np.random.default_rng(1000 + i).permutation(cfg.n_routed_experts).tolist()


def run_moe_variant(server: HubServer, rows: int, dry: bool, repo: str = "benchv3", threads: int = 1) -> dict:
    """``main.py --stat cos --rows K`` (or its ``--dry-run``) on the DeepSeek-V3-shaped pair in a
    fresh process with an empty cache and ``threads`` torch threads (``OMP_NUM_THREADS``): wall, the
    child's CPU, bytes and requests sent per file, and the record (log10 p, experts paired right)."""
    import resource

    from tracing.results import load_record
    with tempfile.TemporaryDirectory(prefix="bench-hf-cache-") as cache:
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": cache,
               "TRACING_CACHE_DIR": cache, "OMP_NUM_THREADS": str(threads)}
        before, n_req = dict(server.served), len(server.requests)
        save = Path(cache) / "r.p"
        cmd = [sys.executable, str(ROOT / "main.py"), "--base_model_id", f"{repo}/base", "--ft_model_id", f"{repo}/ft",
               "--stat", "cos", "--rows", str(rows), "--quiet"] + (["--dry-run"] if dry else ["--save", str(save)])
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        rec = None if dry else load_record(save)
    sent = {k: v - before.get(k, 0) for k, v in server.served.items() if v - before.get(k, 0)}
    reqs: dict = {}
    for method, path, _ in server.requests[n_req:]:
        if method == "GET" and path.endswith(".safetensors"):
            key = path.split("/resolve/")[0].strip("/") + "/" + path.rsplit("/", 1)[1]
            reqs[key] = reqs.get(key, 0) + 1
    out = {"repo": repo, "rows": rows, "dry": dry, "threads": threads, "wall_s": wall,
           "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
           "sent": sum(sent.values()), "sent_per_file": sent, "requests_per_file": reqs,
           "stdout": proc.stdout.strip().splitlines()}
    if rec is not None:
        cfg = v3_config(1)
        matching = rec["extra"]["expert_matching"]
        want = {i: np.argsort(expert_order(cfg, int(i))).tolist() for i in matching}
        out.update(log10_p=rec["log10_pvalue"], experts=sum(len(v) for v in matching.values()),
                   paired_right=sum(a == b for i in matching for a, b in zip(matching[i], want[i])))
    return out


def moe_extrapolate(v: dict, moe_blocks: int, total: dict) -> dict:
    """A measured variant of the DeepSeek-V3-shaped pair carried to 58 MoE + 3 dense blocks: bytes and
    requests of each kind of file as measured (MoE block files × 58 / measured, the dense block file
    × 3, the embeddings' and config files once), wall and CPU as the measured fixed part (the dry run:
    imports, configs, headers) plus the per-block part × 58 / measured."""
    s = MOE_SHAPES["DeepSeek-V3 671B (FP8)"]
    moe_n, dense_n = s["L"] - s["dense"], s["dense"]

    def scale(per_file: dict) -> float:
        n = 0.0
        for key, b in per_file.items():
            if "model-block-00" in key:
                n += dense_n * b
            elif "model-block-" in key:
                n += moe_n * b / moe_blocks
            else:
                n += b
        return n
    return {"GB": scale(v["sent_per_file"]) / 1e9, "requests": scale(v["requests_per_file"]),
            "wall_s": total["wall_s"] + (v["wall_s"] - total["wall_s"]) * moe_n / moe_blocks,
            "cpu_s": total["cpu_s"] + (v["cpu_s"] - total["cpu_s"]) * moe_n / moe_blocks}


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
    ap.add_argument("--blocks", type=int, default=4, help="blocks of the 7B-shaped pair (written whole; 0: none)")
    ap.add_argument("--blocks70", type=int, default=2, help="blocks of the 70B-shaped pair (sparse files; 0: none)")
    ap.add_argument("--moe-blocks", type=int, default=1,
                    help="MoE blocks of the DeepSeek-V3-shaped FP8 pair (sparse files, after a dense block; 0: none)")
    ap.add_argument("--moe-k", default="8,32", help="K per expert of the DeepSeek-V3-shaped pair, served")
    ap.add_argument("--rate", type=float, default=100, help="bandwidth cap in MB/s")
    ap.add_argument("--rows", default="256,1024")
    ap.add_argument("--moe-rows", default="8,16,32,256", help="K per expert in the frontier MoE table (computed)")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    a = ap.parse_args()
    ks, moe_ks = [int(k) for k in a.rows.split(",")], [int(k) for k in a.moe_k.split(",")]
    repos = {}
    if a.blocks:
        cfg = common.llama_config(d=4096, h=11008, L=a.blocks, V=32000, heads=32)
        repos["bench7b"] = common.ensure_family(a.workdir / f"remote-7b-L{a.blocks}", cfg, names=("base", "ft"))
    if a.blocks70:
        cfg70 = common.llama_config(d=8192, h=28672, L=a.blocks70, V=32000, heads=64, kv_heads=8)
        repos["bench70b"] = write_sparse_pair(a.workdir / f"remote-70b-sparse-L{a.blocks70}", cfg70, ks)
    if a.moe_blocks:
        repos["benchv3"] = write_sparse_v3(a.workdir / f"remote-v3-sparse-M{a.moe_blocks}-K{'-'.join(map(str, moe_ks))}",
                                           a.moe_blocks, moe_ks)
    rate = a.rate * MB
    server = HubServer(rate=rate)
    sizes = {}
    for repo, paths in repos.items():
        for name, p in paths.items():
            server.add(f"{repo}/{name}", p)
            for f in p.glob("*.safetensors"):
                server.digest(f)  # the hub knows its digests; not part of any variant
        sizes[repo] = sum(f.stat().st_size for p in paths.values() for f in p.glob("*.safetensors"))
    recs = []
    if a.blocks:
        recs += [run_variant(server, k, False, "bench7b") for k in ks] + [run_variant(server, ks[-1], True, "bench7b")]
    if a.blocks70:
        recs += [run_variant(server, k, False, "bench70b") for k in ks]
    moe_recs = []
    if a.moe_blocks:
        moe_recs = [run_moe_variant(server, moe_ks[0], dry=True)] + [run_moe_variant(server, k, dry=False) for k in moe_ks]
        moe_recs += [run_moe_variant(server, moe_ks[0], dry=False, threads=2)]  # torch's default on 2 cores
    server.close()
    rows = []
    for r in recs:
        shape = "7B" if r["repo"] == "bench7b" else "70B"
        blocks = a.blocks if shape == "7B" else a.blocks70
        what = f"{shape} ({blocks} blocks) " + (f"download K={r['rows']}" if r["download"] else f"K={r['rows']}")
        extra = "" if r["download"] else extrapolate(shape, r["rows"], rate)
        rows.append([what, f"{r['sent'] / MB:.1f}", f"{100 * r['sent'] / sizes[r['repo']]:.2f}%",
                     common.fmt_s(r["wall_s"]), r["summary"].split("  ")[0][:50], extra])
    parts = [f"{common.machine_line()}; load average {common.loadavg():.1f}; loopback hub capped at {a.rate:.0f} MB/s"]
    if rows:
        parts.append(common.markdown_table(["variant", "MB sent", "of the weights", "wall s", "result",
                                            "both whole models at this cap (rows only)"], rows))
    if moe_recs:
        parts.append(moe_served_table(moe_recs, a.moe_blocks, sizes["benchv3"], rate))
    parts.append("Sampled experts grid of frontier mixtures of experts, computed from their shapes (both models; "
                 f"at {a.rate:.0f} MB/s):\n\n" + moe_table([int(k) for k in a.moe_rows.split(",")], rate))
    table = "\n\n".join(parts)
    print(table)
    common.save_results(ROOT / "bench" / "results", "bench_remote", recs + moe_recs, table)


def moe_served_table(recs: list[dict], moe_blocks: int, size: int, rate: float) -> str:
    """The DeepSeek-V3-shaped pair served: each variant as measured and carried to the whole 671B pair."""
    dry, runs = recs[0], recs[1:]
    whole = moe_extrapolate(dry, moe_blocks, dry)
    rows = [["`--dry-run`", f"{dry['sent'] / MB:.1f}", sum(dry["requests_per_file"].values()), common.fmt_s(dry["wall_s"]),
             common.fmt_s(dry["cpu_s"]), "", "", f"{whole['GB']:.3f}", f"{whole['requests']:.0f}",
             common.fmt_s(whole["wall_s"]), "", ""]]
    for r in runs:
        e = moe_extrapolate(r, moe_blocks, dry)
        ok = "yes" if e["GB"] <= 2 and e["wall_s"] <= 300 else "no"
        rows.append([f"`--rows {r['rows']}`" + (f", {r['threads']} torch threads" if r["threads"] != 1 else ""),
                     f"{r['sent'] / MB:.1f}", sum(r["requests_per_file"].values()),
                     common.fmt_s(r["wall_s"]), common.fmt_s(r["cpu_s"]), f"{r['paired_right']}/{r['experts']}",
                     f"{r['log10_p']:.0f}", f"{e['GB']:.2f}", f"{e['requests']:.0f}", common.fmt_s(e["wall_s"]),
                     common.fmt_s(e["cpu_s"]), ok])
    return (f"DeepSeek-V3-shaped FP8 pair served ({moe_blocks} MoE block(s) of 256 experts and a shared expert after "
            f"a dense block, {size / 1e9:.1f} GB of sparse files: headers whole, data in the sampled rows and their "
            f"scale rows), `main.py --stat cos` in a fresh process each (1 torch thread unless said); carried to 58 "
            f"MoE + 3 dense blocks (the "
            f"671B pair):\n\n"
            + common.markdown_table(["variant", "MB sent", "requests", "wall s", "CPU s (client)", "experts paired right",
                                     "log10 p", "671B: GB", "671B: requests", "671B: wall s", "671B: CPU s",
                                     "≤ 2 GB and ≤ 5 min"], rows))


if __name__ == "__main__":
    main()
