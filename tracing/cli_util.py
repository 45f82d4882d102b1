"""Small helpers shared by the command-line scripts."""
from __future__ import annotations

import errno
import gc
import hashlib
import re
import sys
from pathlib import Path

from .errors import TracingError


def slug(spec: str) -> str:
    """A filename-safe name for a model spec (``org/name@rev`` -> ``org--name@rev``)."""
    s = str(spec).rstrip("/")
    if s.startswith("/") or s.startswith("."):
        s = s.rsplit("/", 1)[-1] or s
    s = s.replace("/", "--").replace(":", "-")
    return re.sub(r"[^\w.@\-]+", "_", s)[:120]


def model_slug(spec: str) -> str:
    """A file-name-safe, deterministic name for a model spec.

    Hub ids keep their name (``org/name@rev`` -> ``org--name@rev``); a local folder gets its last
    component plus a short hash of its absolute path, so two folders with the same name differ.
    """
    from .specs import is_demo, parse_spec

    spec = str(spec)
    if is_demo(spec):
        return slug(spec)
    if parse_spec(spec).kind == "local":
        full = str(Path(spec).expanduser().absolute())
        name = Path(full).name or "model"
        return f"{slug('./' + name)}-{hashlib.sha256(full.encode()).hexdigest()[:6]}"
    return slug(spec)


def text_table(rows, indent: str = "") -> str:
    """Rows of cells as plain text: each column left-aligned to its widest cell, two spaces between
    columns, each line after ``indent``, no trailing spaces."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(max(map(len, cells), default=0))]
    return "\n".join((indent + "  ".join(c.ljust(w) for c, w in zip(row, widths))).rstrip() for row in cells)


def run_cli(main, argv=None, quick_start: bool = False) -> int:
    """Run a CLI entry point: user errors become one line on stderr and exit code 2.

    ``quick_start``: the cyclic garbage collector is paused while the command starts (its imports
    build some 10⁶ objects and no garbage, and each collection would walk them all) until its work
    begins (:func:`work_begins`) or it returns."""
    paused = quick_start and _pause_collections()
    try:
        return int(main(argv) or 0)
    except TracingError as e:
        from .provenance import scrub
        print(f"error: {scrub(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        print(f"error: {str(e.filename)[:60]}...: a path component is too long for the file system; "
              f"use shorter folder and file names", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        if paused:
            _resume_collections()


#: the collector as :func:`run_cli` holds it: None (not held), "paused" (the command is starting) or
#: "working" (its work began: on again, with what the start-up built frozen)
_collector: str | None = None


def _pause_collections() -> bool:
    """Pause the collector for :func:`run_cli`; False (nothing done) when it is held already or off."""
    global _collector
    if _collector is not None or not gc.isenabled():
        return False
    _collector = "paused"
    gc.disable()
    return True


def work_begins() -> None:
    """A command's long work (a statistic's computation) begins: a collector paused by
    :func:`run_cli` runs again, leaving out of its walks what the start-up built (``gc.freeze``)."""
    global _collector
    if _collector == "paused":
        _collector = "working"
        gc.freeze()
        gc.enable()


def _resume_collections() -> None:
    """As before :func:`run_cli`: the collector on, every object back in its walks."""
    global _collector
    _collector = None
    gc.unfreeze()
    gc.enable()


def leave(code: int):
    """``sys.exit(code)`` for a script that is done: the objects still alive are frozen first, so
    the interpreter's last collections on the way out do not walk them (0.3-0.5 s after torch)."""
    gc.freeze()
    sys.exit(code)
