"""``python -m tracing.report results/<run> [--out DIR] [--lineage FILE] [--significance 0.01] [--correction holm|bh] [--merges]``"""
from __future__ import annotations

import argparse
import sys

from ..cli_util import run_cli
from .table import CORRECTIONS
from .write import write_report


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m tracing.report",
                                description="Summarise a results folder: summary.csv, figures and report.md.")
    p.add_argument("folder", help="the results folder (e.g. results/<run>)")
    p.add_argument("--out", default=None, help="where to write (default: the results folder)")
    p.add_argument("--lineage", default=None,
                   help="JSON/YAML lineage file ({'models': {name: {'parent': ...}}}); automatic for demo:* models")
    p.add_argument("--significance", type=float, default=None,
                   help="level of the verdicts (default: the runs' --significance, else 0.01)")
    p.add_argument("--correction", choices=sorted(CORRECTIONS), default="holm",
                   help="multiple-testing correction within each grid: holm (family-wise) or bh (false discovery rate)")
    p.add_argument("--merges", action="store_true",
                   help="attribute merges in the lineage section (reads the models' weights)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    path = write_report(args.folder, out=args.out, lineage=args.lineage, significance=args.significance,
                        correction=args.correction, merges=args.merges)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
