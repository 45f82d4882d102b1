"""Reconstruct families and trees from a results folder.

::

    python -m tracing.lineage RESULTS [--out DIR] [--lineage FILE] [--stat cos] [--root MODEL]
                                      [--significance 0.01] [--merges] [--no-hub]

writes ``lineage.json`` (families, tree edges with their similarity and direction, the pairs'
Holm-adjusted p-values, notes) and ``lineage.png`` into DIR (default: ``RESULTS/lineage``, so that the
report's own ``lineage.json`` / ``lineage.png`` in RESULTS are never replaced; a DIR that holds a
report is refused). The known lineage follows the report's rule (``--lineage``: a tree YAML such as
config/llama7b_tree.yaml or a lineage JSON; else the folder's ``known_lineage.json`` written by a
launch of a tree; else the demo family's when every model is ``demo:*``), so with the same options
the tree is the report's. With a known lineage it also writes ``lineage_rates.csv``
(false- and true-positive rates with exact 95% intervals) and scores the tree edges. ``--merges``
fits every model significant against two or more others as a mix of them (reads the weights).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import TracingError
from .figure import draw_lineage
from .rates import edge_scores, error_rates
from .reconstruct import reconstruct, write_json
from .known import lineage_for

#: the command's own output folder inside the results folder
OWN_FOLDER = "lineage"


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m tracing.lineage",
                                description="Families, trees and merges reconstructed from a results folder.")
    p.add_argument("results", help="the results folder (e.g. results/<run>)")
    p.add_argument("--out", default=None, help="where to write lineage.json / lineage.png (default: RESULTS/lineage; "
                                               "never a folder holding a report)")
    p.add_argument("--lineage", default=None, help="known lineage: a tree YAML or a lineage JSON (for direction "
                                                   "and error rates); default: RESULTS/known_lineage.json, or "
                                                   "the demo family's for demo:* models")
    p.add_argument("--stat", default="cos", help="the statistic whose p-values define families (default cos)")
    p.add_argument("--root", default=None, help="the root of the family that contains this model")
    p.add_argument("--significance", type=float, default=None,
                   help="level after Holm's correction (default: the runs' --significance, else 0.01)")
    p.add_argument("--merges", action="store_true", help="attribute merges (reads the models' weights)")
    p.add_argument("--merge-tensors", "--merge_tensors", dest="merge_tensors", default=None, metavar="GROUPS",
                   help="fit merges on these tensors only: a comma-separated list of groups (norms, routers, shared, "
                        "embed, experts, mlp, attention) or roles; hub models not in the local cache are then read "
                        "by range requests, only those tensors (default: all tensors, models downloaded)")
    p.add_argument("--no-hub", action="store_true", help="do not read base_model from cached model cards")
    return p.parse_args(argv)


def out_folder(results: Path, out) -> Path:
    """Where the command writes: ``--out``, else ``RESULTS/lineage``. A folder holding a report is
    refused: its ``lineage.json`` and ``lineage.png`` belong to the report (which embeds them)."""
    target = Path(out) if out else results / OWN_FOLDER
    if (target / "report.md").is_file():
        raise TracingError(f"{target} holds a report whose lineage.json and lineage.png this command would replace; "
                           f"give another --out (default: {results / OWN_FOLDER})")
    return target


def _fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def main(argv=None) -> int:
    args = parse(argv)
    from ..results import load_results
    folder = Path(args.results)
    if not folder.is_dir():
        raise TracingError(f"results folder {folder} does not exist; give the folder that holds the result pickles")
    df = load_results(folder)
    if df.empty:
        raise TracingError(f"no results in {folder}; run launch.py or main.py --save into it first")
    models = sorted({m for c in ("base", "ft") if c in df.columns for m in df[c] if isinstance(m, str)})
    out = out_folder(folder, args.out)
    truth = lineage_for(args.lineage, folder, models)
    kw = dict(stat=args.stat, root=args.root, level=args.significance, use_hub=not args.no_hub)
    extra = {}
    if args.merges:
        from .merges import parse_tensors, reconstruct_with_merges, verdict_json
        rec, verdicts = reconstruct_with_merges(df, truth, progress=True, tensors=parse_tensors(args.merge_tensors),
                                                **kw)
        extra["merges"] = [verdict_json(v) for v in verdicts]
    else:
        rec = reconstruct(df, truth=truth, **kw)
    if truth:
        rec.notes.append(f"lineage: {truth.source}")
        extra["edge_scores"] = edge_scores(rec.edges, truth, rec.models)
        rates = error_rates(df, truth, level=args.significance)
        extra["rates"] = rates.to_dict("records")
    out.mkdir(parents=True, exist_ok=True)
    path = write_json(rec, out / "lineage.json", extra)
    draw_lineage(rec, out / "lineage.png")
    if truth:
        from ..fileio import atomic_write
        atomic_write(out / "lineage_rates.csv", rates.to_csv(index=False))
    for i, (fam, root) in enumerate(zip(rec.families, rec.roots)):
        print(f"family {i + 1}: {', '.join(fam)}" + (f" (root {root})" if root and len(fam) > 1 else ""))
    for e in rec.edges:
        arrow = f"{e['parent']} -> {e['child']}" if e["directed"] else f"{e['a']} -- {e['b']}"
        s = e["similarity"]
        sim = "?" if s is None else (f"l2 {-s:.4g}" if rec.similarity == "-l2" else f"{rec.similarity} {s:.4f}")
        merge = f" (a merge of {', '.join(e['merge_of'])})" if e.get("merge_of") else ""
        print(f"  {arrow}{merge}  [{sim}]" + (f" {e['truth']}" if e.get("truth") else ""))
    if "edge_scores" in extra:
        s = extra["edge_scores"]
        print(f"edges: precision {_fmt(s['precision'])}, recall {_fmt(s['recall'])}")
        for r in extra["rates"]:
            print(f"{r['grid']} ({r['basis']}): FPR {r['false_positives']}/{r['independent_pairs']} "
                  f"[{_fmt(r['fpr_lo'])}, {_fmt(r['fpr_hi'])}], TPR {r['true_positives']}/{r['dependent_pairs']} "
                  f"[{_fmt(r['tpr_lo'])}, {_fmt(r['tpr_hi'])}]")
    for m in extra.get("merges", []):
        if m["is_merge"]:
            ws = ", ".join(f"{p} {w:.2f}" for p, w in m["weights"].items())
            print(f"merge: {m['model']} = {ws}")
    for n in rec.notes:
        print(f"note: {n}")
    print(path)
    return 0


if __name__ == "__main__":
    from ..cli_util import run_cli
    sys.exit(run_cli(main))
