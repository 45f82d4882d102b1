"""python -m tracing.index: build and look after a reference index.

    python -m tracing.index build LIST.yaml --rows 128 --out DIR     one job per reference (local workers or Slurm),
                                                                     sized from its config (--dry-run prints the jobs)
    python -m tracing.index add MODEL [MODEL ...] --out DIR [--family F]
    python -m tracing.index remove MODEL [MODEL ...] --out DIR
    python -m tracing.index list DIR
    python -m tracing.index verify DIR                                  every file against its SHA-256
    python -m tracing.index merge OTHER --out DIR                       same settings only

A rerun of ``build`` skips references already indexed for the same weight files and retries those
that failed. Screen a model against the index with ``python -m tracing.scan MODEL --index DIR``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from ..provenance import scrub
from .layout import Settings


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m tracing.index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = Settings()
    for name in ("build", "add"):
        q = sub.add_parser(name)
        q.add_argument("models", nargs="+" if name == "add" else 1,
                       help="YAML reference list" if name == "build" else "hub id[@revision] or folder")
        q.add_argument("--out", required=True, help="the index folder")
        q.add_argument("--rows", type=int, default=None, help=f"K sampled rows per block (default {d.rows})")
        q.add_argument("--blocks", type=int, default=None, help=f"blocks per model (default {d.blocks})")
        q.add_argument("--seed", type=int, default=None, help=f"seed of the row draw (default {d.seed})")
        q.add_argument("--family", default=None, help="family name recorded with the references (add)")
        q.add_argument("--cluster", default="auto", choices=("auto", "slurm", "local"))
        q.add_argument("--partition", default=None, help="Slurm partition")
        q.add_argument("--workers", type=int, default=1, help="local worker processes (0: in this process)")
        q.add_argument("--dry-run", action="store_true", dest="dry_run",
                       help="print each reference's job (memory, time limit, sized from which config) and stop")
    for name in ("remove",):
        q = sub.add_parser(name)
        q.add_argument("models", nargs="+")
        q.add_argument("--out", required=True)
    for name in ("list", "verify"):
        sub.add_parser(name).add_argument("index")
    q = sub.add_parser("merge")
    q.add_argument("other", help="an index of the same settings")
    q.add_argument("--out", required=True)
    return p.parse_args(argv)


def _settings(args) -> Settings:
    """The settings asked for; an existing index's own when none is given."""
    from .layout import MANIFEST, read_manifest
    given = {k: getattr(args, k) for k in ("rows", "blocks", "seed") if getattr(args, k) is not None}
    base = read_manifest(Path(args.out)) if (Path(args.out) / MANIFEST).is_file() else Settings()
    return Settings(**{**asdict(base), **given})


def _build(args) -> int:
    from ..references import read_references
    from .build import build
    refs = read_references(args.models[0]) if args.command == "build" else [(m, args.family) for m in args.models]
    s = _settings(args)
    if args.dry_run:
        from .build import plan
        for (spec, _), (res, note) in zip(refs, plan(refs, s, args.partition)):
            print(scrub(f"{spec}: {res.mem_gb} GB, {res.cpus} CPU, {res.timeout_min} min ({note})"))
        return 0

    def done(o):
        extra = f": {o['error']}" if o["error"] else (f" ({o['bytes_read'] / 2**20:.1f} MiB read, {o['seconds']:.1f} s)"
                                                     if o["status"] == "built" else "")
        print(scrub(f"{o['status']:8} {o['model']}{extra}"), flush=True)

    out = build(refs, args.out, s, cluster=args.cluster, workers=args.workers, on_done=done, partition=args.partition)
    failed = [o for o in out if o["status"] == "failed"]
    print(f"{len(out) - len(failed)} of {len(out)} references indexed in {args.out} (K = {s.rows}, {s.blocks} blocks, "
          f"seed {s.seed})" + (f"; {len(failed)} failed: rerun the same command to retry them" if failed else ""))
    return 1 if failed else 0


def main(argv=None) -> int:
    from . import store
    args = parse(argv)
    if args.command in ("build", "add"):
        return _build(args)
    if args.command == "remove":
        for key in store.remove(Path(args.out), args.models):
            print(f"removed {key}")
        return 0
    if args.command == "merge":
        copied, skipped = store.merge(Path(args.other), Path(args.out))
        print(f"merged {len(copied)} entries into {args.out} ({len(skipped)} already there)")
        return 0
    root = Path(args.index)
    good, bad = store.verify(root) if args.command == "verify" else store.entries(root)
    for e in good:
        sh = e.shape
        print(scrub(f"{e.meta['model']}  family={e.meta.get('family') or ''}  commit={e.meta.get('commit') or 'local'}  "
                    f"{sh['model_type']} d={sh['d']} h={sh['h']} L={sh['L']}  blocks={len(e.meta['blocks'])}"))
    for key, why in bad:
        print(scrub(f"damaged: {why}"))
    for model, why in store.failures(root).items():
        print(scrub(f"failed:  {model}: {why} (retried by the next build)"))
    print(f"{len(good)} good entries, {len(bad)} damaged")
    return 1 if bad else 0


if __name__ == "__main__":
    from ..cli_util import run_cli
    sys.exit(run_cli(main))
