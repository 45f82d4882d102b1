"""What a sampled test costs end to end: `main.py --stat cos --rows K` on a 7B-shaped pair of local
safetensors folders, each run a cold process with a cold digest cache and the weight files dropped
from the page cache; `main.py --help`; and the imports of the weight-only run (`python -X importtime`).

    python -m bench.bench_cost                    # 32 blocks, K = 1024, 3 repetitions
    python -m bench.bench_cost --blocks 8 --reps 1

The pair is written sparse: every file has its full size (a 7B pair is ~27 GB of files) but only
the K sampled rows of each `up_proj` hold data (base ~ N(0, 0.02²), ft = base + 10% noise, in bf16);
the rest are holes that occupy no disk and are never read by the sampled test. The variants:

- `fast` — the default of a sampled test: fast file identity (size, times, header SHA-256);
- `full` — the same run with `--digest full`: every weight file hashed first (the behaviour before
  the fast identity). Hashing a hole reads no disk, so this is a lower bound of a real first run's
  hashing (which also reads 27 GB from storage);
- `help` — `main.py --help`; `imports` — the fast run under `-X importtime` (sum of top-level imports);
- `before` — with ``--against CHECKOUT``, the `fast` run of that checkout's `main.py` (e.g. the code
  before a change), alternating with this one's.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common  # noqa: E402

SHAPE = dict(d=4096, h=11008, V=32000, heads=32)


def _config(L: int) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": SHAPE["d"],
            "intermediate_size": SHAPE["h"], "num_hidden_layers": L, "num_attention_heads": SHAPE["heads"],
            "num_key_value_heads": SHAPE["heads"], "vocab_size": SHAPE["V"], "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def write_sparse_pair(root: Path, L: int, K: int, noise: float = 0.1) -> dict[str, Path]:
    """``root/base`` and ``root/ft``: full-size bf16 safetensors files, data only in the sampled rows."""
    import numpy as np
    import torch
    from tracing.stats.base import sampled_rows
    spec = {"L": L, "K": K, "noise": noise, "shape": SHAPE}
    paths = {n: root / n for n in ("base", "ft")}
    if (root / "spec.json").is_file() and json.loads((root / "spec.json").read_text()) == spec:
        return paths
    shutil.rmtree(root, ignore_errors=True)
    rows = np.asarray(sampled_rows(SHAPE["h"], K, 0))
    row_bytes = 2 * SHAPE["d"]
    g = torch.Generator().manual_seed(0)
    maps = {n: {} for n in paths}
    for p in paths.values():
        p.mkdir(parents=True)
        (p / "config.json").write_text(json.dumps(_config(L), indent=1))
    cfg = common.llama_config(d=SHAPE["d"], h=SHAPE["h"], L=L, V=SHAPE["V"], heads=SHAPE["heads"])
    for fname, shapes in common._shards(cfg):
        tensors = {k: ("BF16", s) for k, s in shapes.items()}
        up = next((k for k in tensors if k.endswith("up_proj.weight")), None)
        base = 0.02 * torch.randn(K, SHAPE["d"], generator=g) if up else None
        for n, p in paths.items():
            f, offset = common.open_sparse(p / fname, tensors, metadata={"format": "pt"})
            with f:
                if up:
                    w = base if n == "base" else base + noise * 0.02 * torch.randn(base.shape, generator=g)
                    data = w.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
                    for j, r in enumerate(rows):
                        f.seek(offset[up] + int(r) * row_bytes)
                        f.write(data[j * row_bytes:(j + 1) * row_bytes])
            maps[n].update({k: fname for k in tensors})
    for n, p in paths.items():
        common.write_index(p, maps[n])
    (root / "spec.json").write_text(json.dumps(spec))
    return paths


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], env: dict, cwd: Path = common.ROOT) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s of the child, the finished process)."""
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:])} failed:\n{proc.stderr[-2000:]}")
    return wall, cpu, proc


def import_seconds(stderr: str) -> tuple[float, dict]:
    """Sum of the top-level cumulative import times of a ``-X importtime`` log, and the largest."""
    top = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) <= 1:
            top[m.group(3)] = int(m.group(1)) / 1e6
    big = dict(sorted(top.items(), key=lambda kv: -kv[1])[:4])
    return sum(top.values()), big


def variant(kind: str, paths: dict, K: int, work: Path, against: Path | None = None) -> dict:
    """One run of ``kind``; ``before``: the ``fast`` run of the checkout ``against``."""
    main = [sys.executable, "main.py"]
    if kind == "help":
        wall, cpu, _ = run(main + ["--help"], dict(os.environ))
        return {"variant": kind, "wall_s": wall, "cpu_s": cpu, "load": os.getloadavg()[0]}
    common.evict(paths.values())
    cache = Path(tempfile.mkdtemp(prefix="bench-cost-cache-", dir=work))  # a cold digest cache
    env = {**os.environ, "TRACING_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    save = cache / "r.p"
    args = ["--base_model_id", str(paths["base"]), "--ft_model_id", str(paths["ft"]), "--stat", "cos",
            "--rows", str(K), "--quiet", "--save", str(save)]
    args += ["--digest", "full"] if kind == "full" else []
    pre = [sys.executable, "-X", "importtime", "main.py"] if kind == "imports" else main
    load0 = os.getloadavg()[0]
    wall, cpu, proc = run(pre + args, env, against if kind == "before" else common.ROOT)
    rec = pickle.loads(save.read_bytes())
    shutil.rmtree(cache, ignore_errors=True)
    out = {"variant": kind, "wall_s": wall, "cpu_s": cpu, "load": load0, "log10_pvalue": rec["log10_pvalue"],
           "timings": rec["timings"], "time": rec["time"]}
    if kind == "imports":
        out["imports_s"], out["largest_imports"] = import_seconds(proc.stderr)
    return out


def table(recs: list[dict], L: int, K: int) -> str:
    by = {}
    for r in recs:
        by.setdefault(r["variant"], []).append(r)
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in by.items()}
    rows = []
    for k in ("fast", "before", "full", "help", "imports"):
        if k not in by:
            continue
        v = by[k]
        t = v[0].get("timings", {})
        stages = ", ".join(f"{s} {statistics.median(r['timings'].get(s, 0) for r in v):.2f}"
                           for s in ("load", "digest", "read", "statistic") if s in t)
        extra = f"{statistics.median(r['imports_s'] for r in v):.2f}" if k == "imports" else "—"
        ratio = common.fmt_ratio(med[k], med["fast"]) if k in ("fast", "before", "full") and "fast" in med else "—"
        p = f"{v[0]['log10_pvalue']:.6g}" if "log10_pvalue" in v[0] else "—"
        cpu = [r["cpu_s"] for r in v if "cpu_s" in r]
        rows.append([k, len(v), f"{med[k]:.2f}", f"{min(r['wall_s'] for r in v):.2f}",
                     f"{statistics.median(cpu):.2f}" if cpu else "—", ratio, stages or "—", extra,
                     f"{statistics.median(r.get('load', 0) for r in v):.1f}", p])
    return (f"{L} blocks, K = {K}:\n\n"
            + common.markdown_table(["variant", "runs", "wall s (median)", "wall s (min)", "CPU s (median)", "× fast",
                                     "record timings s (median)", "imports s", "load avg", "log10 p"], rows))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-full", dest="full", action="store_false", help="skip the --digest full baseline")
    ap.add_argument("--against", type=Path, help="another checkout of the toolkit: its `fast` run (variant "
                    "`before`) alternates with this one's, for the ratio of a change in one run")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    ap.add_argument("--out", type=Path, default=common.ROOT / "bench" / "results")
    a = ap.parse_args(argv)
    t0 = time.time()
    paths = write_sparse_pair(a.workdir / f"cost-sparse-L{a.blocks}-K{a.rows}", a.blocks, a.rows)
    print(f"sparse pair ready in {time.time() - t0:.0f} s: {paths}", file=sys.stderr, flush=True)
    recs = []
    kinds = ["help", "fast"] + (["before"] if a.against else []) + ["imports"] + (["full"] if a.full else [])
    for rep in range(a.reps):
        for kind in kinds:
            r = variant(kind, paths, a.rows, a.workdir, a.against)
            recs.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    header = f"bench_cost — {common.machine_line()}"
    text = table(recs, a.blocks, a.rows)
    print(f"\n{header}\n\n{text}")
    common.save_results(a.out, "bench_cost", recs, f"{header}\n\n{text}")


if __name__ == "__main__":
    main()
