"""The report's lineage section: families, the reconstructed tree and, with a known lineage, error rates.

Written when at least three models were compared with a weight statistic (one that reads only the
weights and gives p-values): ``lineage.json`` and ``lineage.png`` (see :mod:`tracing.lineage`), and,
when the lineage is known, ``rates.csv`` (false- and true-positive rates per statistic and variant,
with exact Clopper–Pearson 95% intervals).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TracingError
from ..lineage.known import lineage_for
from .mdtable import table

RATES_FILE = "rates.csv"


@dataclass
class LineageSection:
    """What the section found; ``lines`` is its report.md text."""

    stat: str | None = None
    rec: object = None  # tracing.lineage.reconstruct.Reconstruction
    rates: object = None  # pandas.DataFrame or None
    scores: dict | None = None
    truth_source: str | None = None
    merges: list | None = None  # merge verdicts (tracing.lineage.merges.MergeVerdict) with merges=True
    written: dict[str, Path] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def weight_stat(df) -> str | None:
    """The first statistic of the table that reads only the weights and gives p-values."""
    from .. import stats
    for s in dict.fromkeys(x for x in df.get("stat", []) if isinstance(x, str)):
        try:
            spec = stats.get(s)
        except TracingError:
            continue
        if not spec.forward and spec.has_pvalue:
            return s
    return None


def _models_of(df, stat: str) -> set[str]:
    sub = df[(df["stat"] == stat) & (df["status"] == "ok")]
    return {m for c in ("base", "ft") for m in sub[c] if isinstance(m, str)}


def build(df, folder: Path, out: Path, lineage, level: float, merges: bool = False) -> LineageSection:
    """Reconstruct the lineage from the counted rows of the summary table ``df`` and write its files
    into ``out``; an empty section (no lines) when fewer than three models have a weight statistic.
    ``merges``: also attribute merges (reads the models' weights) and hang each merge under its parents."""
    from ..lineage.figure import draw_lineage
    from ..lineage.rates import edge_scores, error_rates
    from ..lineage.reconstruct import reconstruct, write_json
    from ..fileio import atomic_write

    sec = LineageSection()
    counted = df[~df["superseded"]] if "superseded" in df.columns else df
    sec.stat = weight_stat(counted)
    if sec.stat is None or len(_models_of(counted, sec.stat)) < 3:
        return sec
    models = sorted({m for c in ("base", "ft") for m in counted[c] if isinstance(m, str)})
    truth = lineage_for(lineage, folder, models)
    sec.truth_source = truth.source if truth is not None else None
    try:
        if merges:
            from ..lineage.merges import reconstruct_with_merges
            sec.rec, sec.merges = reconstruct_with_merges(counted, truth, stat=sec.stat, level=level)
        else:
            sec.rec = reconstruct(counted, stat=sec.stat, truth=truth, level=level)
    except TracingError as e:
        sec.lines = ["## Lineage", "", f"Not reconstructed: {e}", ""]
        return sec
    extra = {}
    if truth:
        sec.rec.notes.append(f"lineage: {sec.truth_source}")
        sec.scores = edge_scores(sec.rec.edges, truth, sec.rec.models)
        sec.rates = error_rates(counted, truth, level=level)
        extra = {"edge_scores": sec.scores, "rates": sec.rates.to_dict("records")}
        sec.written[RATES_FILE] = atomic_write(out / RATES_FILE, sec.rates.to_csv(index=False))
    if sec.merges is not None:
        from ..lineage.merges import verdict_json
        extra["merges"] = [verdict_json(v) for v in sec.merges]
    sec.written["lineage.json"] = write_json(sec.rec, out / "lineage.json", extra)
    draw_lineage(sec.rec, out / "lineage.png")
    sec.written["lineage.png"] = out / "lineage.png"
    sec.lines = markdown_lines(sec)
    return sec


def _f(x, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _interval(k, n, lo, hi) -> str:
    return f"{k}/{n}" if not n else f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def markdown_lines(sec: LineageSection) -> list[str]:
    rec = sec.rec
    L = ["## Lineage", "",
         f"Families are the connected groups of pairs significant under `{sec.stat}` (Holm-adjusted, level "
         f"{rec.level:g}); each family's tree is built from the similarity {rec.similarity}: grown from the "
         f"family's root when one is known (edges parent → child), else its maximum spanning tree (undirected). "
         f"Files: `lineage.json`, `lineage.png`"
         + (f", `{RATES_FILE}`" if sec.rates is not None else "") + ".", ""]
    fam_rows = [[i + 1, ", ".join(f"`{m}`" for m in fam), f"`{r}`" if r else "—", s or "—"]
                for i, (fam, r, s) in enumerate(zip(rec.families, rec.roots, rec.root_sources))]
    L += [table(["family", "models", "root", "root from"], fam_rows), ""]
    if rec.edges:
        rows = []
        for e in rec.edges:
            arrow = f"`{e['parent']}` → `{e['child']}`" if e["directed"] else f"`{e['a']}` — `{e['b']}`"
            if e.get("merge_of"):
                arrow += " (a merge of " + ", ".join(f"`{p}`" for p in e["merge_of"]) + ")"
            rows.append([arrow, _f(e.get("similarity"), 4), e.get("truth") or ""])
        L += [table(["edge", "similarity", "against the known lineage"], rows), ""]
    L += ["![lineage](lineage.png)", ""]
    if sec.rates is not None:
        s = sec.scores
        L += [f"Known lineage: {sec.truth_source}. Tree edges: precision {_f(s['precision'])} "
              f"({s['edges_correct']}/{s['edges_predicted']}), recall {_f(s['recall'])} "
              f"({s['edges_correct']}/{s['edges_true']}); directed correctly {s['directed_correct']}/"
              f"{s['directed_edges']}.", "",
              "Error rates per statistic and variant (a pair is dependent when its models share a root in the "
              "known lineage), with exact Clopper–Pearson 95% intervals:", ""]
        rows = [[r["grid"], r["basis"], _f(r["level"]),
                 _interval(r["false_positives"], r["independent_pairs"], r["fpr_lo"], r["fpr_hi"]),
                 _interval(r["true_positives"], r["dependent_pairs"], r["tpr_lo"], r["tpr_hi"])]
                for r in sec.rates.to_dict("records")]
        L += [table(["variant", "p-values", "level", "FPR (independent pairs)", "TPR (dependent pairs)"], rows), ""]
    L += merge_lines(sec.merges)
    L += [f"- {n}" for n in rec.notes] + ([""] if rec.notes else [])
    return L


def merge_lines(verdicts) -> list[str]:
    """The merges subsection: every model fitted as a mix of the models significant against it, with
    the verdict, and for each merge its weights per block."""
    if verdicts is None:
        return []
    L = ["### Merges", ""]
    if not verdicts:
        return L + ["No model is significant against two or more others: no merge to attribute.", ""]
    L += ["Each model significant against two or more others is fitted, per block, as a mix of them "
          "(non-negative weights; with their common ancestor B: ‖(M − B) − Σ wₖ(Pₖ − B)‖, else M ≈ Σ wₖPₖ with "
          "Σ w = 1). A merge is drawn under its parents, never as a parent.", ""]
    rows = [[f"`{v.model}`", "merge" if v.is_merge else "not a merge",
             ", ".join(f"`{p}` {w:.3f}" for p, w in v.weights.items()) if v.is_merge else "—",
             f"`{v.fit.base}`" if v.fit.base else "—", v.reason] for v in verdicts]
    L += [table(["model", "verdict", "parents (weight)", "common ancestor B", "why"], rows), ""]
    for v in (v for v in verdicts if v.is_merge):
        head = ["block"] + [f"`{p}`" for p in v.fit.parents] + ["unexplained"]
        rows = [[b["block"]] + [f"{w:.3f}" for w in b["weights"]] + [f"{b['unexplained']:.2%}"] for b in v.fit.per_block]
        L += [f"Weights of `{v.model}` per block (`other`: embeddings, final norm and head):", "",
              table(head, rows), ""]
    return L
