"""``python -m tracing.demo build [DIR] | list [--root DIR] | path NAME [--root DIR]``"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from ..cli_util import text_table
from ..errors import TracingError
from .build import ensure_built
from .paths import _root, is_built
from .recipes import ENV_DIR, MODEL_NAMES, RECIPES, SLICE_FILES, _name, root_of



class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _fmt_loss(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _table(root: pathlib.Path, info: dict | None) -> str:
    rows = [("name", "parent", "root", "data", "steps", "eval loss", "path")]
    for name in MODEL_NAMES:
        r = RECIPES[name]
        rec = (info or {}).get("models", {}).get(name, {})
        rows.append((name, r.parent or "-", root_of(name), r.data, str(rec.get("steps", r.steps)),
                     _fmt_loss(rec.get("final_eval_loss")), str(root / name)))
    return text_table(rows)


def main(argv=None) -> int:
    parser = _Parser(prog="python -m tracing.demo", description="The offline demo model family (demo:<name>).")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    p = sub.add_parser("build", help="build the demo models (if not built) and show them")
    p.add_argument("dir", nargs="?", help=f"where to build (default: ${ENV_DIR} or the user cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("list", help="names, parents, roots and paths (does not build)")
    p.add_argument("--root", help="demo family directory (default: the cache)")
    p = sub.add_parser("path", help="print the folder of one demo model (builds if needed)")
    p.add_argument("name", help="a demo model name, e.g. base-a or demo:base-a")
    p.add_argument("--root", help="demo family directory (default: the cache)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            root = ensure_built(args.dir, progress=not args.quiet)
            info = json.loads((root / "lineage.json").read_text(encoding="utf-8"))
            print(_table(root, info))
            print(f"eval text: {root / 'corpus' / SLICE_FILES['eval']}  "
                  f"(ln V = {info['ln_vocab']:.3f}; built in {info['build_seconds']} s)")
        elif args.cmd == "list":
            root = _root(args.root)
            built = is_built(root)
            info = json.loads((root / "lineage.json").read_text(encoding="utf-8")) if built else None
            print(_table(root, info))
            print(f"{root}: {'built' if built else 'not built yet (python -m tracing.demo build)'}")
        elif args.cmd == "path":
            name = _name(args.name)
            print(ensure_built(args.root) / name)
    except TracingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
