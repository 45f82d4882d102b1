"""The reference index at 7B shape: building one entry, and screening a candidate against 1,000.

    python -m bench.bench_index                     # build + screen against 10 and 1,000 references
    python -m bench.bench_index --refs 10,1000 --no-build

Variants, each in its own process:

- ``build``: ``python -m tracing.index``'s job for one reference, on a bf16 Llama-2-7B-shaped
  checkpoint (d = 4096, h = 11008, L = 32, V = 32000) holding the embedding and the up_proj of the 8
  indexed blocks (the other tensors are never read by the index, so they are left out to spare
  disk), its file dropped from the page cache first. ``bytes read`` is the process's storage reads
  (``/proc/self/io``); the weight file's SHA-256 is computed beforehand into a shared hash cache
  (on the hub the recorded hash is used). Reports the entry's size on disk.
- ``screen-N``: ``tracing.index.screen`` of a 7B-shaped candidate against an index of N synthetic
  7B-shaped references (defaults: K = 128, 8 blocks), one of them the candidate's relative. The
  references' entries are written by the index's own writer from random rows; the screen reads only
  ``sketch.safetensors`` and ``entry.json`` of each, so the synthetic entries' ``rows.safetensors``
  keeps only the embedding columns (the 8 MiB of up rows per reference are left out: 8 GB for 1,000).
  The candidate is an in-memory source (reading its 8 × 128 rows is the build cost above). Warm
  page cache (an index screened daily stays cached). The cost per reference is
  (t(1,000) − t(10)) / 990, both measured in this run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench import common  # noqa: E402

SHAPE = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, vocab_size=32000,
             num_attention_heads=32, num_key_value_heads=32)
RELATIVE = 7  # the reference the candidate descends from
BLOCKS = (0, 4, 9, 13, 18, 22, 27, 31)  # block_subset(32, 8)


class Synthetic:
    """Random 7B-shaped rows (bf16 values) from a seed; ``relative_of``: the rows of that seed plus 10% noise."""

    def __init__(self, seed: int, relative_of: int | None = None):
        from tracing.arch import arch_from_config
        self.arch, self.seed, self.parent, self.label = arch_from_config(SHAPE), seed, relative_of, f"synthetic-{seed}"

    def _draw(self, name: str, n: int, width: int, seed: int):
        import torch
        g = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, name)))
        return 0.02 * torch.randn(n, width, generator=g)

    def _rows(self, name, n, width):
        import torch
        if self.parent is None:
            return self._draw(name, n, width, self.seed).to(torch.bfloat16).float()
        base = self._draw(name, n, width, self.parent)
        return (base + 0.1 * base.std() * self._draw(name, n, width, self.seed)).to(torch.bfloat16).float()

    def get_rows(self, name, index, dtype=None):
        return self._rows(name, len(index), self.arch.d)


def drawn_features(i: int, s) -> dict:
    """An independent reference's entry tensors drawn directly: unit sketch rows (what projecting
    independent Gaussian rows gives) and the sampled embedding columns; no up rows."""
    import torch
    from tracing.index.entry import sketch
    from tracing.index.layout import projection
    g = torch.Generator().manual_seed(1_000_003 * i + 17)
    out = {f"sketch.{b}": sketch(torch.randn(s.rows, s.sketch, generator=g), None) for b in BLOCKS}
    emb = (0.02 * torch.randn(s.emb_tokens, s.rows, generator=g)).to(torch.bfloat16)
    P = projection(s.emb_tokens, s)
    out["emb"], out["sketch.emb"] = emb, sketch((emb.float() - emb.float().mean(0)).T, P).contiguous()
    return out


def make_index(root: Path, n: int) -> Path:
    """N synthetic references written by the index's writer (kept between runs)."""
    from tracing.index.entry import features, shape_of, write_entry
    from tracing.index.layout import Settings, open_or_create
    s = Settings()
    idx = root / f"index-{n}"
    open_or_create(idx, s)
    for i in range(n):
        key = f"ref{i:04d}"
        if (idx / "entries" / key / "entry.json").is_file():
            continue
        src = Synthetic(i)
        if i == RELATIVE:
            feats = {k: v for k, v in features(src, s).items() if not k.startswith("up.")}
        else:
            feats = drawn_features(i, s)
        meta = {"model": f"synthetic/ref{i:04d}", "family": "synthetic", "shape": shape_of(src.arch),
                "weight_files": [], "commit": None}
        write_entry(idx, key, meta, feats, s)
    return idx


def screen_child(a) -> dict:
    from tracing.index import screen
    cand = Synthetic(10_000, relative_of=RELATIVE)
    screen(cand, a.index)  # imports and first touch of the files, outside the timed region
    with common.Timer() as t:
        lines = screen(cand, a.index)
    dep = [x.reference for x in lines if x.verdict.startswith("dependent")]
    return {**t.fields(), "refs": len(lines), "dependent": dep,
            "not_significant": sum(x.verdict == "not significant" for x in lines),
            "cannot": sum(x.verdict == "cannot rule out" for x in lines)}


def write_checkpoint(root: Path) -> Path:
    """A bf16 7B-shaped checkpoint holding the tensors the index reads."""
    import torch
    from safetensors.torch import save_file

    from tracing.index.layout import Settings, block_subset
    folder = root / "ckpt-7b-index-tensors"
    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    tensors = {"model.embed_tokens.weight": (0.02 * torch.randn(32000, 4096, generator=g)).to(torch.bfloat16)}
    for b in block_subset(32, Settings().blocks):
        tensors[f"model.layers.{b}.mlp.up_proj.weight"] = (0.02 * torch.randn(11008, 4096, generator=g)).to(torch.bfloat16)
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = common.llama_config(4096, 11008, 32, 32000, 32)
    cfg.save_pretrained(folder)
    return folder


def build_child(a) -> dict:
    from tracing.index.build import build_entry
    from tracing.index.layout import Settings, open_or_create
    s = Settings()
    out = Path(a.workdir) / "build-index"
    open_or_create(out, s)
    io0 = common.io_read_bytes()
    with common.Timer() as t:
        o = build_entry(str(a.ckpt), "synthetic", out, s)
    entry = out / "entries" / Path(a.ckpt).name
    return {**t.fields(), "status": o.status, "values_read": o.bytes_read, "bytes_read": common.io_read_bytes() - io0,
            "entry_bytes": sum(p.stat().st_size for p in entry.iterdir())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default=None)
    p.add_argument("--index", default=None)
    p.add_argument("--ckpt", default=None)
    p.add_argument("--refs", default="10,1000")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR / "index")
    p.add_argument("--cleanup", action="store_true", help="delete the synthetic checkpoint and indexes at the end")
    a = p.parse_args()
    if a.variant == "screen":
        return common.emit(screen_child(a))
    if a.variant == "build":
        return common.emit(build_child(a))
    a.workdir.mkdir(parents=True, exist_ok=True)
    log = open(common.log_path(common.DEFAULT_WORKDIR, "bench_index"), "a")
    records = []
    if not a.no_build:
        import shutil
        ckpt = write_checkpoint(a.workdir)
        cache = a.workdir / "hash-cache"
        os.environ["TRACING_CACHE_DIR"] = str(cache)
        from tracing.models import Checkpoint
        Checkpoint(str(ckpt)).provenance()
        shutil.rmtree(a.workdir / "build-index", ignore_errors=True)
        common.evict([ckpt / "model.safetensors"])
        rec = common.run_child(__file__, ["--variant", "build", "--ckpt", str(ckpt), "--workdir", str(a.workdir)],
                               log=log, hash_cache=cache)
        records.append({"variant": "build", **rec})
    for n in [int(x) for x in a.refs.split(",")]:
        t0 = time.time()
        idx = make_index(a.workdir, n)
        print(f"index of {n} synthetic references ready in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        rec = common.run_child(__file__, ["--variant", "screen", "--index", str(idx)], log=log)
        records.append({"variant": f"screen-{n}", "n": n, **rec})
    table = make_table(records)
    print(table)
    common.save_results(common.ROOT / "bench" / "results", "bench_index", records, common.machine_line() + "\n\n" + table)
    if a.cleanup:
        import shutil
        shutil.rmtree(a.workdir, ignore_errors=True)


def make_table(records: list[dict]) -> str:
    rows = []
    screens = {r["n"]: r for r in records if r["variant"].startswith("screen") and "error" not in r}
    per_ref = None
    if len(screens) >= 2:
        lo, hi = min(screens), max(screens)
        per_ref = (screens[hi]["wall_s"] - screens[lo]["wall_s"]) / (hi - lo)
    for r in records:
        if "error" in r:
            rows.append([r["variant"], "failed: " + r["error"].splitlines()[-1][:80]] + [""] * 6)
        elif r["variant"] == "build":
            rows.append(["build one 7B entry", common.fmt_s(r["wall_s"]), common.fmt_s(r["cpu_s"]),
                         f"{r['load_start']:.1f}/{r['load_end']:.1f}", f"{r['bytes_read'] / 2**20:.1f} MiB read "
                         f"({r['values_read'] / 2**20:.1f} MiB of values)", f"entry {r['entry_bytes'] / 2**20:.2f} MiB",
                         "", ""])
        else:
            rows.append([f"screen against {r['n']}", common.fmt_s(r["wall_s"]), common.fmt_s(r["cpu_s"]),
                         f"{r['load_start']:.1f}/{r['load_end']:.1f}", "", "",
                         f"{per_ref * 1000:.2f} ms" if per_ref is not None and r["n"] == max(screens) else "",
                         f"{', '.join(r['dependent']) or 'none'}; {r['not_significant']} not significant"])
    return common.markdown_table(["variant", "wall s", "CPU s", "load avg start/end", "read", "size",
                                  "per reference", "dependent after Holm; others"], rows)


if __name__ == "__main__":
    main()
