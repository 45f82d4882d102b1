"""The demo family's build: wall time, CPU time, and a digest of every built file.

    python -m bench.bench_demo_build                                   # this checkout, 2 workers
    python -m bench.bench_demo_build --src old=/tmp/old-checkout --src new=.   # two versions, one run
    python -m bench.bench_demo_build --workers 1,2

Each variant builds the family from scratch into its own temporary ``$TRACING_DEMO_DIR`` in its own
process (the code imported from ``--src``). CPU time counts the builder and its training workers; on
a machine shared with other work, wall time grows with the load while CPU time mostly does not, so
both are reported with the load average. The digest covers every built file except
``lineage.json`` (which records timings): equal digests mean bit-identical models, tokenizer and
corpus.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

from bench.common import (DEFAULT_WORKDIR, ROOT, Timer, emit, fmt_ratio, fmt_s, log_path, machine_line,  # noqa: E402
                    markdown_table, run_child, save_results)

NAME = "bench_demo_build"


def tree_digest(root: Path) -> str:
    """SHA-256 over every file's relative path and bytes, ``lineage.json`` (timings) and the builders' lock left out."""
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("lineage.json", ".lock")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def child(src: str, workers: int) -> None:
    sys.path.insert(0, src)  # the checkout being measured (--src): its tracing package, not this one's
    os.environ["TRACING_DEMO_WORKERS"] = str(workers)
    from tracing.demo.build import ensure_built
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        root = Path(tmp) / "demo"
        with Timer() as t:
            ensure_built(root, progress=False)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        info = json.loads((root / "lineage.json").read_text())
        emit({**t.fields(), "cpu_all_s": t.cpu + kids.ru_utime + kids.ru_stime, "digest": tree_digest(root),
              "build_seconds": info.get("build_seconds"), "workers": info.get("workers"),
              "train_s": {n: m["train_seconds"] for n, m in info["models"].items()}})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", action="append", default=None,
                   help="NAME=PATH of a checkout to build with (repeatable; default: this one)")
    p.add_argument("--workers", default="2", help="training processes, comma-separated variants (default: 2)")
    p.add_argument("--reference", default=None, help="a built family to compare digests with (e.g. the cache)")
    p.add_argument("--variant", nargs=2, metavar=("SRC", "WORKERS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.variant:
        return child(a.variant[0], int(a.variant[1]))
    srcs = [s.split("=", 1) if "=" in s else (s, s) for s in (a.src or [f"this={ROOT}"])]
    ref = tree_digest(Path(a.reference).expanduser()) if a.reference else None
    records, rows = [], []
    with open(log_path(DEFAULT_WORKDIR, NAME), "a") as log:
        for name, path in srcs:
            for w in (int(x) for x in a.workers.split(",")):
                rec = run_child(__file__, ["--variant", str(Path(path).resolve()), str(w)], log=log)
                rec.update(src=name, workers_asked=w)
                records.append(rec)
    base = records[0]
    for r in records:
        if "error" in r:
            rows.append([r["src"], r["workers_asked"], "error", r["error"][:80], "", "", "", ""])
            continue
        same = "—" if ref is None else ("yes" if r["digest"] == ref else "NO")
        rows.append([r["src"], r["workers_asked"], fmt_s(r["wall_s"]), fmt_s(r["cpu_all_s"]),
                     fmt_ratio(r["wall_s"], base.get("wall_s")), f"{r['load_start']:.1f}–{r['load_end']:.1f}",
                     r["digest"][:12] + (" (= first)" if r["digest"] == base.get("digest") else ""), same])
    table = (f"{machine_line()}\n\n" + markdown_table(
        ["code", "workers", "wall s", "CPU s", "wall / first", "load avg", "digest", "= reference"], rows))
    print(table)
    save_results(HERE / "results", NAME, records, table)


if __name__ == "__main__":
    main()
