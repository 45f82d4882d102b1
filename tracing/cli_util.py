"""Small helpers shared by the command-line scripts."""
from __future__ import annotations

import errno
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


def run_cli(main, argv=None) -> int:
    """Run a CLI entry point: user errors become one line on stderr and exit code 2."""
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
