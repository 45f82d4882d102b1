"""The report's figures: draw every figure there is something to show for."""
from __future__ import annotations

from pathlib import Path

from .. import facts
from ..grid import heatmap_matrix
from .blockmap import blockmap_data, correspondence_lines, plot_blockmaps
from .calibration import calibration_data, plot_calibration
from .common import CAP, short_name
from .heatmap import plot_heatmap
from .mode_curves import mode_curve_records, plot_mode_curves
from .per_layer import per_layer_data, plot_per_layer

FIGURES = ("heatmap", "calibration", "mode_curves", "per_layer", "blockmap")

#: report.md's caption of each figure
CAPTIONS = {
    "heatmap": "p-value of every pair that was run, per statistic (colour: −log10 p, capped at 50; rows: base "
               "model θ₁, columns: fine-tuned model θ₂; ↔ marks a pair run only with the roles swapped).",
    "calibration": "Empirical CDF of the p-values of pairs known to be independent; a calibrated test "
                   "follows the diagonal.",
    "mode_curves": "Loss and barrier along the interpolation path for the `mode` runs with `--alphas`.",
    "per_layer": "Per-block p-values: which blocks carry the evidence.",
    "blockmap": "Block maps of pairs of different shapes (or run with --localized): −log10 p of every block of θ₁ "
                "(rows) against every block of θ₂ (columns); circles mark the inferred correspondence.",
}


def write_figures(df, records: dict[str, dict], lin, out: Path, cname: str, level: float,
                  unplaced: int = 0) -> dict[str, str | None]:
    """Draw every figure there is something to show for; name → None (written) or why it was not drawn.
    ``records``: the results that count (superseded ones left out); ``unplaced``: unreadable result
    files that name no pair."""
    for name in FIGURES:
        stale = out / f"{name}.png"
        if stale.exists():
            stale.unlink()
    figs: dict[str, str | None] = {}
    grids = [heatmap_matrix(df, v, lineage=lin) for v in dict.fromkeys(df["variant"]) if v != "?"]
    grids = [g for g in grids if len(g.models) >= 2]
    figs["heatmap"] = "no pair of models with a result."
    if grids:
        plot_heatmap(grids, out / "heatmap.png", lin, cname, level, unplaced)
        figs["heatmap"] = None
    cal = calibration_data(df) if lin is not None else {}
    figs["calibration"] = ("no lineage known (give --lineage FILE; the demo family's lineage is used "
                           "automatically when every model is demo:*)." if lin is None else
                           "no successful p-value of a pair known to be independent.")
    if cal:
        plot_calibration(cal, out / "calibration.png", level)
        figs["calibration"] = None
    mc = mode_curve_records(records)
    figs["mode_curves"] = "no successful `mode` result with a curve of more than 3 points (run with --alphas)."
    if mc:
        plot_mode_curves(mc, out / "mode_curves.png", lin)
        figs["mode_curves"] = None
    pl = per_layer_data(records, lin)
    figs["per_layer"] = (f"no successful result with per-block p-values "
                         f"({', '.join(facts.per_block_stats())}).")
    if pl:
        plot_per_layer(pl, out / "per_layer.png", lin, level)
        figs["per_layer"] = None
    bm = blockmap_data(records, level=level)
    figs["blockmap"] = ("no successful result with a block map (cos or match with --localized, or models of "
                        "different shapes).")
    if bm:
        plot_blockmaps(bm, out / "blockmap.png")
        figs["blockmap"] = None
    return figs


__all__ = ["CAP", "CAPTIONS", "FIGURES", "blockmap_data", "calibration_data", "correspondence_lines", "mode_curve_records",
           "per_layer_data",
           "plot_calibration", "plot_heatmap", "plot_mode_curves", "plot_per_layer", "short_name", "write_figures"]
