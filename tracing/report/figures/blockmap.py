"""blockmap.png: per pair with a block map, the θ₁ block × θ₂ block grid of −log10 p with the
inferred correspondence drawn on it; and the correspondence as lines of report.md."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ... import correspondence as claims
from ...results import variant_of
from .common import CAP, pair_label, plt, pvalue_ticks

#: at most this many pairs get a panel (those with the most matched block pairs)
MAX_PANELS = 12


def blockmap_data(records: dict[str, dict], mtime: dict | None = None,
                  level: float | None = None) -> list[tuple]:
    """[(variant, base, ft, grid of log10 p [L₁, L₂], correspondence, why none, matched cells)] of the
    successful records that hold a block map (``per_pair``); of several results of one pair and variant, the newest
    (by ``mtime``, keyed like ``records``) counts.  The correspondence is claimed from the grid at
    ``level`` (default: each run's ``--significance``), empty when the pair is not significant."""
    out = {}
    for key in sorted(records, key=lambda k: (mtime or {}).get(k, 0.0)):
        rec = records[key]
        if rec.get("status", "ok") != "ok" or not rec.get("per_pair"):
            continue
        grid = np.array([[np.nan if v is None else float(v) for v in row] for row in rec["per_pair"]], dtype=float)
        if grid.ndim != 2 or grid.size == 0:
            continue
        v = variant_of({**(rec.get("args") or {}), "stat": rec.get("stat"), "aligned": False})
        a, b = rec.get("base_model_id"), rec.get("ft_model_id")
        sig = level if level is not None else float((rec.get("args") or {}).get("significance") or 0.01)
        corr = claims.correspondence(grid, sig)
        out[v, a, b] = (v, a, b, grid, corr, claims.note(grid, sig, corr), int(claims.matched_cells(grid, sig).sum()))
    return sorted(out.values(), key=lambda t: (t[0], str(t[1]), str(t[2])))


def correspondence_lines(items: list) -> list[str]:
    """report.md lines: per pair with a block map, its shape, matched pairs and correspondence."""
    if not items:
        return []
    lines = ["Block maps (every block of θ₁ tested against every block of θ₂; matched: p < 1e-4 and significant "
             "after Holm over the pair's grid). Correspondence, θ₁ block → θ₂ block (`none`: no matched source), "
             "shown only for significant pairs:", ""]
    for v, a, b, grid, corr, why, matched in items:
        L1, L2 = grid.shape
        lines.append(f"- `{v}` {a} vs {b} ({L1}×{L2} blocks, {matched} matched): {claims.text(corr, L2, why)}")
    return lines + [""]


def plot_blockmaps(items: list, path: Path) -> None:
    from matplotlib.colors import Normalize
    items = sorted(items, key=lambda t: -t[6])[:MAX_PANELS]
    n = len(items)
    ncol = 1 if n == 1 else 2
    nrow = math.ceil(n / ncol)
    fig, axes = plt().subplots(nrow, ncol, figsize=(5.6 * ncol, 4.6 * nrow), squeeze=False)
    cmap = plt().get_cmap("YlOrRd").with_extremes(bad="#eeeeee")
    for ax, (v, a, b, grid, corr, why, _matched) in zip(axes.flat, items):
        L1, L2 = grid.shape
        im = ax.imshow(np.minimum(-grid, CAP), cmap=cmap, norm=Normalize(0, CAP), aspect="auto",
                       interpolation="nearest", origin="upper")
        if corr:
            js, is_ = [c[1] for c in corr], [c[0] for c in corr]
            ax.plot(js, is_, "-", color="#1f4e9a", lw=1.2, alpha=0.6)
            ax.plot(js, is_, "o", mfc="none", mec="#1f4e9a", mew=1.8, ms=max(4.0, min(14.0, 140 / max(L1, L2))))
        else:
            ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=8,
                    bbox=dict(boxstyle="round", fc="white", ec="#999999", alpha=0.9))
        ax.set_xlabel(f"block of θ₂ ({b})", fontsize=8)
        ax.set_ylabel(f"block of θ₁ ({a})", fontsize=8)
        step1, step2 = max(1, L1 // 16), max(1, L2 // 16)
        ax.set_yticks(range(0, L1, step1))
        ax.set_xticks(range(0, L2, step2))
        ax.tick_params(labelsize=7)
        ax.set_title(f"{v}: {pair_label(a, b)}", fontsize=9)
        cb = fig.colorbar(im, ax=ax, fraction=0.045, pad=0.02)
        pvalue_ticks(cb, compact=True)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.text(0.01, 0.005, "colour: −log10 p of the block pair (capped at 50); circles: the inferred correspondence "
             "(for each block of θ₂, its matched source block of θ₁; significant pairs only)",
             fontsize=7.5, color="#333333")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt().close(fig)
