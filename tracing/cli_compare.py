"""Compare one pair of models (``python main.py`` / ``model-tracing compare``)::

    python main.py --base_model_id A --ft_model_id B --stat cos --save results/x.p
"""
import argparse

from tracing.cli_util import leave, run_cli
from tracing.options import add_options


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python main.py", description="Test whether the fine-tuned model was derived from the base model "
                                            "(statistics and their nulls: docs/methods.md).")
    p.add_argument("--base_model_id", required=True, help="hub id[@revision], local folder, or demo:<name>")
    p.add_argument("--ft_model_id", required=True, help="hub id[@revision], local folder, or demo:<name>")
    p.add_argument("--save", default=None,
                   help="result pickle (other statistics get _<stat> appended) or a folder/ (default: not saved)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--attest", default=None, metavar="FILE",
                   help="also write a signed in-toto statement of the result (other statistics get _<stat> "
                        "appended; needs --key; python -m tracing.verify checks it)")
    p.add_argument("--key", default=None, help="EC P-256 private key (PEM) that signs --attest")
    p.add_argument("--download", action="store_true",
                   help="download hub models whole (every weight file holding a tensor the test reads; a wrapper's "
                        "vision-only shards are left out) even for a sampled test (--rows), which otherwise reads only "
                        "the sampled rows of a model not in the local cache by HTTP range requests")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="print the bytes each model will cost (range reads, download, or none when local) and stop; "
                        "reads hub models' config files and weight headers only")
    p.add_argument("--digest", choices=("fast", "full"), default=None,
                   help="how the record identifies local weight files: full = SHA-256 of every file (default of a "
                        "full test, and with --attest); fast = size, modification time and a SHA-256 of each file's "
                        "header (default with --rows: the test then reads only its rows)")
    add_options(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    from tracing.api import run_pair, summary
    from tracing.options import options_from_args
    from tracing.provenance import scrub
    options = options_from_args(args)
    if args.dry_run:
        from tracing.sources.cost import dry_run_lines
        for line in dry_run_lines(args.base_model_id, args.ft_model_id, options, download=args.download):
            print(scrub(line))
        return 0
    attest_to = _attest_paths(args, options)
    digest = "full" if attest_to else args.digest  # a statement names the weights by their SHA-256
    records = run_pair(args.base_model_id, args.ft_model_id, options, save=args.save, progress=not args.quiet,
                       download=args.download, digest=digest)
    for rec in records:
        print(scrub(summary(rec)))
        if rec["args"].get("save"):
            print(scrub(f"  saved {rec['args']['save']}"))
        if rec["stat"] in attest_to:
            from tracing.evidence.make import attest
            attest(rec, args.key, attest_to[rec["stat"]])
            print(scrub(f"  attested {attest_to[rec['stat']]}"))
    return 0


def _attest_paths(args, options) -> dict:
    """``{stat: statement path}`` for --attest, the key checked before any work."""
    if args.attest is None and args.key is None:
        return {}
    from tracing.errors import TracingError
    if args.attest is None or args.key is None:
        raise TracingError("--attest FILE and --key PRIVATE.pem go together; give both or neither")
    from tracing.api import save_paths
    from tracing.evidence.statement import load_signer
    from tracing.fileio import check_writable
    load_signer(args.key)
    paths = save_paths(args.attest, options.stat)
    for p in paths.values():
        check_writable(p)
    return paths


if __name__ == "__main__":
    leave(run_cli(main, quick_start=True))
