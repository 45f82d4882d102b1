"""Summarise a results folder: table, figures and ``report.md``.

::

    python -m tracing.report results/<run> [--out DIR] [--lineage FILE] [--significance 0.01]
                                           [--correction holm|bh]

writes into ``DIR`` (default: the results folder itself):

``summary.csv`` / ``summary.parquet``
    the tidy table of the result files plus the formatted p-values, the multiple-testing
    correction (Holm or Benjamini–Hochberg, computed on ``log10_pvalue`` within each grid =
    statistic × transform × raw/aligned), the verdicts at the chosen level (significant when
    p ≤ the level), ``superseded`` (an older result of the same pair and grid: the newest counts),
    ``at_floor`` and, when the lineage is known, ``lineage_dependent``.
``heatmap.png``
    per statistic, the model × model grid of −log10 p of the pairs as run (see :func:`heatmap_matrix`).
``calibration.png``
    empirical CDF of the p-values of pairs known to be independent, against the uniform diagonal.
``mode_curves.png``
    loss and barrier along the interpolation path, for ``mode`` runs with ``--alphas``.
``per_layer.png``
    per-block −log10 p of every pair (which blocks carry the evidence).
``lineage.json`` / ``lineage.png`` / ``rates.csv``
    with three or more models compared by a weight statistic: families and the reconstructed tree
    (:mod:`tracing.lineage`); with a known lineage, false- and true-positive rates per statistic and
    variant with exact Clopper–Pearson 95% intervals (``rates.csv``) and the tree edges' precision
    and recall. With ``--merges`` (reads the weights) also the merges: every model fitted as a mix
    of the models significant against it, and each merge's parents and weights per block; a merge
    is drawn under its parents, never as a parent. ``python -m tracing.lineage`` writes its own
    files into ``RESULTS/lineage`` and never replaces these.
``report.md``
    what was run (models, weight hashes, options, commit), the null hypothesis, verdicts, failures,
    figures, timings.

A figure with nothing to show is not written; ``report.md`` says why.

Lineage (which models share an ancestor) is read from ``--lineage FILE``: JSON (or YAML) of the
form ``{"models": {name: {"parent": p, "root": r}}}`` — the format of the demo family's
``lineage.json`` —, simply ``{name: parent_or_null}``, or a tree list. Without it, a results folder
launched from a tree model list uses the lineage it holds in ``known_lineage.json``, and when every
model is ``demo:*`` the demo family's lineage is used (one rule:
:func:`tracing.lineage.known.lineage_for`).

Modules: ``load`` (the one reading of the folder), ``table`` (summary table), ``grid`` (heatmap
data), ``figures`` (one module per figure), ``markdown`` / ``provenance`` (report.md sections),
``lineage_section``, ``facts`` (everything the report knows about individual statistics), ``verdicts`` (the one
verdict rule).
"""
from __future__ import annotations

from .figures import (CAP, calibration_data, mode_curve_records, per_layer_data, plot_calibration, plot_heatmap,
                      plot_mode_curves, plot_per_layer, short_name)
from .grid import Grid, heatmap_matrix, ordered_models
from ..lineage.known import KnownLineage, demo_lineage, lineage_for, parse_lineage, read_lineage
from .load import Folder, load_records, read_folder
from ..results import variant_of
from .table import CORRECTIONS, summary_table
from .verdicts import verdict
from .write import write_report

__all__ = ["CAP", "CORRECTIONS", "Folder", "Grid", "KnownLineage", "calibration_data", "demo_lineage", "heatmap_matrix",
           "load_records", "mode_curve_records", "ordered_models", "parse_lineage", "per_layer_data",
           "plot_calibration", "plot_heatmap", "plot_mode_curves", "plot_per_layer", "read_folder", "read_lineage",
           "lineage_for", "short_name", "summary_table", "variant_of", "verdict", "write_report"]
