"""Read a results folder once: every result file, the table of its rows, and launch.json.

All of the report's reading of the folder happens here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..cli_util import slug
from ..results import iter_records, record_rows
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


def _read_launch(folder: Path) -> dict:
    try:
        launch = json.loads((folder / "launch.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return launch if isinstance(launch, dict) else {}


def read_folder(folder) -> Folder:
    """Read every result file of ``folder`` once (rows as in :func:`tracing.results.load_results`;
    an unreadable file is a row placed on its pair when the folder tells which)."""
    import pandas as pd
    folder = Path(folder)
    launch = _read_launch(folder)
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
    for p in launch.get("pairs") or []:
        if not isinstance(p, dict):
            continue
        for stat, res in zip(p.get("stats") or [], p.get("results") or []):
            f = Path(res)
            if f == path or (folder / p.get("dir", "") / f.name) == path:
                return {"base": p.get("base"), "ft": p.get("ft"), "stat": stat}
    by_slug = {slug(m): m for m in models}
    parts = path.parent.name.split("__")
    if len(parts) == 2 and all(x in by_slug for x in parts):
        stat = path.stem.split("-", 1)[0]
        if facts.has_pvalue(stat) is not None:
            return {"base": by_slug[parts[0]], "ft": by_slug[parts[1]], "stat": stat}
    return {}


def load_records(folder) -> dict[str, dict]:
    """file (relative to the folder, as in the table) → record, for every readable result."""
    return read_folder(folder).records
