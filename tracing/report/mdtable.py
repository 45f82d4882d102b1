"""Markdown building blocks: escaped cells, tables, sizes, times."""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

from ..results import finite


def md(x) -> str:
    s = "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)
    return s.replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def size(n) -> str:
    if not finite(n):
        return "?"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def when(times: list[float]) -> str:
    if not times:
        return "unknown"
    fmt = lambda t: _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
    lo, hi = min(times), max(times)
    return fmt(lo) if hi - lo < 1 else f"{fmt(lo)} – {fmt(hi)}"


def rel_link(target: Path, out: Path) -> str:
    import os
    return os.path.relpath(target, out).replace(os.sep, "/")
