"""The data of one heatmap panel: which pairs were run, in which direction, with what result."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import pvalues
from . import facts
from ..lineage.known import KnownLineage, lineage_for
from ..results import finite, variant_of
from .table import counted
from .verdicts import verdict

#: cell annotations of the states that carry no number
STATE_TEXT = {"missing": "not run", "reverse": "↔", "failed": "failed", "unreadable": "unreadable", "self": ""}


@dataclass
class Grid:
    """The data of one heatmap panel. ``value[i, j]`` is −log10 p (or the raw statistic when the
    variant has no p-values) of the pair base=models[i], ft=models[j], as run: nothing is mirrored.
    ``state`` is ``ok`` / ``failed`` / ``unreadable`` / ``missing`` (not run) / ``reverse`` (not run
    this way round, but the pair with the roles swapped was) / ``self`` / ``no p-value``; ``text`` is
    the cell annotation."""

    variant: str
    models: list[str]
    value: np.ndarray
    state: np.ndarray
    text: np.ndarray
    significant: np.ndarray  # significant after the correction
    kind: str  # "neglog10p" or "statistic"
    what: str = "statistic"  # what a "statistic" panel shows


def ordered_models(models, lineage: KnownLineage | None = None) -> list[str]:
    """Alphabetical without a lineage; with one, families together (larger families first, each
    root first), then models of unknown lineage."""
    models = sorted({str(m) for m in models if isinstance(m, str)})
    if lineage is None:
        return models
    size: dict[str, int] = {}
    for m in models:
        r = lineage.root(m)
        if r is not None:
            size[r] = size.get(r, 0) + 1

    def key(m):
        known, root, depth, name = lineage.order_key(m)
        return (known, -size.get(root, 0), root, depth, name)
    return sorted(models, key=key)


def _pick(rows: list[dict]) -> dict:
    """Among several results for one cell: the last successful one, else the last one."""
    ok = [r for r in rows if r.get("status") == "ok"]
    return (ok or rows)[-1]


def _kind(sub: list[dict], variant: str) -> str:
    has_p = any(r.get("status") == "ok" and finite(r.get("log10_pvalue")) for r in sub)
    has_stat = any(r.get("status") == "ok" and finite(r.get("statistic")) for r in sub)
    no_p = facts.has_pvalue(variant.split(" ", 1)[0]) is False
    return "neglog10p" if has_p or not (has_stat or no_p) else "statistic"


def _fill(g: Grid, a: int, b: int, r: dict) -> None:
    """One cell from one result."""
    status = r.get("status")
    if status != "ok":
        s = "unreadable" if status == "unreadable" else "failed"
        g.state[a, b], g.text[a, b] = s, STATE_TEXT[s]
        return
    lp, st = r.get("log10_pvalue"), r.get("statistic")
    if g.kind == "neglog10p":
        if finite(lp):
            g.value[a, b], g.state[a, b] = -float(lp), "ok"
            g.text[a, b] = pvalues.format_pvalue(lp, digits=1)
            level = r.get("significance") if finite(r.get("significance")) else 0.01
            g.significant[a, b] = bool(verdict(r.get("log10_pvalue_adj"), level))
        else:
            g.state[a, b], g.text[a, b] = "no p-value", "no p"
    elif finite(st):
        g.value[a, b], g.state[a, b], g.text[a, b] = float(st), "ok", f"{float(st):.3g}"
    else:
        g.state[a, b], g.text[a, b] = "no p-value", "n/a"


def heatmap_matrix(df, variant: str, models: list[str] | None = None, lineage="auto") -> Grid:
    """The matrix drawn in ``heatmap.png`` for one variant (a statistic name such as ``"cos"`` for a
    plain run; see :func:`~tracing.report.table.variant_of`). Works on a load_results table or a
    :func:`~tracing.report.table.summary_table` (superseded results are left out).

    Models are ordered by family when the lineage is known (``"auto"``: the demo family's when
    every model is ``demo:*``; or a :class:`~tracing.lineage.known.KnownLineage`; None: alphabetical)."""
    if "variant" not in df.columns:
        df = df.assign(variant=[variant_of(r) for r in df.to_dict("records")])
    sub = [r for r in counted(df).to_dict("records") if r.get("variant") == variant
           and isinstance(r.get("base"), str) and isinstance(r.get("ft"), str)]
    if models is None:
        names = [r["base"] for r in sub] + [r["ft"] for r in sub]
        if isinstance(lineage, str) and lineage == "auto":
            lineage = lineage_for(None, None, sorted(set(names)))
        models = ordered_models(names, lineage)
    pos = {m: i for i, m in enumerate(models)}
    n = len(models)
    cells: dict[tuple[int, int], list[dict]] = {}
    for r in sub:
        if r["base"] in pos and r["ft"] in pos:
            cells.setdefault((pos[r["base"]], pos[r["ft"]]), []).append(r)
    alphas = {float(r["alpha"]) for r in sub if finite(r.get("alpha"))}
    g = Grid(variant, list(models), np.full((n, n), np.nan), np.full((n, n), "missing", dtype=object),
             np.full((n, n), STATE_TEXT["missing"], dtype=object), np.zeros((n, n), dtype=bool),
             _kind(sub, variant), facts.panel_label(variant.split(" ", 1)[0], alphas))
    for i in range(n):
        g.state[i, i], g.text[i, i] = "self", ""
    for (i, j), rows in cells.items():
        _fill(g, i, j, _pick(rows))
        if i != j and (j, i) not in cells:
            g.state[j, i], g.text[j, i] = "reverse", STATE_TEXT["reverse"]
    return g
