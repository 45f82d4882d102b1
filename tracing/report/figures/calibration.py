"""calibration.png: empirical CDF of the p-values of pairs known to be independent."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...fileio import atomic_open
from ..table import counted
from ..verdicts import finite
from .common import plt


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
    for v, sub in counted(df).groupby("variant", sort=False):
        sel = sub[(sub["status"] == "ok") & (sub["lineage_dependent"] == False)]  # noqa: E712
        lp = np.array([float(x) for x in sel["log10_pvalue"] if finite(x)])
        if lp.size:
            out[v] = np.power(10.0, lp)
    return out


def plot_calibration(data: dict[str, np.ndarray], path: Path, level: float) -> None:
    from scipy.stats import kstest
    fig, ax = plt().subplots(figsize=(6.2, 5.6))
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
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, dpi=110, format="png")
    plt().close(fig)
