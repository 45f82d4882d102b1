"""Download every hub model once (and build the demo family) before any job starts, so that
jobs only read."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import TracingError
from ..specs import is_demo
from .console import say as _say
from .model_list import is_local_spec


def prefetch(tasks: list, say: Callable = _say, remote: bool = False) -> dict[str, str]:
    """Download every distinct hub model once into the shared cache and build the demo family;
    returns ``{spec: error}`` for the models that could not be fetched. With ``remote`` (a sampled
    test) a hub model not in the cache gets its config files only: the jobs read its sampled rows by
    range requests."""
    from ..models import resolve

    specs: list[str] = []
    for t in tasks:
        for s in (t.pair.base, t.pair.ft):
            if s not in specs:
                specs.append(s)
    errors: dict[str, str] = {}
    if any(is_demo(s) for s in specs):
        from .. import demo
        if not demo.is_built():
            say("building the demo model family once (about 2 minutes on 2 idle cores, longer on busy ones) ...")
        try:
            demo.ensure_built(progress=False)
        except TracingError as e:
            for s in specs:
                if is_demo(s):
                    errors[s] = str(e)
    hub = [s for s in specs if not is_demo(s) and not Path(s).expanduser().is_dir()
           and not is_local_spec(s)]
    for i, s in enumerate(hub, 1):
        what = "the config files of" if remote else ""
        say(f"fetching {what + ' ' if what else ''}{s} ({i}/{len(hub)}) into the Hugging Face cache ...")
        try:
            resolve(s, remote=remote)
        except TracingError as e:
            errors[s] = str(e)
            say(f"  cannot fetch {s}: {e}")
    return errors


def ensure_demo(tasks: list) -> None:
    """Build the demo family when a pair needs it (without --prefetch's downloads)."""
    if any(is_demo(m) for t in tasks for m in (t.pair.base, t.pair.ft)):
        from .. import demo
        demo.ensure_built(progress=False)
