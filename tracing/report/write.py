"""Write the table, figures and report.md of a results folder."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import TracingError
from ..lineage.known import lineage_for
from ..fileio import atomic_open, atomic_write, check_out_folder
from .figures import write_figures
from .lineage_section import build as build_lineage_section
from .relations_section import build as build_relations_section
from .load import read_folder
from .markdown import Context, markdown
from .table import CORRECTIONS, summary_table
from ..results import finite


def _check_args(folder: Path, significance, correction: str) -> None:
    if not folder.is_dir():
        raise TracingError(f"results folder {folder} does not exist" if not folder.exists()
                           else f"{folder} is not a folder; give the folder that holds the result pickles")
    if significance is not None and not 0.0 < float(significance) < 1.0:
        raise TracingError(f"--significance {significance} must be in (0, 1), e.g. 0.01")
    if correction not in CORRECTIONS:
        raise TracingError(f"--correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")


def check_out(out: Path) -> None:
    """Fail before writing anything when the report cannot be written to ``out``."""
    check_out_folder(out, "the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TracingError(f"cannot create the report folder {out} ({e.strerror or e}); choose a writable --out") from None
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise TracingError(f"cannot write to the report folder {out} ({e.strerror or e}); choose a writable "
                           f"--out") from None


def _write_tables(df, out: Path) -> tuple[dict[str, Path], str | None]:
    """summary.csv and, with pyarrow, summary.parquet; returns the files and why parquet is missing."""
    written: dict[str, Path] = {}
    atomic_write(out / "summary.csv", df.to_csv(index=False))
    written["summary.csv"] = out / "summary.csv"
    parquet_note = None
    try:
        import pyarrow  # noqa: F401
        with atomic_open(out / "summary.parquet", "wb") as f:
            df.to_parquet(f, index=False)
        written["summary.parquet"] = out / "summary.parquet"
    except ImportError:
        parquet_note = "summary.parquet not written: pyarrow is not installed."
    except Exception as e:  # noqa: BLE001
        parquet_note = f"summary.parquet not written: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return written, parquet_note


def write_report(folder, out=None, lineage=None, significance=None, correction: str = "holm",
                 merges: bool = False) -> Path:
    """Write the table, figures and ``report.md`` for a results folder; return the report.md path.

    ``lineage``: a file, a mapping (see :func:`~tracing.lineage.known.parse_lineage`) or None (the
    folder's ``known_lineage.json``, else the demo family's lineage when every model is ``demo:*``). ``significance``: the level of the
    verdicts (default: the level the results were run with, else 0.01). ``merges``: attribute merges in
    the lineage section (reads the models' weights)."""
    folder = Path(folder)
    _check_args(folder, significance, correction)
    data = read_folder(folder)
    raw = data.table
    if raw.empty:
        raise TracingError(f"no results in {folder} (no *.p or *.pkl result files); run main.py --save or "
                           f"launch.py --out {folder} first")
    models = sorted({m for c in ("base", "ft") if c in raw.columns for m in raw[c] if isinstance(m, str)})
    lin = lineage_for(lineage, folder, models)
    out = Path(out) if out is not None else folder
    check_out(out)
    if significance is None:
        levels = {float(s) for s in raw.get("significance", []) if finite(s)}
        significance = levels.pop() if len(levels) == 1 else 0.01
    level = float(significance)
    df = summary_table(raw, correction=correction, significance=level, lineage=lin, mtime=data.mtime)
    cname = CORRECTIONS[correction][0]
    old = set(df.loc[df["superseded"], "file"])
    counted = {f: r for f, r in data.records.items() if f not in old}
    unplaced = sum(1 for s, b in zip(df["status"], df["base"]) if s == "unreadable" and not isinstance(b, str))
    written, parquet_note = _write_tables(df, out)
    figs = write_figures(df, counted, lin, out, cname, level, unplaced)
    section = build_lineage_section(df, folder, out, lineage, level, merges=merges)
    written.update(section.written)
    rel_written, rel_lines = build_relations_section(df, folder, out)
    written.update(rel_written)
    section.lines += rel_lines
    ctx = Context(folder, out, df, data.records, models, lin, level, cname, figs, written, parquet_note,
                  data.launch, data.mtime, section.lines)
    report = out / "report.md"
    atomic_write(report, markdown(ctx))
    return report
