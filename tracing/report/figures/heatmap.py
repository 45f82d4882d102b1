"""heatmap.png: per variant, the model × model grid of −log10 p (or of the statistic)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...fileio import atomic_open
from ..grid import Grid
from .common import CAP, family_breaks, plt, pvalue_ticks, short_name


def _layout(grids: list[Grid], fs: float, cell: float):
    """Panels laid out in inches (cells the same size in every panel), greedily in two columns."""
    char = (fs + 1) * 0.62 / 72  # inches per label character
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
    W, H = sum(colw) + 0.2, max(heights) + 0.75 + 0.1
    fig = plt().figure(figsize=(W, H))
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
    return fig, axes, caxes, W, H


def _scale(g: Grid):
    from matplotlib.colors import Normalize
    if g.kind == "neglog10p":
        return np.minimum(g.value, CAP), plt().get_cmap("YlOrRd"), Normalize(0, CAP)
    shown = g.value
    finite = shown[np.isfinite(shown)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-9 * max(1.0, abs(lo)):  # one value: a small range around it
        pad = max(abs(lo) * 0.05, 1e-3)
        lo, hi = lo - pad, hi + pad
    return shown, plt().get_cmap("viridis"), Normalize(lo, hi)


def _cell(ax, g: Grid, i: int, j: int, rgba, fs: float) -> None:
    from matplotlib.patches import Rectangle
    s = g.state[i, j]
    box = dict(facecolor="white", edgecolor="none", pad=1.0)
    if s == "self":
        ax.add_patch(Rectangle((j - .5, i - .5), 1, 1, facecolor="#d9d9d9", edgecolor="none"))
    elif s in ("failed", "unreadable"):
        ax.add_patch(Rectangle((j - .5, i - .5), 1, 1, facecolor="#ececec", edgecolor="#8c8c8c",
                               hatch="//" if s == "failed" else "xx", linewidth=0))
        ax.text(j, i, g.text[i, j], ha="center", va="center", fontsize=fs if s == "failed" else fs - 1.5,
                color="black", fontweight="bold", bbox=box)
    elif s == "reverse":
        ax.add_patch(Rectangle((j - .5, i - .5), 1, 1, facecolor="#fbfbfb", edgecolor="none"))
        ax.text(j, i, g.text[i, j], ha="center", va="center", fontsize=fs + 1, color="#9a9a9a")
    elif s in ("missing", "no p-value"):
        ax.add_patch(Rectangle((j - .5, i - .5), 1, 1, facecolor="#f7f7f7", edgecolor="none"))
        ax.text(j, i, g.text[i, j], ha="center", va="center", fontsize=fs - 1, color="#777777", style="italic")
    else:
        lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
        ax.text(j, i, g.text[i, j], ha="center", va="center", fontsize=fs, color="white" if lum < 0.5 else "black",
                fontweight="bold" if g.significant[i, j] else "normal")


def _panel(fig, ax, cax, g: Grid, lineage, fs: float, cell: float, level: float) -> None:
    k = len(g.models)
    shown, cmap, norm = _scale(g)
    cmap = cmap.with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, norm=norm, interpolation="nearest")
    for i in range(k):
        for j in range(k):
            _cell(ax, g, i, j, cmap(norm(shown[i, j])), fs)
    for b in family_breaks(g.models, lineage):
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
    cb = fig.colorbar(im, cax=cax)
    cb.ax.tick_params(labelsize=8)
    if g.kind == "neglog10p":
        ax.set_title(f"{g.variant}: p-value", fontsize=11)
        pvalue_ticks(cb, compact=len(g.models) * cell < 3)
        cb.set_label("p-value (log scale)", fontsize=9)
        cb.ax.axhline(-math.log10(level), color="black", linewidth=1.2)
    else:
        ax.set_title(f"{g.variant}: {g.what} (no p-value)", fontsize=11)
        cb.ax.yaxis.get_major_formatter().set_useOffset(False)
        cb.set_label("lower = more similar", fontsize=9)


def caption(correction: str, level: float, lineage, unplaced: int = 0) -> str:
    note = (f"Cell (row, column): the pair run with the row's model as base (θ₁) and the column's as fine-tuned "
            f"(θ₂); colour: −log10 p, capped at {CAP:g}. Bold: significant at {level:g} after {correction} "
            f"correction within the panel. ↔: not run this way round (the pair with the roles swapped was; see "
            f"the cell across the diagonal). 'not run': no result. Hatched: failed or unreadable result file.")
    if unplaced:
        note += f" {unplaced} unreadable result file(s) name no pair and are not shown."
    if lineage is not None:
        note += " Lines separate families (models sharing a root)."
    return note


def plot_heatmap(grids: list[Grid], path: Path, lineage, correction: str, level: float, unplaced: int = 0) -> None:
    n = max(len(g.models) for g in grids)
    fs = 8 if n <= 8 else (7 if n <= 14 else 5.5)
    longest_text = max((len(t) for g in grids for t in g.text.flat), default=5)
    # every annotation fits its cell (bold digits are ~0.66 em wide)
    cell = max(0.62 if n <= 14 else 0.42, longest_text * fs * 0.66 / 72 + 0.08)
    fig, axes, caxes, W, H = _layout(grids, fs, cell)
    for ax, cax, g in zip(axes, caxes, grids):
        _panel(fig, ax, cax, g, lineage, fs, cell, level)
    fig.text(0.1 / W, 0.1 / H, caption(correction, level, lineage, unplaced), fontsize=7.5, color="#333333",
             ha="left", va="bottom", wrap=True)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, dpi=110, format="png")
    plt().close(fig)
