#!/usr/bin/env python
"""Compare one pair of models: python main.py --base_model_id A --ft_model_id B --stat cos --save results/x.p"""
import argparse
import sys

from tracing.cli_util import run_cli
from tracing.options import add_options


def parse(argv=None):
    p = argparse.ArgumentParser(description="Test whether the fine-tuned model was derived from the base model "
                                            "(statistics and their nulls: docs/methods.md).")
    p.add_argument("--base_model_id", required=True, help="hub id[@revision], local folder, or demo:<name>")
    p.add_argument("--ft_model_id", required=True, help="hub id[@revision], local folder, or demo:<name>")
    p.add_argument("--save", default=None,
                   help="result pickle (other statistics get _<stat> appended) or a folder/ (default: not saved)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_options(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    from tracing.api import run_pair, summary
    from tracing.options import options_from_args
    from tracing.results import scrub
    options = options_from_args(args)
    records = run_pair(args.base_model_id, args.ft_model_id, options, save=args.save, progress=not args.quiet)
    for rec in records:
        print(scrub(summary(rec)))
        if rec["args"].get("save"):
            print(scrub(f"  saved {rec['args']['save']}"))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
