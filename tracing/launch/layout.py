"""Where a run's files go: ``<out>/<base>__<ft>/<stat>-<options hash>.p`` per result, and
``<out>/launch.json`` recording what ran where."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from ..errors import TracingError
from ..cli_util import model_slug
from .model_list import Pair

RUN_LOG = "launch.json"


def pair_dir(out: str | os.PathLike, pair: Pair) -> Path:
    """The folder holding every result of one pair."""
    return Path(out) / f"{model_slug(pair.base)}__{model_slug(pair.ft)}"


def result_path(out: str | os.PathLike, pair: Pair, stat: str, options) -> Path:
    """``<out>/<slug(base)>__<slug(ft)>/<stat>-<options hash>.p`` (the hash of the options this
    statistic reads: changing another option, or the verdict's level, finds the same file). A result
    an earlier version wrote under a key that held another level is found too."""
    path = pair_dir(out, pair) / f"{stat}-{options.key_for(stat)}.p"
    if not path.exists():
        earlier = path.with_name(f"{stat}-{options.key_for(stat, with_level=True)}.p")
        if earlier != path and earlier.exists():
            return earlier
    return path


def default_out(config: str | os.PathLike) -> Path:
    """``results/<name of the model list>``."""
    return Path("results") / Path(config).stem


def check_out_folder(out: Path) -> Path:
    """Fail now, with the fix, when ``out`` cannot become a results folder: it is a file, or it
    (or its nearest existing parent) cannot be written."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise TracingError(f"--out {out} is a file, not a folder; give a folder for the results "
                           f"(it is created when missing)")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise TracingError(f"--out {out} cannot be created because {probe} is a file; give a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == out else f" (its parent {probe} is not writable)"
        raise TracingError(f"--out {out} is not writable{where}; choose a folder you can write to")
    return out


def write_run_log(out: Path, tasks: list, cluster: str, arrays: list[dict]) -> None:
    """``<out>/launch.json``: what ran where (job ids let a rerun find still-running jobs)."""
    doc = {"cluster": cluster, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "arrays": arrays,
           "pairs": [{"base": t.pair.base, "ft": t.pair.ft, "dir": t.dir.name, "stats": t.stats,
                      "results": [str(t.paths[x]) for x in t.stats],
                      "status": str(t.status), "job_id": t.job_id, "time": t.time, "error": t.error,
                      "restarts": t.restarts, "start": t.compute_start, "end": t.compute_end,
                      "resources": dataclasses.asdict(t.resources) if t.resources else None} for t in tasks]}
    from ..fileio import atomic_write
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / RUN_LOG, json.dumps(doc, indent=1, default=str))


def _write_known(out: Path, name: str, data: dict | None) -> None:
    if not data:
        return
    from ..fileio import atomic_write
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / name, json.dumps(data, indent=1, default=str))


def write_known_lineage(out: Path, lineage: dict | None) -> None:
    """``<out>/known_lineage.json``: the lineage of a tree model list (the report scores against it)."""
    from ..lineage.tree import KNOWN_LINEAGE
    _write_known(out, KNOWN_LINEAGE, lineage)


def write_known_relations(out: Path, labels: dict | None) -> None:
    """``<out>/known_relations.json``: the pair labels of a labelled model list (the report scores against them)."""
    from ..lineage.relations import KNOWN_RELATIONS
    _write_known(out, KNOWN_RELATIONS, labels)


def read_run_log(out: Path) -> dict:
    try:
        return json.loads((out / RUN_LOG).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
