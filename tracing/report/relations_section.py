"""The report's section on labelled pairs (a launch of a labelled model list, e.g. a published benchmark):
rates per relation, statistic and variant, full and sampled, at the levels 1e-2, 1e-3 and 1e-4, with
exact Clopper–Pearson 95% intervals; the table goes to ``relation_rates.csv``."""
from __future__ import annotations

from pathlib import Path

from .mdtable import table


def _cell(r: dict) -> str:
    n, k = r["pairs"], r["called"]
    if not n:
        return "—"
    return f"{k}/{n} = {k / n:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"


def build(df, folder: Path, out: Path, labels: dict | None = None) -> tuple[dict[str, Path], list[str]]:
    """Files written and report.md lines; nothing when the folder has no pair labels."""
    from ..lineage.relations import LEVELS, RATES_FILE, read_known_relations, relation_rates
    from ..fileio import atomic_write

    labels = labels or read_known_relations(folder)
    if not labels:
        return {}, []
    rates = relation_rates(df, labels)
    written = {RATES_FILE: atomic_write(out / RATES_FILE, rates.to_csv(index=False))}
    bench = labels.get("benchmark") or {}
    name = bench.get("name") if isinstance(bench, dict) else None
    L = ["## Rates per relation", "",
         f"Labelled pairs{f' of {name}' if name else ''}: {len(labels['pairs'])} "
         f"({len(labels.get('audit') or [])} relabelled and {len(labels.get('excluded') or [])} excluded by the "
         f"list's audit). A pair is called dependent when its raw p-value is at most the level; for relations "
         f"that share an initialisation the rate is a true-positive rate (TPR), for `distilled` and "
         f"`independent` a false-positive rate (FPR). Intervals are exact Clopper–Pearson 95%. "
         f"File: `{RATES_FILE}`.", ""]
    if rates.empty:
        return written, L + ["No result of a labelled pair yet.", ""]
    recs = rates.to_dict("records")
    for (variant, mode) in dict.fromkeys((r["variant"], r["reading"]) for r in recs):
        sub = [r for r in recs if r["variant"] == variant and r["reading"] == mode]
        rows = []
        for rel in dict.fromkeys(r["relation"] for r in sub):
            cells = {r["level"]: r for r in sub if r["relation"] == rel}
            first = cells[LEVELS[0]]
            rows.append([rel, first["kind"]] + [_cell(cells[lv]) for lv in LEVELS] + [first["failed"] or ""])
        L += [f"`{variant}`, {mode}:", "",
              table(["relation", "rate"] + [f"α = {lv:g}" for lv in LEVELS] + ["failed"], rows), ""]
    return written, L
