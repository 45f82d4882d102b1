"""The summary table: one row per pair × statistic × raw/aligned, with corrections and verdicts."""
from __future__ import annotations

import numpy as np

from .. import pvalues
from ..errors import TracingError
from . import facts
from ..results import finite, variant_of
from .verdicts import label, verdict

CORRECTIONS = {"holm": ("Holm", pvalues.holm), "bh": ("Benjamini–Hochberg", pvalues.benjamini_hochberg)}

_FIRST = ["file", "base", "ft", "stat", "variant", "status", "error", "aligned", "statistic", "pvalue",
          "log10_pvalue", "pvalue_str", "correction", "log10_pvalue_adj", "pvalue_adj", "pvalue_adj_str",
          "significance", "significant", "significant_adj", "verdict", "verdict_adj", "superseded", "at_floor"]


def superseded(df, mtime: dict[str, float] | None = None) -> np.ndarray:
    """True for a row with a newer result of the same pair and variant (the newest file counts: a
    rerun with other options replaces the older one)."""
    mtime = mtime or {}
    out = np.zeros(len(df), dtype=bool)
    newest: dict[tuple, tuple[float, int]] = {}
    for i, (f, a, b, v) in enumerate(zip(df["file"], df["base"], df["ft"], df["variant"])):
        if not (isinstance(a, str) and isinstance(b, str)) or v == "?":
            continue
        t = mtime.get(f, 0.0) if isinstance(f, str) else 0.0
        key = (a, b, v)
        if key in newest:
            j = newest[key][1]
            if (t, i) >= newest[key]:
                out[j], newest[key] = True, (t, i)
            else:
                out[i] = True
        else:
            newest[key] = (t, i)
    return out


def _prepare(df, significance, mtime):
    df = df.copy().reset_index(drop=True)
    for col in ("file", "base", "ft", "stat", "status", "error", "aligned", "log10_pvalue", "pvalue", "statistic",
                "significance", "permute", "rotate", "at_floor"):
        if col not in df.columns:
            df[col] = None
    df["variant"] = [variant_of(r) for r in df.to_dict("records")]
    df["superseded"] = superseded(df, mtime)
    if significance is not None:
        df["significance"] = float(significance)
    df["significance"] = [float(s) if finite(s) else 0.01 for s in df["significance"]]
    return df


def summary_table(df, correction: str = "holm", significance: float | None = None, lineage=None,
                  mtime: dict[str, float] | None = None):
    """Add to a :func:`~tracing.results.load_results` table: ``variant``, ``pvalue_str``, the
    corrected ``log10_pvalue_adj`` / ``pvalue_adj`` / ``pvalue_adj_str`` (within each variant,
    on ``log10_pvalue``), ``verdict`` and ``verdict_adj`` at the level, ``superseded`` (an older
    result of the same pair and variant; left out of the corrections) and ``lineage_dependent``.
    ``mtime``: file → modification time (which result is the newest)."""
    import pandas as pd
    if correction not in CORRECTIONS:
        raise TracingError(f"--correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    df = _prepare(df, significance, mtime)
    lp = np.array([float(x) if finite(x) else np.nan for x in df["log10_pvalue"]], dtype=float)
    counted = ((df["status"] == "ok") & ~df["superseded"]).to_numpy()
    lp[~counted] = np.nan
    adj = np.full(len(df), np.nan)
    name, fn = CORRECTIONS[correction]
    for _, idx in df.groupby("variant", sort=False).groups.items():
        idx = np.asarray(list(idx))
        adj[idx] = fn(lp[idx])
    df["pvalue_str"] = [pvalues.format_pvalue(x) if finite(x) else "" for x in lp]
    df["correction"] = name
    df["log10_pvalue_adj"] = adj
    df["pvalue_adj"] = [pvalues.log10_to_float(x) if finite(x) else np.nan for x in adj]
    df["pvalue_adj_str"] = [pvalues.format_pvalue(x) if finite(x) else "" for x in adj]
    exact = [facts.kind(stat) != "approximate" for stat in df["stat"]]
    verdicts = [("superseded" if old else (label(x, s, e) or "no p-value") if st == "ok" else
                 (st if isinstance(st, str) else "failed"))
                for x, s, st, old, e in zip(lp, df["significance"], df["status"], df["superseded"], exact)]
    df["verdict"] = verdicts
    df["verdict_adj"] = [(label(x, s, e) or v) for x, s, v, e in zip(adj, df["significance"], verdicts, exact)]
    df["significant"] = [verdict(x, s) for x, s in zip(lp, df["significance"])]
    df["significant_adj"] = [verdict(x, s) for x, s in zip(adj, df["significance"])]
    if lineage is not None:
        df["lineage_dependent"] = pd.array([lineage.dependent(a, b) for a, b in zip(df["base"], df["ft"])],
                                           dtype="boolean")
    # the variant beside the statistic, the corrected p-values and verdicts beside the raw p-values
    first = [c for c in _FIRST if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def counted(df):
    """The rows that count: not superseded by a newer result of the same pair and variant."""
    return df[~df["superseded"].astype(bool)] if "superseded" in df.columns else df
