"""Read a results folder once: every result file, the table of its rows, and launch.json.

All of the report's reading of the folder happens here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..results import iter_records, record_rows
from ..results_folder import pair_of, planned_results, read_run_log
from . import facts


@dataclass
class Folder:
    """The contents of a results folder. ``records``: file (relative to the folder, as in the
    table) → record, for every readable result; ``mtime``: file → modification time."""

    path: Path
    table: object  # pandas.DataFrame, one row per pair × statistic × raw/aligned
    records: dict[str, dict]
    mtime: dict[str, float] = field(default_factory=dict)
    launch: dict = field(default_factory=dict)


def read_folder(folder) -> Folder:
    """Read every result file of ``folder`` once (rows as in :func:`tracing.results.load_results`;
    an unreadable file is a row placed on its pair when the folder tells which)."""
    import pandas as pd
    folder = Path(folder)
    launch = read_run_log(folder)
    rows, records, mtime, bad = [], {}, {}, []
    for rel, rec, error in iter_records(folder):
        f = folder / rel
        try:
            t = f.stat().st_mtime
        except OSError:
            t = None
        if rec is None:  # listed as unreadable; the table names it by its full path
            bad.append({"file": str(f), "status": "unreadable", "error": error})
            if t is not None:
                mtime[str(f)] = t
            continue
        if t is not None:
            mtime[rel] = t
        records[rel] = rec
        rows += record_rows(rec, rel)
    models = {m for r in rows for m in (r.get("base"), r.get("ft")) if isinstance(m, str)}
    for row in bad:
        row.update(place_unreadable(Path(row["file"]), folder, launch, models))
    return Folder(folder, pd.DataFrame(rows + bad), records, mtime, launch)


def place_unreadable(path: Path, folder: Path, launch: dict, models: set[str]) -> dict:
    """The pair and statistic of an unreadable result file, when launch.json lists it or its folder is
    named ``<base>__<ft>`` after two models of the run; else nothing."""
    for planned in planned_results(folder, launch):
        if planned.names(path):
            return {"base": planned.base, "ft": planned.ft, "stat": planned.stat}
    found = pair_of(path, models)
    if found is not None and facts.has_pvalue(found[2]) is not None:
        return dict(zip(("base", "ft", "stat"), found))
    return {}


def load_records(folder) -> dict[str, dict]:
    """file (relative to the folder, as in the table) → record, for every readable result."""
    return read_folder(folder).records
