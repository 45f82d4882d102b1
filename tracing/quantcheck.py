"""Is a quantized file a faithful quantization of a source? ``python -m tracing.quantcheck SOURCE QUANTIZED``.

Per tensor: the fraction of stored codes equal to round-to-nearest of the source under the file's own
scales, and whether every code lies in its rounding cell (docs/methods.md, "Quantization
faithfulness"). Verdict: faithful / altered (which tensors) / not applicable. Exit 0 faithful,
1 altered or not applicable, 2 bad input. It catches a quantizer that altered the weights, not a
full-precision source crafted to misbehave once quantized.
"""
from __future__ import annotations

import argparse
import json
import sys

from .cli_util import run_cli, text_table


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m tracing.quantcheck", description=__doc__.splitlines()[0])
    p.add_argument("source", help="the full-precision model (folder, hub id, demo:<name>)")
    p.add_argument("quantized", help="the quantized model (GGUF file, GPTQ/AWQ folder)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the per-tensor table as JSON")
    p.add_argument("--all", action="store_true", help="print every tensor, not only the altered ones")
    return p.parse_args(argv)


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.4f}"


def main(argv=None) -> int:
    args = parse(argv)
    from .evidence.quant import quantcheck
    from .fileio import atomic_write, check_writable
    if args.json:
        check_writable(args.json)
    res = quantcheck(args.source, args.quantized)
    shown = [t for t in res["tensors"] if args.all or t["status"] == "altered"]
    if shown:
        print(text_table([("tensor", "type", "equal", "in cell", "status")] +
                         [(t["name"], t["qtype"], _fmt(t["equal"]), _fmt(t["in_cell"]),
                           t["status"] + (f"  ({t['note']})" if t["note"] else "")) for t in shown], indent="  "))
    print(f"{res['verdict']}: {res['format']} {args.quantized} against {args.source}: {res['summary']}")
    print(f"  {res['caveat']}")
    if args.json:
        atomic_write(args.json, json.dumps(res, indent=1) + "\n")
    return 0 if res["verdict"] == "faithful" else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
