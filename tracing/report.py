"""Summarise a results folder: table, figures and ``report.md``.

::

    python -m tracing.report results/<run> [--out DIR] [--lineage FILE] [--significance 0.01]
                                           [--correction holm|bh]

writes into ``DIR`` (default: the results folder itself):

``summary.csv`` / ``summary.parquet``
    the tidy table of :func:`tracing.results.load_results` plus the formatted p-values, the
    multiple-testing correction (Holm or Benjamini–Hochberg, computed on ``log10_pvalue`` within
    each grid = statistic × transform × raw/aligned), the verdicts at the chosen level and, when
    the lineage is known, ``lineage_dependent``.
``heatmap.png``
    per statistic, the symmetric model × model grid of −log10 p (see :func:`heatmap_matrix`).
``calibration.png``
    empirical CDF of the p-values of pairs known to be independent, against the uniform diagonal.
``mode_curves.png``
    loss and barrier along the interpolation path, for ``mode`` runs with ``--alphas``.
``per_layer.png``
    per-block −log10 p of every pair (which blocks carry the evidence).
``report.md``
    what was run (models, weight hashes, options, commit), verdicts, failures, figures, timings.

A figure with nothing to show is not written; ``report.md`` says why.

Lineage (which models share an ancestor) is read from ``--lineage FILE``: JSON (or YAML) of the
form ``{"models": {name: {"parent": p, "root": r}}}`` — the format of the demo family's
``lineage.json`` — or simply ``{name: parent_or_null}``. When every model is ``demo:*`` the demo
family's lineage is used automatically.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import pvalues
from .errors import TracingError

#: colour scale of −log10 p in the heatmap stops here (p ≤ 1e-50 all look the same)
CAP = 50.0
#: above this many pairs the per-layer figure becomes a pair × block image instead of lines
MAX_LINES = 10
#: at most this many pairs (rows) in the per-layer image: those with the strongest per-block evidence
MAX_ROWS = 60

CORRECTIONS = {"holm": ("Holm", pvalues.holm), "bh": ("Benjamini–Hochberg", pvalues.benjamini_hochberg)}

#: what one statistic's p-value means (report.md)
MEANING = {
    "cos": "φ_U (`cos`): up_proj rows matched per block, Spearman against the identity, Fisher over blocks; the "
           "p-value is exact under the null that the two models were initialised independently, whatever "
           "training followed.",
    "csh": "φ_H (`csh`): as `cos`, on hidden activations of up_proj; the p-value is exact under the null that the "
           "two models were initialised independently.",
    "l2": "φ_ℓ2 (`l2`): mean Frobenius distance of the weights, with a permutation test (PERMTEST); the p-value is "
          "exact under the independent-initialisation null, and can be no smaller than 1/(T+1) for T permutations.",
    "mode": "mode connectivity (`mode`): LM loss at α (default 0.5) on the straight path between the models "
            "(barrier beside it); with `--num_perm` > 0 a permutation test (PERMTEST) gives a p-value that is "
            "exact under the independent-initialisation null (no smaller than 1/(T+1)); without it the loss is "
            "reported raw, with no p-value.",
    "emb": "embeddings (`emb`): embedding dimensions matched over the shared vocabulary, Spearman against the "
           "identity; the p-value is exact under the null that the two embedding matrices were initialised "
           "independently.",
    "match": "φ_MATCH (`match`): gate activations matched against |up| activations per block, Fisher over blocks; "
             "its p-value is calibrated empirically (independent models give roughly uniform p-values in "
             "experiments), not guaranteed by a theorem.",
    "jsd": "Jensen–Shannon divergence (`jsd`) of the next-token distributions: smaller means more similar "
           "outputs; there is no p-value and no verdict.",
}

_FIGURES = ("heatmap", "calibration", "mode_curves", "per_layer")


# ==========================================================================================
# Lineage
# ==========================================================================================
@dataclass
class Lineage:
    """Which models share a root. ``roots`` maps a model name to its root; ``depth`` to its distance
    from the root (for ordering)."""

    roots: dict[str, str]
    depth: dict[str, int]
    source: str

    def _key(self, model: str) -> str | None:
        if model is None:
            return None
        m = str(model)
        for cand in (m, m.split("@", 1)[0], m[len("demo:"):] if m.startswith("demo:") else None,
                     m.rstrip("/").rsplit("/", 1)[-1]):
            if cand and cand in self.roots:
                return cand
        return None

    def root(self, model: str) -> str | None:
        k = self._key(model)
        return None if k is None else self.roots[k]

    def dependent(self, a: str, b: str) -> bool | None:
        ra, rb = self.root(a), self.root(b)
        if ra is None or rb is None:
            return None
        return ra == rb

    def order_key(self, model: str):
        k = self._key(model)
        if k is None:
            return (1, "", 0, str(model))
        return (0, self.roots[k], self.depth.get(k, 0), str(model))


def _lineage_from_parents(parents: dict[str, str | None], roots: dict[str, str] | None, source: str) -> Lineage:
    roots = dict(roots or {})
    depth: dict[str, int] = {}
    for name in parents:
        seen, cur, d = {name}, name, 0
        while parents.get(cur):
            cur = parents[cur]
            d += 1
            if cur in seen:
                raise TracingError(f"the lineage in {source} has a cycle through {cur!r}")
            seen.add(cur)
        roots.setdefault(name, cur)
        depth[name] = d
    for name, r in roots.items():
        depth.setdefault(name, 0 if name == r else 1)
    return Lineage(roots, depth, source)


def parse_lineage(data, source: str = "<lineage>") -> Lineage:
    """``{"models": {name: {"parent", "root"}}}`` or ``{name: parent_or_null}`` → :class:`Lineage`."""
    if isinstance(data, Lineage):
        return data
    if not isinstance(data, dict):
        raise TracingError(f"the lineage in {source} must be a mapping of model → parent")
    models = data.get("models", data) if isinstance(data.get("models"), dict) else data
    parents, roots = {}, {}
    for name, info in models.items():
        if isinstance(info, dict):
            parents[str(name)] = info.get("parent")
            if info.get("root"):
                roots[str(name)] = str(info["root"])
        elif info is None or isinstance(info, str):
            parents[str(name)] = info
        else:
            raise TracingError(f"the lineage in {source}: entry {name!r} must be a parent name, null, or "
                               f"{{'parent': ..., 'root': ...}}")
    return _lineage_from_parents(parents, roots, source)


def read_lineage(path: str | os.PathLike) -> Lineage:
    p = Path(path)
    if not p.is_file():
        raise TracingError(f"lineage file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001
        raise TracingError(f"cannot read the lineage file {p}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return parse_lineage(data, str(p))


def demo_lineage() -> Lineage:
    """The demo family's lineage (from the recipes; the zoo need not be built)."""
    from . import zoo
    parents = {n: zoo.RECIPES[n].parent for n in zoo.MODEL_NAMES}
    return _lineage_from_parents(parents, {n: zoo.root_of(n) for n in zoo.MODEL_NAMES}, "the demo family")


def resolve_lineage(lineage, models: list[str]) -> Lineage | None:
    if lineage is not None and lineage is not False:
        if isinstance(lineage, (str, os.PathLike)):
            return read_lineage(lineage)
        return parse_lineage(lineage)
    if models and all(isinstance(m, str) and m.startswith("demo:") for m in models):
        try:
            return demo_lineage()
        except TracingError:
            return None
    return None


# ==========================================================================================
# Table
# ==========================================================================================
def _flag(v) -> bool:
    return bool(v) and not (isinstance(v, float) and math.isnan(v))


def variant_of(row) -> str:
    """The grid a row belongs to: statistic, transforms of θ₂, raw or aligned (e.g. ``cos --permute [aligned]``)."""
    stat = row.get("stat")
    if stat is None or (isinstance(stat, float) and math.isnan(stat)):
        return "?"
    parts = [str(stat)]
    for flag in ("permute", "rotate"):
        if _flag(row.get(flag)):
            parts.append(f"--{flag}")
    if stat == "mode":
        for flag in ("attn", "emb"):
            if _flag(row.get(flag)):
                parts.append(f"--{flag}")
    label = " ".join(parts)
    return label + " [aligned]" if _flag(row.get("aligned")) else label


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating)) and math.isfinite(float(x))


def _verdict(lp, level) -> str | None:
    if not _finite(lp):
        return None
    return "dependent" if lp < math.log10(level) else "not significant"


def summary_table(df, correction: str = "holm", significance: float | None = None, lineage: Lineage | None = None):
    """Add to a :func:`~tracing.results.load_results` table: ``variant``, ``pvalue_str``, the
    corrected ``log10_pvalue_adj`` / ``pvalue_adj`` / ``pvalue_adj_str`` (within each variant,
    on ``log10_pvalue``), ``verdict`` and ``verdict_adj`` at the level, and ``lineage_dependent``."""
    import pandas as pd
    if correction not in CORRECTIONS:
        raise TracingError(f"--correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    df = df.copy().reset_index(drop=True)
    for col in ("base", "ft", "stat", "status", "error", "aligned", "log10_pvalue", "pvalue", "statistic",
                "significance", "permute", "rotate"):
        if col not in df.columns:
            df[col] = None
    df["variant"] = [variant_of(r) for r in df.to_dict("records")]
    if significance is not None:
        df["significance"] = float(significance)
    df["significance"] = [float(s) if _finite(s) else 0.01 for s in df["significance"]]
    lp = np.array([float(x) if _finite(x) else np.nan for x in df["log10_pvalue"]], dtype=float)
    ok = (df["status"] == "ok").to_numpy()
    lp[~ok] = np.nan
    adj = np.full(len(df), np.nan)
    name, fn = CORRECTIONS[correction]
    for _, idx in df.groupby("variant", sort=False).groups.items():
        idx = np.asarray(list(idx))
        adj[idx] = fn(lp[idx])
    df["pvalue_str"] = [pvalues.format_pvalue(x) if _finite(x) else "" for x in lp]
    df["correction"] = name
    df["log10_pvalue_adj"] = adj
    df["pvalue_adj"] = [pvalues.log10_to_float(x) if _finite(x) else np.nan for x in adj]
    df["pvalue_adj_str"] = [pvalues.format_pvalue(x) if _finite(x) else "" for x in adj]
    verdict = [(_verdict(x, s) or "no p-value") if st == "ok" else (st if isinstance(st, str) else "failed")
               for x, s, st in zip(lp, df["significance"], df["status"])]
    df["verdict"] = verdict
    df["verdict_adj"] = [(_verdict(x, s) or v) for x, s, v in zip(adj, df["significance"], verdict)]
    df["significant_adj"] = [(x < math.log10(s)) if _finite(x) else None for x, s in zip(adj, df["significance"])]
    if lineage is not None:
        df["lineage_dependent"] = pd.array([lineage.dependent(a, b) for a, b in zip(df["base"], df["ft"])],
                                           dtype="boolean")
    # the variant beside the statistic, the corrected p-values and verdicts beside the raw p-values
    first = ["file", "base", "ft", "stat", "variant", "status", "error", "aligned", "statistic", "pvalue",
             "log10_pvalue", "pvalue_str", "correction", "log10_pvalue_adj", "pvalue_adj", "pvalue_adj_str",
             "significance", "significant", "significant_adj", "verdict", "verdict_adj"]
    first = [c for c in first if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


# ==========================================================================================
# Heatmap data
# ==========================================================================================
@dataclass
class Grid:
    """The data of one heatmap panel. ``value[i, j]`` is −log10 p (or the raw statistic when the
    variant has no p-values) of the pair base=models[i], ft=models[j], mirrored to [j, i] unless
    that direction was run too; ``state`` is ``ok`` / ``failed`` / ``missing`` / ``self`` /
    ``no p-value``; ``text`` is the cell annotation."""

    variant: str
    models: list[str]
    value: np.ndarray
    state: np.ndarray
    text: np.ndarray
    significant: np.ndarray  # significant after the correction
    kind: str  # "neglog10p" or "statistic"
    what: str = "statistic"  # what a "statistic" panel shows


def ordered_models(models, lineage: Lineage | None = None) -> list[str]:
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


def _stat_has_no_pvalue(variant: str) -> bool:
    try:
        from .stats import get
        return not get(variant.split(" ", 1)[0]).has_pvalue
    except Exception:  # noqa: BLE001 - an unknown statistic
        return False


def heatmap_matrix(df, variant: str, models: list[str] | None = None, lineage="auto") -> Grid:
    """The matrix drawn in ``heatmap.png`` for one variant (a statistic name such as ``"cos"`` for a
    plain run; see :func:`variant_of`). Works on a load_results table or a :func:`summary_table`.

    Models are ordered by family when the lineage is known (``"auto"``: the demo family's when
    every model is ``demo:*``; or a :class:`Lineage`; None: alphabetical)."""
    if "variant" not in df.columns:
        df = df.assign(variant=[variant_of(r) for r in df.to_dict("records")])
    sub = [r for r in df.to_dict("records") if r.get("variant") == variant and isinstance(r.get("base"), str)
           and isinstance(r.get("ft"), str)]
    if models is None:
        names = [r["base"] for r in sub] + [r["ft"] for r in sub]
        if isinstance(lineage, str) and lineage == "auto":
            lineage = resolve_lineage(None, sorted(set(names)))
        models = ordered_models(names, lineage)
    pos = {m: i for i, m in enumerate(models)}
    n = len(models)
    cells: dict[tuple[int, int], list[dict]] = {}
    for r in sub:
        if r["base"] in pos and r["ft"] in pos:
            cells.setdefault((pos[r["base"]], pos[r["ft"]]), []).append(r)
    has_p = any(r.get("status") == "ok" and _finite(r.get("log10_pvalue")) for r in sub)
    has_stat = any(r.get("status") == "ok" and _finite(r.get("statistic")) for r in sub)
    kind = "neglog10p" if has_p or not (has_stat or _stat_has_no_pvalue(variant)) else "statistic"
    value = np.full((n, n), np.nan)
    state = np.full((n, n), "missing", dtype=object)
    text = np.full((n, n), "not run", dtype=object)
    sig = np.zeros((n, n), dtype=bool)
    for i in range(n):
        state[i, i], text[i, i] = "self", ""
    measured = set(cells)
    for (i, j), rows in cells.items():
        r = _pick(rows)
        targets = [(i, j)] + ([(j, i)] if (j, i) not in measured and i != j else [])
        for a, b in targets:
            if r.get("status") != "ok":
                state[a, b], text[a, b] = "failed", "failed"
                continue
            lp, st = r.get("log10_pvalue"), r.get("statistic")
            if kind == "neglog10p":
                if _finite(lp):
                    value[a, b], state[a, b] = -float(lp), "ok"
                    text[a, b] = pvalues.format_pvalue(lp, digits=1)
                    adj = r.get("log10_pvalue_adj")
                    level = r.get("significance") if _finite(r.get("significance")) else 0.01
                    sig[a, b] = bool(_finite(adj) and adj < math.log10(level))
                else:
                    state[a, b], text[a, b] = "no p-value", "no p"
            else:
                if _finite(st):
                    value[a, b], state[a, b], text[a, b] = float(st), "ok", f"{float(st):.3g}"
                else:
                    state[a, b], text[a, b] = "no p-value", "n/a"
    stat = variant.split(" ", 1)[0]
    what = {"jsd": "JSD", "l2": "mean ℓ2 distance"}.get(stat, "statistic")
    if stat == "mode":
        alphas = {float(r["alpha"]) for r in sub if _finite(r.get("alpha"))}
        what = f"loss at α={alphas.pop():g}" if len(alphas) == 1 else "loss at α"
    return Grid(variant, list(models), value, state, text, sig, kind, what)


# ==========================================================================================
# Figures
# ==========================================================================================
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def short_name(model: str) -> str:
    """A compact label: ``demo:a-docs`` → ``a-docs``; a local folder → its name; hub ids unchanged."""
    m = str(model)
    if m.startswith("demo:"):
        return m[5:]
    if m.startswith(("/", ".", "~")):
        return Path(m.rstrip("/")).name or m
    return m


def _pair_label(a, b) -> str:
    return f"{short_name(a)} vs {short_name(b)}"


def _family_breaks(models: list[str], lineage: Lineage | None) -> list[int]:
    if lineage is None:
        return []
    roots = [lineage.root(m) for m in models]
    return [i for i in range(1, len(models)) if roots[i] != roots[i - 1]]


def plot_heatmap(grids: list[Grid], path: Path, lineage: Lineage | None, correction: str, level: float) -> None:
    plt = _plt()
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle
    n = max(len(g.models) for g in grids)
    fs = 8 if n <= 8 else (7 if n <= 14 else 5.5)
    longest_text = max((len(t) for g in grids for t in g.text.flat), default=5)
    # every annotation fits its cell (bold digits are ~0.66 em wide)
    cell = max(0.62 if n <= 14 else 0.42, longest_text * fs * 0.66 / 72 + 0.08)
    char = (fs + 1) * 0.62 / 72  # inches per label character
    # panels are laid out in inches (cells the same size in every panel), greedily in two columns
    boxes = []
    for g in grids:
        side = max(cell * len(g.models), 1.9)
        longest = max((len(short_name(m)) for m in g.models), default=4)
        lw, lh = longest * char + 0.45, longest * char * 0.72 + 0.5
        boxes.append((side, lw, lh, lw + side + 1.75, 0.5 + side + lh))
    ncol = 1 if len(grids) == 1 else 2
    cols: list[list[int]] = [[] for _ in range(ncol)]
    heights = [0.0] * ncol
    for k, b in enumerate(boxes):
        c = int(np.argmin(heights))
        cols[c].append(k)
        heights[c] += b[4]
    colw = [max((boxes[k][3] for k in col), default=0.0) for col in cols]
    foot = 0.55
    W, H = sum(colw) + 0.2, max(heights) + foot + 0.1
    fig = plt.figure(figsize=(W, H))
    axes, caxes = [None] * len(grids), [None] * len(grids)
    x0 = 0.1
    for c, col in enumerate(cols):
        top = H - 0.1
        for k in col:
            side, lw, lh, w, h = boxes[k]
            bottom = top - 0.5 - side
            axes[k] = fig.add_axes(((x0 + lw) / W, bottom / H, side / W, side / H))
            caxes[k] = fig.add_axes(((x0 + lw + side + 0.2) / W, bottom / H, 0.15 / W, side / H))
            top -= h
        x0 += colw[c]
    for ax, cax, g in zip(axes, caxes, grids):
        k = len(g.models)
        if g.kind == "neglog10p":
            shown = np.minimum(g.value, CAP)
            cmap, norm = plt.get_cmap("YlOrRd"), Normalize(0, CAP)
        else:
            shown = g.value
            finite = shown[np.isfinite(shown)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            if hi - lo < 1e-9 * max(1.0, abs(lo)):  # one value: a small range around it
                pad = max(abs(lo) * 0.05, 1e-3)
                lo, hi = lo - pad, hi + pad
            cmap, norm = plt.get_cmap("viridis"), Normalize(lo, hi)
        cmap = cmap.with_extremes(bad="white")
        im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, norm=norm, interpolation="nearest")
        for i in range(k):
            for j in range(k):
                s = g.state[i, j]
                if s == "self":
                    ax.add_patch(Rectangle((j - .5, i - .5), 1, 1, facecolor="#d9d9d9", edgecolor="none"))
                    continue
                if s == "failed":
                    ax.add_patch(Rectangle((j - .5, i - .5), 1, 1, facecolor="#ececec", edgecolor="#8c8c8c",
                                           hatch="//", linewidth=0))
                    ax.text(j, i, "failed", ha="center", va="center", fontsize=fs, color="black",
                            fontweight="bold", bbox=dict(facecolor="white", edgecolor="none", pad=1.0))
                    continue
                if s in ("missing", "no p-value"):
                    ax.add_patch(Rectangle((j - .5, i - .5), 1, 1, facecolor="#f7f7f7", edgecolor="none"))
                    ax.text(j, i, g.text[i, j], ha="center", va="center", fontsize=fs - 1, color="#777777",
                            style="italic")
                    continue
                rgba = cmap(norm(shown[i, j]))
                lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                ax.text(j, i, g.text[i, j], ha="center", va="center", fontsize=fs,
                        color="white" if lum < 0.5 else "black",
                        fontweight="bold" if g.significant[i, j] else "normal")
        for b in _family_breaks(g.models, lineage):
            ax.axhline(b - .5, color="#333333", linewidth=1.6)
            ax.axvline(b - .5, color="#333333", linewidth=1.6)
        labels = [short_name(m) for m in g.models]
        ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=fs + 1)
        ax.set_yticks(range(k), labels, fontsize=fs + 1)
        ax.set_xticks(np.arange(-.5, k, 1), minor=True)
        ax.set_yticks(np.arange(-.5, k, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("fine-tuned model (θ₂)", fontsize=9)
        ax.set_ylabel("base model (θ₁)", fontsize=9)
        if g.kind == "neglog10p":
            ax.set_title(f"{g.variant}: p-value", fontsize=11)
            cb = fig.colorbar(im, cax=cax)
            if len(g.models) * cell >= 3:
                cb.set_ticks([0, 2, 10, 20, 30, 40, 50], labels=["1", "0.01", "1e-10", "1e-20", "1e-30", "1e-40",
                                                                   "≤1e-50"])
            else:
                cb.set_ticks([2, 20, 50], labels=["0.01", "1e-20", "≤1e-50"])
            cb.ax.tick_params(labelsize=8)
            cb.set_label("p-value (log scale)", fontsize=9)
            cb.ax.axhline(-math.log10(level), color="black", linewidth=1.2)
        else:
            ax.set_title(f"{g.variant}: {g.what} (no p-value)", fontsize=11)
            cb = fig.colorbar(im, cax=cax)
            cb.ax.tick_params(labelsize=8)
            cb.ax.yaxis.get_major_formatter().set_useOffset(False)
            cb.set_label("lower = more similar", fontsize=9)
    note = (f"Cells: p-value of the pair (the row's model as base); colour: −log10 p, capped at {CAP:g}. Bold: "
            f"significant at {level:g} after {correction} correction within the panel. Hatched: failed; "
            f"'not run': no result.")
    if lineage is not None:
        note += " Lines separate families (models sharing a root)."
    fig.text(0.1 / W, 0.1 / H, note, fontsize=7.5, color="#333333", ha="left", va="bottom", wrap=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ecdf_xy(p: np.ndarray):
    """Points of the empirical CDF as a step function over [0, 1] (for ``drawstyle='steps-post'``)."""
    p = np.sort(p)
    x = np.concatenate([[0.0], p, [1.0]])
    y = np.concatenate([[0.0], np.arange(1, len(p) + 1) / len(p), [1.0]])
    return x, y


def calibration_data(df) -> dict[str, np.ndarray]:
    """p-values of successful pairs known to be independent, per variant (only variants with p-values)."""
    if "lineage_dependent" not in df.columns:
        return {}
    out = {}
    for v, sub in df.groupby("variant", sort=False):
        sel = sub[(sub["status"] == "ok") & (sub["lineage_dependent"] == False)]  # noqa: E712
        lp = np.array([float(x) for x in sel["log10_pvalue"] if _finite(x)])
        if lp.size:
            out[v] = np.power(10.0, lp)
    return out


def plot_calibration(data: dict[str, np.ndarray], path: Path, level: float) -> None:
    plt = _plt()
    from scipy.stats import kstest
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="uniform (ideal)")
    for v, p in data.items():
        x, y = _ecdf_xy(p)
        extra = f", KS p={kstest(p, 'uniform').pvalue:.2g}" if p.size >= 3 else ""
        ax.plot(x, y, drawstyle="steps-post", linewidth=1.8, label=f"{v} (n={p.size}{extra})")
    ax.axvline(level, color="#b22222", linewidth=0.8, linestyle=":")
    ax.text(level, 0.98, f" {level:g}", color="#b22222", fontsize=8, va="top")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("p-value")
    ax.set_ylabel("fraction of independent pairs with p-value ≤ x")
    ax.set_title("Calibration on pairs known to be independent")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mode_curve_records(records: dict[str, dict]) -> list[tuple[str, dict]]:
    out = []
    for f, rec in records.items():
        if rec.get("stat") == "mode" and rec.get("status", "ok") == "ok":
            curve = (rec.get("extra") or {}).get("curve") or []
            if len(curve) > 3:
                out.append((f, rec))
    return out


def _dep_style(dep) -> tuple[str, str]:
    if dep is True:
        return "-", "dependent"
    if dep is False:
        return "--", "independent"
    return ":", ""


def plot_mode_curves(items: list[tuple[str, dict]], path: Path, lineage: Lineage | None) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    cmap = plt.get_cmap("tab10" if len(items) <= 10 else "tab20")
    for k, (_, rec) in enumerate(items):
        curve = sorted(rec["extra"]["curve"], key=lambda c: c["alpha"])
        al = [c["alpha"] for c in curve]
        dep = lineage.dependent(rec["base_model_id"], rec["ft_model_id"]) if lineage else None
        ls, dl = _dep_style(dep)
        flags = "".join(f" --{f}" for f in ("attn", "emb", "permute", "rotate") if (rec.get("args") or {}).get(f))
        label = _pair_label(rec["base_model_id"], rec["ft_model_id"]) + flags + (f" ({dl})" if dl else "")
        color = cmap(k % cmap.N)
        a1.plot(al, [c["loss"] for c in curve], ls, marker="o", ms=3.5, color=color, label=label)
        a2.plot(al, [c["barrier"] for c in curve], ls, marker="o", ms=3.5, color=color, label=label)
        alpha = rec["extra"].get("alpha")
        if alpha is not None:
            a1.plot([alpha], [rec["extra"]["loss_alpha"]], marker="D", ms=7, color=color, mfc="none")
    a1.set_title("Loss along the path θ(α)")
    a1.set_ylabel("LM loss (nats/token)")
    a2.set_title("Barrier: loss − linear interpolation of the endpoints")
    a2.set_ylabel("barrier (nats/token)")
    a2.axhline(0, color="grey", linewidth=0.8)
    for ax in (a1, a2):
        ax.set_xlabel("α (0 = base θ₁, 1 = fine-tuned θ₂ in the interpolated parts)")
        ax.grid(alpha=0.3)
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    fig.text(0.5, 0.995, "◇ marks the loss at the tested α (the statistic); solid: dependent, dashed: independent "
             "(lineage)" if lineage else "◇ marks the loss at the tested α (the statistic)",
             ha="center", va="top", fontsize=8, color="#333333")
    rows = math.ceil(len(labels) / 3)
    fig.tight_layout(rect=(0, min(0.45, 0.06 + 0.045 * rows), 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_layer_data(records: dict[str, dict], lineage: Lineage | None) -> dict[str, list[tuple[str, str, list, list]]]:
    """variant → [(base, ft, layers, −log10 p per layer)], only successful records with per-layer p-values."""
    out: dict[str, list] = {}
    for _, rec in records.items():
        if rec.get("status", "ok") != "ok":
            continue
        args = rec.get("args") or {}
        for aligned, res in ((False, rec), (True, rec.get("aligned"))):
            if not isinstance(res, dict):
                continue
            layers = [x for x in res.get("per_layer") or [] if _finite(x.get("log10_pvalue"))]
            if not layers:
                continue
            v = variant_of({"stat": rec.get("stat"), "aligned": aligned, "permute": args.get("permute"),
                            "rotate": args.get("rotate"), "attn": args.get("attn"), "emb": args.get("emb")})
            layers = sorted(layers, key=lambda x: x["layer"])
            out.setdefault(v, []).append((rec.get("base_model_id"), rec.get("ft_model_id"),
                                          [int(x["layer"]) for x in layers],
                                          [-float(x["log10_pvalue"]) for x in layers]))
    for v in out:
        key = (lambda t: (lineage.order_key(t[0]), lineage.order_key(t[1]))) if lineage else (lambda t: (t[0], t[1]))
        out[v].sort(key=key)
    return out


def plot_per_layer(data: dict[str, list], path: Path, lineage: Lineage | None, level: float) -> None:
    plt = _plt()
    from matplotlib.colors import Normalize
    variants = list(data)
    total = {v: len(data[v]) for v in variants}
    data = dict(data)
    for v in variants:  # many pairs: those with the strongest per-block evidence, in their usual order
        if len(data[v]) > MAX_ROWS:
            keep = set(sorted(range(len(data[v])), key=lambda i: -max(data[v][i][3]))[:MAX_ROWS])
            data[v] = [t for i, t in enumerate(data[v]) if i in keep]
    heights = []
    for v in variants:
        n = len(data[v])
        heights.append(3.8 if n <= MAX_LINES else max(3.5, 0.26 * n + 1.4))
    widths = [max(len(max(data[v], key=lambda t: len(t[2]))[2]) for v in variants)]
    width = 11 if widths[0] <= 12 else min(20, 7 + 0.35 * widths[0])
    fig, axes = plt.subplots(len(variants), 1, figsize=(width, sum(heights) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, v in zip(axes[:, 0], variants):
        items = data[v]
        if len(items) <= MAX_LINES:
            cmap = plt.get_cmap("tab10")
            for k, (a, b, layers, nlp) in enumerate(items):
                dep = lineage.dependent(a, b) if lineage else None
                ls, dl = _dep_style(dep)
                # later lines thinner and on top, so that coinciding pairs stay visible
                ax.plot(layers, nlp, ls, marker="osD^vph<>*"[k % 10], ms=8 - 0.45 * k, lw=2.4 - 0.15 * k,
                        color=cmap(k % 10), zorder=2 + k, label=_pair_label(a, b) + (f" ({dl})" if dl else ""))
            ax.axhline(-math.log10(level), color="#b22222", linewidth=0.8, linestyle=":")
            ax.text(1.0, -math.log10(level), f" p={level:g}", color="#b22222", fontsize=7, va="center",
                    transform=ax.get_yaxis_transform())
            from matplotlib.ticker import FuncFormatter
            ax.set_yscale("symlog", linthresh=1.0)
            top = max([max(t[3]) for t in items] + [-math.log10(level)])
            ax.set_ylim(0, top * 2.2 if top > 1 else 1.5 * max(top, -math.log10(level)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            ax.set_ylabel("−log10 p of the block\n(2 means p = 0.01)")
            ax.set_xlabel("block (layer index)")
            all_layers = sorted({l for t in items for l in t[2]})
            ax.set_xticks(all_layers if len(all_layers) <= 40 else all_layers[::max(1, len(all_layers) // 20)])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.06, 1.0), frameon=False)
            ax.set_title(f"{v}: evidence per block", fontsize=10)
        else:
            L = sorted({l for t in items for l in t[2]})
            col = {l: i for i, l in enumerate(L)}
            M = np.full((len(items), len(L)), np.nan)
            for r, (_, _, layers, nlp) in enumerate(items):
                for l, x in zip(layers, nlp):
                    M[r, col[l]] = x
            cmap = plt.get_cmap("YlOrRd").with_extremes(bad="#eeeeee")
            im = ax.imshow(np.minimum(M, CAP), cmap=cmap, norm=Normalize(0, CAP), aspect="auto",
                           interpolation="nearest")
            if M.size <= 600:
                for r in range(M.shape[0]):
                    for c in range(M.shape[1]):
                        if np.isfinite(M[r, c]):
                            ax.text(c, r, pvalues.format_pvalue(-M[r, c], digits=1), ha="center", va="center",
                                    fontsize=6.5, color="white" if M[r, c] > 0.6 * CAP else "black")
            labels = []
            for a, b, _, _ in items:
                dep = lineage.dependent(a, b) if lineage else None
                labels.append(_pair_label(a, b) + {True: "  [dep]", False: "  [ind]"}.get(dep, ""))
            ax.set_yticks(range(len(items)), labels, fontsize=7)
            ax.set_xticks(range(len(L)), [str(l) for l in L] if len(L) <= 40 else
                          [str(l) if i % 5 == 0 else "" for i, l in enumerate(L)], fontsize=7)
            ax.set_xlabel("block (layer index)")
            ax.set_title(f"{v}: per-block p-value of each pair" if total[v] == len(items) else
                         f"{v}: per-block p-value of the {len(items)} pairs (of {total[v]}) with the strongest "
                         f"per-block evidence", fontsize=10)
            cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
            cb.set_ticks([0, 2, 10, 20, 30, 40, 50], labels=["1", "0.01", "1e-10", "1e-20", "1e-30", "1e-40",
                                                               "≤1e-50"])
            cb.set_label("p-value (colour: −log10 p, capped at 50)", fontsize=8)
            if lineage is not None:
                cb.ax.text(0.5, -0.02, "", transform=cb.ax.transAxes)
    if lineage is not None:
        lines = any(len(data[v]) <= MAX_LINES for v in variants)
        image = any(len(data[v]) > MAX_LINES for v in variants)
        fig.text(0.01, 0.005, "Lineage: " + "; ".join(
            ([("[dep] / solid" if image else "solid") + ": the pair shares a root",
              ("[ind] / dashed" if image else "dashed") + ": independent"] if lines else
             ["[dep]: the pair shares a root", "[ind]: independent"])) + ".", fontsize=7.5, color="#333333")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ==========================================================================================
# Records and report
# ==========================================================================================
def load_records(folder: Path) -> dict[str, dict]:
    """file (relative to the folder, as in the table) → record, for every readable result pickle."""
    from .results import load_record
    out = {}
    for f in sorted(folder.rglob("*.p")) + sorted(folder.rglob("*.pkl")):
        try:
            rec = load_record(f)
        except Exception:  # noqa: BLE001 - listed as unreadable by load_results
            continue
        if isinstance(rec, dict):
            out[str(f.relative_to(folder))] = rec
    return out


def _md(x) -> str:
    s = "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)
    return s.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _size(n) -> str:
    if not _finite(n):
        return "?"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _models_section(records: dict[str, dict]) -> tuple[list[str], list[str]]:
    seen: dict[str, list[dict]] = {}
    for rec in records.values():
        for role in ("base", "ft"):
            m = (rec.get("models") or {}).get(role)
            if isinstance(m, dict) and m.get("id"):
                seen.setdefault(m["id"], []).append(m)
    rows, warnings = [], []
    for mid in sorted(seen):
        provs = seen[mid]
        sigs = {tuple((f.get("file"), f.get("sha256")) for f in p.get("files") or []) for p in provs}
        if len(sigs) > 1:
            warnings.append(f"`{mid}` was seen with {len(sigs)} different sets of weight files across the "
                            f"results; the weights changed during the run.")
        p = provs[-1]
        resolved = p.get("commit") or p.get("revision") or ""
        files = "; ".join(f"{f.get('file')} ({_size(f.get('size'))}, sha256 {str(f.get('sha256') or '?')[:12]})"
                          for f in p.get("files") or []) or "—"
        rows.append([f"`{mid}`", resolved[:12] if resolved else "—", f"`{p.get('path') or ''}`", files])
    if not rows:
        return ["No provenance recorded (results from before provenance was kept, or only failures)."], warnings
    return [_table(["model", "revision", "path", "weight files"], rows)], warnings


_HIDE_OPTS = {"stat", "base_model_id", "ft_model_id", "save", "device", "mem_budget_gb", "generated_dir"}


def _options_section(records: dict[str, dict]) -> str:
    values: dict[str, dict[str, set]] = {}
    for rec in records.values():
        stat = rec.get("stat") or "?"
        for k, v in (rec.get("args") or {}).items():
            if k in _HIDE_OPTS:
                continue
            values.setdefault(k, {}).setdefault(stat, set()).add(json.dumps(v, sort_keys=True, default=str))
    rows = []
    all_stats = {s for per in values.values() for s in per}
    for k in sorted(values):
        groups: dict[str, list[str]] = {}
        for stat, vals in values[k].items():
            groups.setdefault(", ".join(sorted(vals)), []).append(stat)
        for v, stats in sorted(groups.items(), key=lambda kv: sorted(kv[1])):
            rows.append([k, v, "all" if len(groups) == 1 and set(stats) == all_stats else ", ".join(sorted(stats))])
    return _table(["option", "value", "statistics"], rows) if rows else "No options recorded."


def _timings_section(records: dict[str, dict]) -> str:
    pair_stages = ("load", "transform", "data", "align", "eval")
    per_pair: dict[tuple, dict[str, float]] = {}
    stat_times: dict[str, list[float]] = {}
    for rec in records.values():
        if rec.get("status", "ok") != "ok":
            continue
        key = (rec.get("base_model_id"), rec.get("ft_model_id"), json.dumps(
            {k: v for k, v in (rec.get("args") or {}).items() if k not in ("stat", "save")}, sort_keys=True,
            default=str))
        t = rec.get("timings") or {}
        pp = per_pair.setdefault(key, {})
        for s in pair_stages:
            if _finite(t.get(s)):
                pp[s] = max(pp.get(s, 0.0), float(t[s]))
        if _finite(rec.get("time")):
            pp["total"] = max(pp.get("total", 0.0), float(rec["time"]))
        for s in ("statistic", "aligned_statistic", "save"):
            if _finite(t.get(s)):
                name = f"{s} ({rec.get('stat')})" if s != "save" else "save"
                stat_times.setdefault(name, []).append(float(t[s]))
    rows = []

    def add(name, xs):
        if xs:
            rows.append([name, len(xs), f"{sum(xs):.2f}", f"{float(np.median(xs)):.3f}", f"{max(xs):.3f}"])
    for s in pair_stages:
        add(s, [pp[s] for pp in per_pair.values() if s in pp])
    for name in sorted(stat_times):
        add(name, stat_times[name])
    add("total per pair", [pp["total"] for pp in per_pair.values() if "total" in pp])
    if not rows:
        return "No timings recorded."
    return ("Seconds. Pair-level stages (load, transform, data, align, eval) are counted once per pair; "
            "the statistic stages once per result.\n\n" +
            _table(["stage", "count", "total s", "median s", "max s"], rows))


def _when(folder: Path, files: list[str]) -> str:
    times = []
    for f in files:
        try:
            times.append((folder / f).stat().st_mtime)
        except OSError:
            pass
    if not times:
        return "unknown"
    fmt = lambda t: _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
    lo, hi = min(times), max(times)
    return fmt(lo) if hi - lo < 1 else f"{fmt(lo)} – {fmt(hi)}"


def _planned_but_missing(folder: Path, launch: dict) -> list[list]:
    """Results listed in ``launch.json`` whose file does not exist (jobs lost or still running)."""
    rows = []
    for p in launch.get("pairs") or []:
        if not isinstance(p, dict):
            continue
        for stat, res in zip(p.get("stats") or [], p.get("results") or []):
            f = Path(res)
            if not f.is_absolute() and not f.exists():
                f = folder / p.get("dir", "") / f.name
            if not f.exists():
                rows.append([f"`{p.get('base')}`", f"`{p.get('ft')}`", stat, p.get("status"), p.get("error")])
    return rows


def _rel_link(target: Path, out: Path) -> str:
    return os.path.relpath(target, out).replace(os.sep, "/")


def _write_tables(df, out: Path) -> tuple[dict[str, Path], str | None]:
    """summary.csv and, with pyarrow, summary.parquet; returns the files and why parquet is missing."""
    written: dict[str, Path] = {}
    df.to_csv(out / "summary.csv", index=False)
    written["summary.csv"] = out / "summary.csv"
    parquet_note = None
    try:
        import pyarrow  # noqa: F401
        df.to_parquet(out / "summary.parquet", index=False)
        written["summary.parquet"] = out / "summary.parquet"
    except ImportError:
        parquet_note = "summary.parquet not written: pyarrow is not installed."
    except Exception as e:  # noqa: BLE001
        parquet_note = f"summary.parquet not written: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return written, parquet_note


def _write_figures(df, records: dict[str, dict], lin: Lineage | None, out: Path, cname: str,
                   level: float) -> dict[str, str | None]:
    """Draw every figure there is something to show for; name → None (written) or why it was not drawn."""
    figs: dict[str, str | None] = {}  # name -> None (written) or why skipped
    for name in _FIGURES:
        stale = out / f"{name}.png"
        if stale.exists():
            stale.unlink()
    variants = [v for v in dict.fromkeys(df["variant"]) if v != "?"]
    grids = [heatmap_matrix(df, v, lineage=lin) for v in variants]
    grids = [g for g in grids if len(g.models) >= 2]
    if grids:
        plot_heatmap(grids, out / "heatmap.png", lin, cname, level)
        figs["heatmap"] = None
    else:
        figs["heatmap"] = "no pair of models with a result."
    if lin is None:
        figs["calibration"] = ("no lineage known (give --lineage FILE; the demo family's lineage is used "
                               "automatically when every model is demo:*).")
    else:
        cal = calibration_data(df)
        if cal:
            plot_calibration(cal, out / "calibration.png", level)
            figs["calibration"] = None
        else:
            figs["calibration"] = "no successful p-value of a pair known to be independent."
    mc = mode_curve_records(records)
    if mc:
        plot_mode_curves(mc, out / "mode_curves.png", lin)
        figs["mode_curves"] = None
    else:
        figs["mode_curves"] = "no successful `mode` result with a curve of more than 3 points (run with --alphas)."
    pl = per_layer_data(records, lin)
    if pl:
        plot_per_layer(pl, out / "per_layer.png", lin, level)
        figs["per_layer"] = None
    else:
        figs["per_layer"] = "no successful result with per-block p-values (cos, csh, match)."

    return figs


def _markdown(folder: Path, out: Path, df, records: dict[str, dict], models: list[str], lin: Lineage | None,
              level: float, cname: str, figs: dict[str, str | None], written: dict[str, Path],
              parquet_note: str | None) -> str:
    """The text of report.md."""
    variants = [v for v in dict.fromkeys(df["variant"]) if v != "?"]
    import pandas as pd
    L: list[str] = []
    L.append(f"# Model tracing report: `{folder.name or folder}`")
    L.append("")
    commits = sorted({str(r.get("commit")) for r in records.values() if r.get("commit")})
    hosts = sorted({str(r.get("host")) for r in records.values() if r.get("host")})
    stats = list(dict.fromkeys(s for s in df["stat"] if isinstance(s, str)))
    n_pairs = len({(a, b) for a, b in zip(df["base"], df["ft"]) if isinstance(a, str)})
    launch = {}
    try:
        launch = json.loads((folder / "launch.json").read_text())
    except (OSError, ValueError):
        pass
    L.append("## What was run")
    L.append("")
    L.append(f"- results folder: `{folder}` ({len(records)} result files, {n_pairs} pairs, "
             f"{len(models)} models)")
    L.append(f"- statistics: {', '.join(f'`{s}`' for s in stats) or '—'}")
    L.append(f"- toolkit commit: {', '.join(f'`{c}`' for c in commits) or 'unknown'}"
             + (" (uncommitted changes present)" if any(c.endswith("-dirty") for c in commits) else ""))
    L.append(f"- when (result files written): {_when(folder, list(df['file'].dropna()))}")
    if hosts:
        L.append(f"- host(s): {', '.join(hosts[:5])}{' …' if len(hosts) > 5 else ''}")
    if launch.get("cluster"):
        L.append(f"- launched on: {launch['cluster']} ({launch.get('time', '')})")
    L.append(f"- report written: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}; verdicts at level "
             f"{level:g}, corrected with {cname} within each grid (statistic × transform × raw/aligned)")
    L.append(f"- lineage: {lin.source if lin else 'unknown'}")
    L.append("")
    L.append("### Models")
    L.append("")
    msec, mwarn = _models_section(records)
    L += msec
    for w in mwarn:
        L.append(f"\n**Warning:** {w}")
    L.append("")
    L.append("### Options")
    L.append("")
    L.append(_options_section(records))
    L.append("")

    L.append("## Verdicts")
    L.append("")
    L.append(f"A p-value below {level:g} is evidence that the two models are not independent (one derived from "
             f"the other, or both from a common ancestor); a p-value above it is not evidence of independence. "
             f"*raw* uses each pair's p-value alone; *{cname}* accounts for every pair tested in the same grid.")
    L.append("")
    if lin is not None and "lineage_dependent" in df.columns:
        rows = []
        for v in variants:
            sub = df[(df["variant"] == v) & (df["status"] == "ok")]
            sub = sub[[_finite(x) for x in sub["log10_pvalue"]]]
            if sub.empty:
                continue
            dep = sub[sub["lineage_dependent"] == True]  # noqa: E712
            ind = sub[sub["lineage_dependent"] == False]  # noqa: E712
            rows.append([v, f"{int((dep['verdict'] == 'dependent').sum())}/{len(dep)}",
                         f"{int((dep['verdict_adj'] == 'dependent').sum())}/{len(dep)}",
                         f"{int((ind['verdict'] == 'dependent').sum())}/{len(ind)}",
                         f"{int((ind['verdict_adj'] == 'dependent').sum())}/{len(ind)}"])
        if rows:
            L.append(f"Against the lineage ({lin.source}):")
            L.append("")
            L.append(_table(["grid", "related pairs found (raw)", f"related found ({cname})",
                             "independent pairs flagged (raw)", f"independent flagged ({cname})"], rows))
            L.append("")
    for v in variants:
        sub = df[df["variant"] == v]
        order = sorted(range(len(sub)), key=lambda i: ((lin.order_key(sub.iloc[i]["base"]),
                                                         lin.order_key(sub.iloc[i]["ft"])) if lin else
                                                        (str(sub.iloc[i]["base"]), str(sub.iloc[i]["ft"]))))
        L.append(f"### {v}")
        L.append("")
        has_p = any(_finite(x) for x in sub["log10_pvalue"])
        header = ["base", "fine-tuned", "statistic"]
        header += ["p-value", f"p ({cname})", "verdict (raw)", f"verdict ({cname})"] if has_p else ["verdict"]
        if lin is not None:
            header.append("lineage")
        rows = []
        for i in order:
            r = sub.iloc[i]
            st = r["statistic"]
            stat_s = f"{float(st):.4g}" if _finite(st) else ""
            extras = []
            for k, lab in (("barrier", "barrier"), ("median_cos", "median cos")):
                if k in r and _finite(r[k]):
                    extras.append(f"{lab} {float(r[k]):.3g}")
            if extras:
                stat_s += f" ({', '.join(extras)})"
            row = [f"`{r['base']}`", f"`{r['ft']}`", stat_s]
            if has_p:
                row += [r["pvalue_str"], r["pvalue_adj_str"], r["verdict"] or "", r["verdict_adj"] or ""]
            else:
                row += [r["verdict"] if r["status"] != "ok" else "no p-value"]
            if lin is not None:
                d = r.get("lineage_dependent")
                row.append("unknown" if d is None or pd.isna(d) else ("related" if bool(d) else "independent"))
            rows.append(row)
        L.append(_table(header, rows))
        L.append("")

    L.append("## Failures")
    L.append("")
    bad = df[df["status"] != "ok"]
    if bad.empty:
        L.append("None: every result succeeded.")
    else:
        L.append(f"{len(bad)} result(s) failed or could not be read; they are left out of the corrections and "
                 f"marked in the heatmap.")
        L.append("")
        L.append(_table(["base", "fine-tuned", "statistic", "status", "error", "job", "file"],
                        [[f"`{r['base']}`" if isinstance(r["base"], str) else "?",
                          f"`{r['ft']}`" if isinstance(r["ft"], str) else "?",
                          r["stat"] if isinstance(r["stat"], str) else "?", r["status"],
                          r["error"], r.get("job_id"), f"`{r['file']}`"] for _, r in bad.iterrows()]))
    missing = _planned_but_missing(folder, launch)
    if missing:
        L.append("")
        L.append(f"{len(missing)} planned result(s) (launch.json) have no result file:")
        L.append("")
        L.append(_table(["base", "fine-tuned", "statistic", "launch status", "error"], missing))
    L.append("")

    L.append("## Figures")
    L.append("")
    captions = {
        "heatmap": "p-value of every pair, per statistic (colour: −log10 p, capped at 50; rows: base model).",
        "calibration": "Empirical CDF of the p-values of pairs known to be independent; a calibrated test "
                       "follows the diagonal.",
        "mode_curves": "Loss and barrier along the interpolation path for the `mode` runs with `--alphas`.",
        "per_layer": "Per-block p-values: which blocks carry the evidence.",
    }
    for name in _FIGURES:
        L.append(f"### {name.replace('_', ' ')}")
        L.append("")
        if figs[name] is None:
            L.append(captions[name])
            L.append("")
            L.append(f"![{name}]({_rel_link(out / f'{name}.png', out)})")
        else:
            L.append(f"Not drawn: {figs[name]}")
        L.append("")

    L.append("## Timings")
    L.append("")
    L.append(_timings_section(records))
    L.append("")

    L.append("## What the p-values mean")
    L.append("")
    for s in stats:
        L.append(f"- {MEANING.get(s, f'`{s}`: see DESIGN §5.')}")
    L.append("")
    L.append("## Files")
    L.append("")
    about = {"summary.csv": ": one row per pair × statistic × raw/aligned; `log10_pvalue` and `log10_pvalue_adj` "
                            "are authoritative (`pvalue` may underflow to 0)"}
    for name, p in written.items():
        L.append(f"- [{name}]({_rel_link(p, out)}){about.get(name, '')}")
    if parquet_note:
        L.append(f"- {parquet_note}")
    L.append("")
    return "\n".join(L)


def write_report(folder, out=None, lineage=None, significance=None, correction: str = "holm") -> Path:
    """Write the table, figures and ``report.md`` for a results folder; return the report.md path.

    ``lineage``: a file, a mapping (see :func:`parse_lineage`) or None (the demo family's lineage
    when every model is ``demo:*``). ``significance``: the level of the verdicts (default: the
    level the results were run with, else 0.01)."""
    from .results import load_results
    folder = Path(folder)
    if not folder.is_dir():
        raise TracingError(f"results folder {folder} does not exist" if not folder.exists()
                           else f"{folder} is not a folder; give the folder that holds the result pickles")
    if significance is not None and not 0.0 < float(significance) < 1.0:
        raise TracingError(f"--significance {significance} must be in (0, 1), e.g. 0.01")
    if correction not in CORRECTIONS:
        raise TracingError(f"--correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    raw = load_results(folder)
    if raw.empty:
        raise TracingError(f"no results in {folder} (no *.p or *.pkl result files); run main.py --save or "
                           f"launch.py --out {folder} first")
    out = Path(out) if out is not None else folder
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(folder)
    models = sorted({m for c in ("base", "ft") if c in raw.columns for m in raw[c] if isinstance(m, str)})
    lin = resolve_lineage(lineage, models)
    if significance is None:
        levels = {float(s) for s in raw.get("significance", []) if _finite(s)}
        significance = levels.pop() if len(levels) == 1 else 0.01
    level = float(significance)
    df = summary_table(raw, correction=correction, significance=level, lineage=lin)
    cname = CORRECTIONS[correction][0]

    written, parquet_note = _write_tables(df, out)
    figs = _write_figures(df, records, lin, out, cname, level)
    text = _markdown(folder, out, df, records, models, lin, level, cname, figs, written, parquet_note)
    report = out / "report.md"
    tmp = out / ".report.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, report)
    return report


# ==========================================================================================
# CLI
# ==========================================================================================
def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m tracing.report",
                                description="Summarise a results folder: summary.csv, figures and report.md.")
    p.add_argument("folder", help="the results folder (e.g. results/<run>)")
    p.add_argument("--out", default=None, help="where to write (default: the results folder)")
    p.add_argument("--lineage", default=None,
                   help="JSON/YAML lineage file ({'models': {name: {'parent': ...}}}); automatic for demo:* models")
    p.add_argument("--significance", type=float, default=None,
                   help="level of the verdicts (default: the runs' --significance, else 0.01)")
    p.add_argument("--correction", choices=sorted(CORRECTIONS), default="holm",
                   help="multiple-testing correction within each grid: holm (family-wise) or bh (false discovery rate)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    path = write_report(args.folder, out=args.out, lineage=args.lineage, significance=args.significance,
                        correction=args.correction)
    print(path)
    return 0


if __name__ == "__main__":
    from .cli_util import run_cli
    sys.exit(run_cli(main))
