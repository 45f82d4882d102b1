"""Shared pieces of the benchmarks: peak-memory probes, one-process-per-variant driver, tables,
and synthetic Llama checkpoints written with ``safetensors.torch.save_file``.

Every variant runs in its own Python process (a process's peak RSS never goes down), started by
the driver as ``python -m bench.<script> --variant ...`` from the repository root; the child prints one JSON line prefixed
with ``BENCH_JSON`` and the driver collects the lines into a markdown table.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TAG = "BENCH_JSON "
DEFAULT_WORKDIR = Path(os.environ.get("BENCH_WORKDIR", "/tmp/model-tracing-bench"))
GB = 1 << 30


# ------------------------------------------------------------------------------------------
# memory and time
# ------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_bytes() -> int:
    """Peak resident set (anonymous and file-backed pages) as ``ru_maxrss`` (KiB on Linux).  Beware:
    after fork + exec it can carry the parent's peak; :func:`vm_hwm_bytes` is this program's own."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def vm_hwm_bytes() -> int:
    """High-water mark of this process's resident set (``VmHWM``, reset at exec): the figure the
    tables report as peak RSS."""
    return _status_kb("VmHWM") * 1024


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def io_read_bytes() -> int:
    """Bytes this process has read from storage so far (``read_bytes`` of ``/proc/self/io``; -1
    where there is none): the page cache's hits are not counted."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def loadavg() -> float:
    return os.getloadavg()[0]


class Timer:
    """Wall time, CPU time of this process, and the 1-minute load average at start and end."""

    def __enter__(self):
        self.t0, self.c0, self.load0 = time.perf_counter(), cpu_seconds(), loadavg()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = cpu_seconds() - self.c0
        self.load1 = loadavg()
        return False

    def fields(self) -> dict:
        return {"wall_s": self.wall, "cpu_s": self.cpu, "load_start": self.load0, "load_end": self.load1}


def emit(record: dict) -> None:
    """Print the child's result line (with this process's peak memory)."""
    record = dict(record)
    record.setdefault("peak_rss", vm_hwm_bytes())
    record.setdefault("ru_maxrss", peak_rss_bytes())
    print(TAG + json.dumps(record), flush=True)


def evict(paths) -> None:
    """Drop files' pages from the page cache (clean pages; no root needed), so that every variant starts
    cold and ``bytes read`` is what it really reads. ``paths``: files, or folders (their ``.safetensors``
    files; a prefix view's shards are links, and the target is evicted)."""
    for path in map(Path, paths):
        for f in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------
def module_name(script: str | Path) -> str:
    """``python -m bench.bench_cos`` -> ``bench.bench_cos``: benchmarks run as modules from the repository root
    (``python -m bench.bench_cos``), so ``tracing`` and ``bench`` import without editing ``sys.path``."""
    return f"bench.{Path(script).stem}"


def run_child(script: str | Path, args: list[str], log=None, timeout: float | None = None,
              hash_cache: Path | None = None) -> dict:
    """Run ``python script args`` in a fresh process; return its ``BENCH_JSON`` record.
    ``hash_cache``: a SHA-256 cache shared by the children (weight files hashed once, beforehand)."""
    import tempfile
    cmd = [sys.executable, "-m", module_name(script), *args]
    print("  $ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    # by default a fresh, private SHA-256 cache per child: every run hashes its local weight files for
    # the result's provenance, as a first run on a local folder does (and the user's cache is untouched)
    with tempfile.TemporaryDirectory(prefix="bench-hash-cache-") as cache:
        env = {**os.environ, "TRACING_CACHE_DIR": str(hash_cache or cache)}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        elapsed = time.perf_counter() - t0
    records = [json.loads(line[len(TAG):]) for line in proc.stdout.splitlines() if line.startswith(TAG)]
    if log is not None:
        log.write(proc.stdout)
        log.write(proc.stderr)
        log.flush()
    if proc.returncode != 0 or not records:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}", "process_s": elapsed, "args": args}
    rec = records[-1]
    rec["process_s"] = elapsed
    return rec


def fmt_gb(b) -> str:
    return "—" if b is None else f"{b / GB:.2f}"


def fmt_s(s) -> str:
    if s is None:
        return "—"
    return f"{s:.2f}" if s < 10 else f"{s:.1f}" if s < 100 else f"{s:.0f}"


def fmt_ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "—"
    return f"{a / b:.2f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def machine_line() -> str:
    import torch
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cores = len(os.sched_getaffinity(0))
    return (f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {cores} cores, "
            f"{mem / GB:.0f} GiB RAM, CPU only, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def log_path(workdir: Path, name: str) -> Path:
    """Children's full stdout/stderr go to the work directory (not into the repository)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir / f"{name}.log"


def save_results(path: Path, name: str, records: list[dict], table: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / f"{name}.jsonl", "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    with open(path / f"{name}.md", "a") as f:
        f.write(f"\n<!-- {time.strftime('%Y-%m-%d %H:%M:%S')} -->\n{table}\n")


# ------------------------------------------------------------------------------------------
# synthetic checkpoints
# ------------------------------------------------------------------------------------------
def llama_config(d: int, h: int, L: int, V: int, heads: int, kv_heads: int | None = None, **kw):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=d, intermediate_size=h, num_hidden_layers=L, vocab_size=V,
                       num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       dtype="bfloat16", **kw)


def _block_shapes(cfg) -> dict[str, tuple[int, ...]]:
    d, h = cfg.hidden_size, cfg.intermediate_size
    hd = d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return {"self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d),
            "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, q),
            "mlp.gate_proj.weight": (h, d), "mlp.up_proj.weight": (h, d), "mlp.down_proj.weight": (d, h),
            "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,)}


def _shards(cfg) -> list[tuple[str, dict[str, tuple[int, ...]]]]:
    """(file name, {tensor: shape}) per shard: the embedding, one shard per block, the head."""
    d, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    total = L + 2
    out = [(f"model-00001-of-{total:05d}.safetensors", {"model.embed_tokens.weight": (V, d)})]
    for i in range(L):
        out.append((f"model-{i + 2:05d}-of-{total:05d}.safetensors",
                    {f"model.layers.{i}.{k}": s for k, s in _block_shapes(cfg).items()}))
    out.append((f"model-{total:05d}-of-{total:05d}.safetensors",
                {"model.norm.weight": (d,), "lm_head.weight": (V, d)}))
    return out


_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "num_attention_heads",
               "num_key_value_heads", "tie_word_embeddings")


def _shape_key(cfg: dict) -> dict:
    return {k: cfg.get(k) for k in _SHAPE_KEYS}


def write_family(root: Path, cfg, names=("base", "ft", "indep"), noise: float = 0.1, std: float = 0.02,
                 seed: int = 0, quiet: bool = False) -> dict[str, Path]:
    """Write bf16 checkpoints ``root/<name>``: ``base``; ``ft`` = base + noise·std·N(0,1) per weight
    (a fine-tune-like copy); ``indep`` drawn independently.  Reused when ``root`` already holds the
    same specification (``bench_spec.json``)."""
    import torch
    from safetensors.torch import save_file

    spec = {"shape": _shape_key(cfg.to_dict()), "names": list(names), "noise": noise, "std": std, "seed": seed}
    spec_file = root / "bench_spec.json"
    paths = {n: root / n for n in names}
    if spec_file.is_file() and all((p / "model.safetensors.index.json").is_file() for p in paths.values()):
        old = json.loads(spec_file.read_text())
        old = {"shape": _shape_key(old.get("config") or old.get("shape")),
               **{k: old.get(k) for k in ("names", "noise", "std", "seed")}}
        if old == spec:
            return paths
    if root.exists():
        shutil.rmtree(root)
    for p in paths.values():
        p.mkdir(parents=True)
        cfg.to_json_file(p / "config.json")
    shards = _shards(cfg)
    t0 = time.time()
    gens = {"base": torch.Generator().manual_seed(seed), "noise": torch.Generator().manual_seed(seed + 1),
            "indep": torch.Generator().manual_seed(seed + 2)}
    weight_maps = {n: {} for n in names}
    sizes = {n: 0 for n in names}
    for k, (fname, tensors) in enumerate(shards):
        out = {n: {} for n in names}
        for tname, shape in tensors.items():
            is_norm = len(shape) == 1

            def draw(g):
                x = torch.randn(shape, generator=g)
                return (1 + 0.1 * x) if is_norm else x.mul_(std)

            base = draw(gens["base"])
            for n in names:
                if n == "base":
                    t = base
                elif n == "ft":
                    t = base + (0.1 if is_norm else std) * noise * torch.randn(shape, generator=gens["noise"])
                else:
                    t = draw(gens["indep"])
                out[n][tname] = t.to(torch.bfloat16).contiguous()
            del base
        for n in names:
            save_file(out[n], str(paths[n] / fname), metadata={"format": "pt"})
            for tname, t in out[n].items():
                weight_maps[n][tname] = fname
                sizes[n] += t.numel() * t.element_size()
        del out
        if not quiet:
            print(f"  wrote shard {k + 1}/{len(shards)} of {len(names)} models ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    for n in names:
        (paths[n] / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": sizes[n]}, "weight_map": weight_maps[n]}, indent=1))
    spec_file.write_text(json.dumps(spec))
    return paths


def ensure_family(root: Path, cfg, names=("base", "ft", "indep"), noise: float = 0.1) -> dict[str, Path]:
    """:func:`write_family` run in a child process, so that the driver's own memory stays small
    (on Linux a child's ``ru_maxrss`` can inherit the parent's peak across fork + exec)."""
    paths = {n: root / n for n in names}
    args = json.dumps({"root": str(root), "config": cfg.to_dict(), "names": list(names), "noise": noise})
    proc = subprocess.run([sys.executable, "-m", module_name(__file__), "write-family", args], cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"writing the synthetic checkpoints under {root} failed")
    return paths


def _write_family_main(spec: str) -> None:
    from transformers import LlamaConfig
    d = json.loads(spec)
    cfg = LlamaConfig.from_dict(d["config"])
    write_family(Path(d["root"]), cfg, names=tuple(d["names"]), noise=d["noise"])


def prefix_view(src: Path, dst: Path, blocks: int) -> Path:
    """A checkpoint folder holding only the first ``blocks`` blocks of ``src`` (symlinked shards,
    trimmed config and index), so that every variant sees exactly the same tensors."""
    cfg = json.loads((src / "config.json").read_text())
    if blocks >= cfg["num_hidden_layers"]:
        return src
    return blocks_view(src, dst, list(range(blocks)))


def blocks_view(src: Path, dst: Path, blocks: list[int]) -> Path:
    """A checkpoint folder whose block j is block ``blocks[j]`` of ``src`` (pruned, reordered or
    repeated blocks): shards that keep their names are symlinked, renamed blocks are rewritten."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    cfg = json.loads((src / "config.json").read_text())
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    keep, renamed = {}, {}
    for name, fname in index.items():
        if not name.startswith("model.layers."):
            keep[name] = fname
            continue
        parts = name.split(".")
        for j in [j for j, i in enumerate(blocks) if i == int(parts[2])]:
            new = ".".join(parts[:2] + [str(j)] + parts[3:])
            if new == name:
                keep[new] = fname
            else:
                renamed.setdefault(j, []).append((name, new, fname))
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    cfg["num_hidden_layers"] = len(blocks)
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    for fname in sorted(set(keep.values())):
        os.symlink(src / fname, dst / fname)
    for j, items in renamed.items():
        out, fname = {}, f"block-{j:05d}.safetensors"
        for name, new, shard in items:
            with safe_open(str(src / shard), "pt") as f:
                out[new] = f.get_tensor(name)
            keep[new] = fname
        save_file(out, str(dst / fname), metadata={"format": "pt"})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": keep}, indent=1))
    return dst


#: bytes per value of the safetensors dtypes the sparse writers use
DTYPE_BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1}


def open_sparse(path: Path, tensors: dict[str, tuple[str, list[int]]], metadata: dict | None = None):
    """``(file, {key: offset of its data})``: a safetensors file of ``tensors`` (``{key: (dtype,
    shape)}``, stored in this order; ``metadata``: the header's ``__metadata__``, first) at its full
    size but all holes (no disk used, reads give zeros), open for writing the rows a benchmark reads;
    the caller closes it."""
    head, pos = {}, 0
    for key, (dtype, shape) in tensors.items():
        n = math.prod(shape) * DTYPE_BYTES[dtype]
        head[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    blob = json.dumps({"__metadata__": metadata, **head} if metadata else head, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    start = 8 + len(blob)
    f = open(path, "wb")
    f.write(len(blob).to_bytes(8, "little") + blob)
    f.truncate(start + pos)
    return f, {key: start + h["data_offsets"][0] for key, h in head.items()}


def write_index(folder: Path, weight_map: dict[str, str]) -> None:
    """``folder/model.safetensors.index.json``: which file holds each tensor (``weight_map``)."""
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


class RssSampler:
    """Samples this process's RSS in a thread (to see the shape of memory over a run)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.samples, self._stop = interval, [], threading.Event()

    def __enter__(self):
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._t0, rss_bytes()))
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "write-family":
        _write_family_main(sys.argv[2])
    else:
        raise SystemExit("usage: python bench/common.py write-family '<json spec>'")


def eval_shape_parser(doc: str, variants, samples: int):
    """The command line shared by the benchmarks on the synthetic 271M evaluation shape (``SHAPE`` of
    bench_eval): model shape, data size, which variants, where to work; ``--variant``/``--paths`` for
    the child process that measures one variant."""
    import argparse
    from bench.bench_eval import SHAPE
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=SHAPE["d"])
    ap.add_argument("--h", type=int, default=SHAPE["h"])
    ap.add_argument("--V", type=int, default=SHAPE["V"])
    ap.add_argument("--heads", type=int, default=SHAPE["heads"])
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--samples", type=int, default=samples)
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--variants", default=",".join(variants))
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--cleanup", action="store_true")
    ap.add_argument("--variant", choices=variants)
    ap.add_argument("--paths", type=Path, nargs="+")
    return ap


def ensure_eval_pair(a):
    """(folder, {"base", "ft": checkpoint}) of the evaluation shape named by parsed arguments ``a``."""
    root = a.workdir / f"eval-d{a.d}-h{a.h}-V{a.V}-L{a.blocks}"
    cfg = llama_config(d=a.d, h=a.h, V=a.V, heads=a.heads, L=a.blocks)
    return root, ensure_family(root, cfg, names=("base", "ft"))


def run_eval_variants(script, name: str, a, paths_of) -> list[dict]:
    """Every variant of ``a.variants`` in its own process, on the checkpoints ``paths_of(variant)``,
    with the data options of :func:`eval_shape_parser`; the records, in order."""
    records = []
    a.out.mkdir(parents=True, exist_ok=True)
    with open(log_path(a.workdir, name), "a") as log:
        for v in [v for v in a.variants.split(",") if v]:
            rec = run_child(script, ["--variant", v, "--samples", str(a.samples), "--block-size", str(a.block_size),
                                     "--batch", str(a.batch), "--paths", *map(str, paths_of(v))], log=log)
            rec.update(variant=v)
            records.append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
    return records
