"""Sign a result as evidence: ``python -m tracing.attest RESULT.p --key PRIVATE.pem --out statement.json``.

Writes a DSSE envelope whose payload is an in-toto Statement v1: the two models as subjects (root
digests as OpenSSF model signing defines them, plus every file's SHA-256) and the test's evidence as
the predicate (docs/methods.md, "Evidence"). The key is an EC P-256 private key in PEM
(``openssl ecparam -name prime256v1 -genkey -noout -out key.pem``). Pickles run code when loaded:
attest only results you computed yourself.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_util import run_cli
from .errors import TracingError


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m tracing.attest", description=__doc__.splitlines()[0])
    p.add_argument("result", help="a result pickle written by main.py / launch.py (one pair, one statistic)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--key", help="EC P-256 private key, PEM (offline signing)")
    g.add_argument("--sigstore", action="store_true",
                   help="keyless signing with Sigstore (writes a Sigstore bundle); needs network access to the "
                        "public Sigstore services and an OIDC identity: it cannot work offline")
    p.add_argument("--out", default=None, help="statement file (default: RESULT with .intoto.json)")
    p.add_argument("--rates", default=None, metavar="CSV",
                   help="embed the measured error-rate table the verdict's calibration refers to "
                        "(rates.csv of a report over a known lineage)")
    p.add_argument("--lineage", default=None, metavar="JSON",
                   help="lineage.json of python -m tracing.lineage --merges: the derived model's merge "
                        "attribution (parents, weights) goes into the statement and the model card")
    p.add_argument("--family", default=None, metavar="FILE|DIR",
                   help="the Holm family the verdict was adjusted over: holm-family.json of a scan, or the results "
                        "folder of a grid (default: holm-family.json beside RESULT when it lists this result)")
    p.add_argument("--cyclonedx", default=None, metavar="FILE",
                   help="also write a CycloneDX 1.6 component of the derived model pointing at the statement")
    p.add_argument("--model-card", default=None, metavar="FILE", dest="model_card",
                   help="also write a suggested Hub model-card block (YAML front matter)")
    return p.parse_args(argv)


def _family(result: str | Path, rec: dict, family: str | Path | None) -> dict | None:
    """The Holm family given, else the one beside the result when it lists this result."""
    from .evidence.family import beside, correction, read_family
    if family is not None:
        return read_family(family, rec)
    found = beside(result)
    if found is None:
        return None
    doc = read_family(found, rec)
    try:
        correction(doc, rec, {})
    except TracingError:  # e.g. a scan's full test beside its screens: not a member
        return None
    return doc


def attest_file(result: str | Path, key: str | Path | None, out: str | Path | None = None,
                keyless: bool = False, rates: str | Path | None = None,
                lineage: str | Path | None = None, family: str | Path | None = None) -> tuple[Path, dict]:
    """Attest one result pickle; returns (statement path, statement)."""
    from .evidence.make import attest, read_rates, statement_path
    from .results import load_record
    out = Path(out) if out else statement_path(result)
    table = read_rates(rates) if rates else None
    try:
        rec = load_record(result)
    except FileNotFoundError:
        raise TracingError(f"{result} does not exist; give a result pickle written by main.py") from None
    except Exception as e:  # a pickle that does not load: truncated or not a result
        raise TracingError(f"{result} is not a readable result pickle ({type(e).__name__})") from None
    return out, attest(rec, key, out, keyless, table, lineage, _family(result, rec, family))


def main(argv=None) -> int:
    args = parse(argv)
    out, stmt = attest_file(args.result, args.key, args.out, args.sigstore, args.rates, args.lineage, args.family)
    print(f"attested {stmt['predicate']['statistic']['name']}: "
          + " vs ".join(f"{s['name']} (sha256 {s['digest']['sha256'][:16]}…)" for s in stmt["subject"]))
    corr = stmt["predicate"]["correction"]
    if corr.get("method") == "holm":
        print(f"  Holm over {corr['family']}: adjusted log10 p {corr['adjusted_log10_pvalue']:.4g}, "
              f"{corr['verdict_after_correction']} at {corr['level']:g}")
    print(f"  wrote {out}")
    if args.cyclonedx or args.model_card:
        from .evidence.exports import quant_for, write_exports
        quant = quant_for(stmt) if args.model_card else None
        if quant is not None:
            print(f"  quantization check: {quant['verdict']} ({quant['summary']})")
        for line in write_exports(stmt, out, args.cyclonedx, args.model_card, quant):
            print(f"  wrote {line}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
