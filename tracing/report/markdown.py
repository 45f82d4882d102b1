"""The text of report.md: one function per section."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from . import facts
from .evidence import evidence_section
from .figures import CAPTIONS, FIGURES, blockmap_data, correspondence_lines
from .mdtable import rel_link, table, when
from .provenance import models_section, options_section, timings_section
from ..results import finite, flag
from ..results_folder import planned_results
from .table import counted

FLOOR_NOTE = ("at the floor of this test (perfect match in every block): every block's p-value is the smallest "
              "its Spearman test can give, 1/h! for h matched units, so no smaller p-value is possible for "
              "models of this size")

NULL_TEXT = ("The null hypothesis of every test: θ₁ and θ₂ were trained from independent random initialisations. "
             "A small p-value says the weights share an initialisation: one model is a fine-tune, continued "
             "pre-training, pruning, merge or quantization of the other, or both of a common ancestor. A large "
             "p-value does not prove independence; and a model distilled only from another's outputs is "
             "independent under this null.")


@dataclass
class Context:
    """Everything the sections read."""

    folder: Path
    out: Path
    df: object  # the summary table
    records: dict[str, dict]  # every readable result (superseded ones too)
    models: list[str]
    lin: object  # Lineage or None
    level: float
    cname: str
    figs: dict[str, str | None] = field(default_factory=dict)
    written: dict[str, Path] = field(default_factory=dict)
    parquet_note: str | None = None
    launch: dict = field(default_factory=dict)
    mtime: dict[str, float] = field(default_factory=dict)
    lineage_lines: list[str] = field(default_factory=list)  # the lineage section (lineage_section.py)

    @property
    def variants(self) -> list[str]:
        return [v for v in dict.fromkeys(self.df["variant"]) if v != "?"]

    @property
    def stats(self) -> list[str]:
        return list(dict.fromkeys(s for s in self.df["stat"] if isinstance(s, str)))


def run_section(c: Context) -> list[str]:
    recs = c.records.values()
    commits = sorted({str(r.get("commit")) for r in recs if r.get("commit")})
    hosts = sorted({str(r.get("host")) for r in recs if r.get("host")})
    n_pairs = len({(a, b) for a, b in zip(c.df["base"], c.df["ft"]) if isinstance(a, str)})
    L = ["## What was run", "",
         f"- results folder: `{c.folder}` ({len(c.records)} result files, {n_pairs} pairs, {len(c.models)} models)",
         f"- statistics: {', '.join(f'`{s}`' for s in c.stats) or '—'}",
         f"- toolkit commit: {', '.join(f'`{x}`' for x in commits) or 'unknown'}"
         + (" (uncommitted changes present)" if any(x.endswith("-dirty") for x in commits) else ""),
         f"- when (result files written): {when(list(c.mtime.values()))}"]
    if hosts:
        L.append(f"- host(s): {', '.join(hosts[:5])}{' …' if len(hosts) > 5 else ''}")
    if c.launch.get("cluster"):
        L.append(f"- launched on: {c.launch['cluster']} ({c.launch.get('time', '')})")
    stored = [side for r in recs for side in (r.get("rows_store") or {}).values()]
    if stored:
        read, kept = sum(x.get("read", 0) for x in stored), sum(x.get("from_store", 0) for x in stored)
        L.append(f"- sampled rows: {read} tensors' rows read from the weights, {kept} from the store beside the "
                 f"results (`.sampled-rows/`, keyed by the weight files' SHA-256; bit-identical to the weights)")
    L.append(f"- report written: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}; verdicts at level "
             f"{c.level:g}, corrected with {c.cname} within each grid (statistic × transform × raw/aligned)")
    L += [f"- lineage: {c.lin.source if c.lin else 'unknown'}", "", "### Models", ""]
    msec, mwarn = models_section(c.records)
    L += msec
    L += [f"\n**Warning:** {w}" for w in mwarn]
    L += ["", "### Options", "", options_section(c.records), ""]
    return L


def _lineage_counts(c: Context) -> list[str]:
    df = counted(c.df)
    rows = []
    for v in c.variants:
        sub = df[(df["variant"] == v) & (df["status"] == "ok")]
        sub = sub[[finite(x) for x in sub["log10_pvalue"]]]
        if sub.empty:
            continue
        dep = sub[sub["lineage_dependent"] == True]  # noqa: E712
        ind = sub[sub["lineage_dependent"] == False]  # noqa: E712
        rows.append([v, f"{int((dep['significant'] == True).sum())}/{len(dep)}",
                     f"{int((dep['significant_adj'] == True).sum())}/{len(dep)}",
                     f"{int((ind['significant'] == True).sum())}/{len(ind)}",
                     f"{int((ind['significant_adj'] == True).sum())}/{len(ind)}",
                     facts.kind(v.split(" ", 1)[0])])
    if not rows:
        return []
    return [f"Against the lineage ({c.lin.source}):", "",
            table(["grid", "related pairs found (raw)", f"related found ({c.cname})",
                   "independent pairs flagged (raw)", f"independent flagged ({c.cname})", "test"], rows), ""]


def _fixed_note(r) -> list[str]:
    """The fixed-point test of cos's own matching, when its verdict differs from cos's."""
    from ..pvalues import format_pvalue
    from .verdicts import verdict
    fl, lp, sig = r.get("fixed_log10_pvalue"), r.get("log10_pvalue"), r.get("significance")
    if not (finite(fl) and finite(lp)) or verdict(fl, sig) == verdict(lp, sig):
        return []
    return [f"fixed points p {format_pvalue(fl)}" + (": partial sharing" if verdict(fl, sig) else "")]


BLOCK_MAP_NOTE = ("A block map has no single statistic: its statistic cell is left empty. Its p-value is the "
                  "Bonferroni bound over its L₁ × L₂ block pairs (min(1, L₁L₂ · the smallest block-pair p)); each "
                  "block pair's Spearman r is in the record (`per_pair_statistic`), and *median cos* is the mean "
                  "median cosine of the matched block pairs.")


def _variant_rows(c: Context, sub, has_p: bool) -> list[list]:
    import pandas as pd
    rows = []
    for _, r in sub.iterrows():
        st = r["statistic"]
        block_map = flag(r.get("localized"))  # no single statistic: the cell is left empty (see the note)
        stat_s = f"{float(st):.4g}" if finite(st) and not block_map else ""
        extras = [f"{lab} {float(r[k]):.3g}" for k, lab in (("barrier", "barrier"), ("median_cos", "median cos"))
                  if k in r and finite(r[k])]
        extras += _fixed_note(r)
        if block_map:
            stat_s = "(" + "; ".join(["block map"] + ([", ".join(extras)] if extras else [])) + ")"
        elif extras:
            stat_s += f" ({', '.join(extras)})"
        row = [f"`{r['base']}`", f"`{r['ft']}`", stat_s]
        if has_p:
            floor = " (floor)" if flag(r.get("at_floor")) and r["pvalue_str"] else ""
            row += [r["pvalue_str"] + floor, r["pvalue_adj_str"], r["verdict"] or "", r["verdict_adj"] or ""]
        else:
            row += [r["verdict"] if r["status"] != "ok" else "no p-value"]
        if c.lin is not None:
            d = r.get("lineage_dependent")
            row.append("unknown" if d is None or pd.isna(d) else ("related" if bool(d) else "independent"))
        rows.append(row)
    return rows


def _variant_table(c: Context, v: str) -> list[str]:
    sub = counted(c.df)
    sub = sub[sub["variant"] == v]
    lin = c.lin
    key = ((lambda r: (lin.order_key(r["base"]), lin.order_key(r["ft"]))) if lin else
           (lambda r: (str(r["base"]), str(r["ft"]))))
    sub = sub.iloc[sorted(range(len(sub)), key=lambda i: key(sub.iloc[i]))]
    has_p = any(finite(x) for x in sub["log10_pvalue"])
    kind = facts.kind(v.split(" ", 1)[0])
    header = ["base", "fine-tuned", "statistic"]
    header += ["p-value", f"p ({c.cname})", "verdict (raw)", f"verdict ({c.cname})"] if has_p else ["verdict"]
    if lin is not None:
        header.append("lineage")
    L = [f"### {v}", ""]
    if has_p:
        L += [f"Test: {kind}.", ""]
    L.append(table(header, _variant_rows(c, sub, has_p)))
    n_floor = int(sum(1 for x, s in zip(sub["at_floor"], sub["pvalue_str"]) if flag(x) and s))
    if has_p and n_floor:
        L += ["", f"{n_floor} p-value(s) marked (floor) are {FLOOR_NOTE}."]
    if "localized" in sub.columns and any(flag(x) for x in sub["localized"]):
        L += ["", BLOCK_MAP_NOTE]
    L.append("")
    return L


def verdict_section(c: Context) -> list[str]:
    L = ["## Verdicts", "", NULL_TEXT, "",
         f"A p-value at or below {c.level:g} is evidence that the two models are not independent (one derived "
         f"from the other, or both from a common ancestor); a p-value above it is not evidence of independence. "
         f"*raw* uses each pair's p-value alone; *{c.cname}* accounts for every pair tested in the same grid. "
         f"Test *exact*: the p-value is exact under the null; *approximate*: calibrated only empirically.", ""]
    n_old = int(c.df["superseded"].sum()) if "superseded" in c.df.columns else 0
    if n_old:
        L += [f"{n_old} result(s) superseded by a newer result of the same pair, statistic and variant (a rerun, "
              f"possibly with other options) are left out of the counts, corrections and figures; the newest "
              f"counts. They stay in summary.csv (column `superseded`).", ""]
    if c.lin is not None and "lineage_dependent" in c.df.columns:
        L += _lineage_counts(c)
    for v in c.variants:
        L += _variant_table(c, v)
    return L


def _planned_but_missing(folder: Path, launch: dict) -> list[list]:
    """Results listed in ``launch.json`` whose file does not exist (jobs lost or still running)."""
    return [[f"`{p.base}`", f"`{p.ft}`", p.stat, p.status, p.error]
            for p in planned_results(folder, launch) if not p.exists()]


def failures_section(c: Context) -> list[str]:
    L = ["## Failures", ""]
    bad = c.df[c.df["status"] != "ok"]
    if bad.empty:
        L.append("None: every result succeeded.")
    else:
        n_unread = int((bad["status"] == "unreadable").sum())
        L += [f"{len(bad)} result(s) failed or could not be read ({n_unread} unreadable result file(s)); they are "
              f"left out of the corrections and marked in the heatmap.", ""]
        L.append(table(["base", "fine-tuned", "statistic", "status", "error", "job", "file"],
                       [[f"`{r['base']}`" if isinstance(r["base"], str) else "?",
                         f"`{r['ft']}`" if isinstance(r["ft"], str) else "?",
                         r["stat"] if isinstance(r["stat"], str) else "?", r["status"],
                         r["error"], r.get("job_id"), f"`{r['file']}`"] for _, r in bad.iterrows()]))
    missing = _planned_but_missing(c.folder, c.launch)
    if missing:
        L += ["", f"{len(missing)} planned result(s) (launch.json) have no result file:", "",
              table(["base", "fine-tuned", "statistic", "launch status", "error"], missing)]
    L.append("")
    return L


def figures_section(c: Context) -> list[str]:
    L = ["## Figures", ""]
    for name in FIGURES:
        L += [f"### {name.replace('_', ' ')}", ""]
        if c.figs[name] is None:
            L += [CAPTIONS[name], "", f"![{name}]({rel_link(c.out / f'{name}.png', c.out)})"]
            if name == "blockmap":
                L += ["", *correspondence_lines(blockmap_data(c.records, c.mtime, c.level))]
        else:
            L.append(f"Not drawn: {c.figs[name]}")
        L.append("")
    return L


def meaning_section(c: Context) -> list[str]:
    return ["## What the p-values mean", ""] + [f"- {facts.meaning(s)}" for s in c.stats] + [""]


def files_section(c: Context) -> list[str]:
    about = {"summary.csv": ": one row per pair × statistic × raw/aligned; `log10_pvalue` and `log10_pvalue_adj` "
                            "are authoritative (`pvalue` may underflow to 0)"}
    L = ["## Files", ""]
    L += [f"- [{name}]({rel_link(p, c.out)}){about.get(name, '')}" for name, p in c.written.items()]
    if c.parquet_note:
        L.append(f"- {c.parquet_note}")
    L.append("")
    return L


def markdown(c: Context) -> str:
    """The text of report.md."""
    L = [f"# Model tracing report: `{c.folder.name or c.folder}`", ""]
    L += run_section(c)
    L += verdict_section(c)
    L += failures_section(c)
    L += evidence_section(c)
    L += figures_section(c)
    L += c.lineage_lines
    L += ["## Timings", "", timings_section(c.records), ""]
    L += meaning_section(c)
    L += files_section(c)
    return "\n".join(L)
