"""Check a statement: ``python -m tracing.verify statement.json --key PUBLIC.pem [--base A --ft B]``.

Checks the signature, the subjects' root digests against the models (given, or resolved from the
statement's names), and recomputes the statistic with the recorded options and seed, comparing
every recorded value bit for bit. Exit 0: verified; 1: not verified (each failed check on one
line: the signature, the digest of which model, which value); 2: bad input.
"""
from __future__ import annotations

import argparse
import sys

from .cli_util import run_cli


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m tracing.verify", description=__doc__.splitlines()[0])
    p.add_argument("statement", help="a statement written by python -m tracing.attest")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--key", help="the signer's EC P-256 public key, PEM")
    g.add_argument("--identity", help="for a Sigstore bundle (attest --sigstore): the signer's identity "
                                      "(e-mail or workflow URI); needs network access: it cannot work offline")
    p.add_argument("--issuer", default=None, help="with --identity: the OIDC issuer that must have vouched for it")
    p.add_argument("--base", default=None, help="the base model (folder, file, hub id); default: from the statement")
    p.add_argument("--ft", default=None, help="the derived model; default: from the statement")
    p.add_argument("--no-recompute", action="store_true", dest="no_recompute",
                   help="check the signature and digests only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from .evidence.check import NotVerified, verify
    from .provenance import scrub
    try:
        stmt, fails = verify(args.statement, args.key, args.base, args.ft, not args.no_recompute,
                             identity=args.identity, issuer=args.issuer)
    except NotVerified as e:
        print(f"not verified: {e}")
        return 1
    if fails:
        for f in fails:
            print(scrub(f"not verified: {f}"))
        return 1
    pred = stmt["predicate"]
    what = "signature, digests" + ("" if args.no_recompute else f", {len(pred['values'])} values recomputed bit for bit")
    print(f"verified ({what}): {pred['statistic']['name']} "
          + " vs ".join(s["name"] for s in stmt["subject"])
          + f"; verdict {(pred.get('result') or {}).get('verdict')} at {(pred.get('result') or {}).get('level')}"
          + _hashed_at_attest(stmt))
    return 0


def _hashed_at_attest(stmt: dict) -> str:
    """The weight files whose digests the signer computed when attesting, not when running the test
    (the record named them by their fast identity, checked unchanged before hashing)."""
    late = [f"{s['annotations'].get('role')} {name}" for s in stmt["subject"]
            for name in s["annotations"].get("computed_at_attest") or []]
    return f"; weight files the run named by their fast identity, hashed at attest time: {', '.join(late)}" if late else ""


if __name__ == "__main__":
    sys.exit(run_cli(main))
