"""per_layer.png: per-block −log10 p of every pair (which blocks carry the evidence)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...fileio import atomic_open
from ... import pvalues
from ...results import variant_of
from ..verdicts import finite
from .common import CAP, dep_style, pair_label, plt, pvalue_ticks

#: above this many pairs the per-layer figure becomes a pair × block image instead of lines
MAX_LINES = 10
#: at most this many pairs (rows) in the per-layer image: those with the strongest per-block evidence
MAX_ROWS = 60


def per_layer_data(records: dict[str, dict], lineage) -> dict[str, list[tuple[str, str, list, list]]]:
    """variant → [(base, ft, layers, −log10 p per layer)], only successful records with per-layer p-values."""
    out: dict[str, list] = {}
    for _, rec in records.items():
        if rec.get("status", "ok") != "ok":
            continue
        args = rec.get("args") or {}
        for aligned, res in ((False, rec), (True, rec.get("aligned"))):
            if not isinstance(res, dict):
                continue
            layers = [x for x in res.get("per_layer") or [] if finite(x.get("log10_pvalue"))]
            if not layers:
                continue
            v = variant_of({**args, "stat": rec.get("stat"), "aligned": aligned})
            layers = sorted(layers, key=lambda x: x["layer"])
            out.setdefault(v, []).append((rec.get("base_model_id"), rec.get("ft_model_id"),
                                          [int(x["layer"]) for x in layers],
                                          [-float(x["log10_pvalue"]) for x in layers]))
    for v in out:
        key = (lambda t: (lineage.order_key(t[0]), lineage.order_key(t[1]))) if lineage else (lambda t: (t[0], t[1]))
        out[v].sort(key=key)
    return out


def _lines(ax, v: str, items: list, lineage, level: float) -> None:
    from matplotlib.ticker import FuncFormatter
    cmap = plt().get_cmap("tab10")
    for k, (a, b, layers, nlp) in enumerate(items):
        ls, dl = dep_style(lineage.dependent(a, b) if lineage else None)
        # later lines thinner and on top, so that coinciding pairs stay visible
        ax.plot(layers, nlp, ls, marker="osD^vph<>*"[k % 10], ms=8 - 0.45 * k, lw=2.4 - 0.15 * k,
                color=cmap(k % 10), zorder=2 + k, label=pair_label(a, b) + (f" ({dl})" if dl else ""))
    ax.axhline(-math.log10(level), color="#b22222", linewidth=0.8, linestyle=":")
    ax.text(1.0, -math.log10(level), f" p={level:g}", color="#b22222", fontsize=7, va="center",
            transform=ax.get_yaxis_transform())
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


def _image(fig, ax, v: str, items: list, total: int, lineage) -> None:
    from matplotlib.colors import Normalize
    L = sorted({l for t in items for l in t[2]})
    col = {l: i for i, l in enumerate(L)}
    M = np.full((len(items), len(L)), np.nan)
    for r, (_, _, layers, nlp) in enumerate(items):
        for l, x in zip(layers, nlp):
            M[r, col[l]] = x
    cmap = plt().get_cmap("YlOrRd").with_extremes(bad="#eeeeee")
    im = ax.imshow(np.minimum(M, CAP), cmap=cmap, norm=Normalize(0, CAP), aspect="auto", interpolation="nearest")
    if M.size <= 600:
        for r in range(M.shape[0]):
            for c in range(M.shape[1]):
                if np.isfinite(M[r, c]):
                    ax.text(c, r, pvalues.format_pvalue(-M[r, c], digits=1), ha="center", va="center",
                            fontsize=6.5, color="white" if M[r, c] > 0.6 * CAP else "black")
    labels = []
    for a, b, _, _ in items:
        dep = lineage.dependent(a, b) if lineage else None
        labels.append(pair_label(a, b) + {True: "  [dep]", False: "  [ind]"}.get(dep, ""))
    ax.set_yticks(range(len(items)), labels, fontsize=7)
    ax.set_xticks(range(len(L)), [str(l) for l in L] if len(L) <= 40 else
                  [str(l) if i % 5 == 0 else "" for i, l in enumerate(L)], fontsize=7)
    ax.set_xlabel("block (layer index)")
    ax.set_title(f"{v}: per-block p-value of each pair" if total == len(items) else
                 f"{v}: per-block p-value of the {len(items)} pairs (of {total}) with the strongest "
                 f"per-block evidence", fontsize=10)
    cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    pvalue_ticks(cb)
    cb.set_label("p-value (colour: −log10 p, capped at 50)", fontsize=8)


def _legend_note(data: dict[str, list]) -> str:
    lines = any(len(items) <= MAX_LINES for items in data.values())
    image = any(len(items) > MAX_LINES for items in data.values())
    parts = ([("[dep] / solid" if image else "solid") + ": the pair shares a root",
              ("[ind] / dashed" if image else "dashed") + ": independent"] if lines else
             ["[dep]: the pair shares a root", "[ind]: independent"])
    return "Lineage: " + "; ".join(parts) + "."


def plot_per_layer(data: dict[str, list], path: Path, lineage, level: float) -> None:
    variants = list(data)
    total = {v: len(data[v]) for v in variants}
    data = dict(data)
    for v in variants:  # many pairs: those with the strongest per-block evidence, in their usual order
        if len(data[v]) > MAX_ROWS:
            keep = set(sorted(range(len(data[v])), key=lambda i: -max(data[v][i][3]))[:MAX_ROWS])
            data[v] = [t for i, t in enumerate(data[v]) if i in keep]
    heights = [3.8 if len(data[v]) <= MAX_LINES else max(3.5, 0.26 * len(data[v]) + 1.4) for v in variants]
    widths = [max(len(max(data[v], key=lambda t: len(t[2]))[2]) for v in variants)]
    width = 11 if widths[0] <= 12 else min(20, 7 + 0.35 * widths[0])
    fig, axes = plt().subplots(len(variants), 1, figsize=(width, sum(heights) + 0.6),
                               gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, v in zip(axes[:, 0], variants):
        if len(data[v]) <= MAX_LINES:
            _lines(ax, v, data[v], lineage, level)
        else:
            _image(fig, ax, v, data[v], total[v], lineage)
    if lineage is not None:
        fig.text(0.01, 0.005, _legend_note(data), fontsize=7.5, color="#333333")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, dpi=110, format="png")
    plt().close(fig)
