"""The layout of a results folder, its one owner: where every file goes and, the other way round,
what a file found there is.

::

    <out>/launch.json                        what a launch planned and ran where (RUN_LOG)
    <out>/known_lineage.json                 the lineage of a tree model list (KNOWN_LINEAGE)
    <out>/known_relations.json               the pair labels of a labelled list (KNOWN_RELATIONS)
    <out>/<slug(base)>__<slug(ft)>/          one folder per pair
        <stat>-<options hash>.p              one result file per statistic

The launcher writes through these functions and the report reads through them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .cli_util import model_slug, slug
from .fileio import atomic_write

RUN_LOG = "launch.json"
KNOWN_LINEAGE = "known_lineage.json"
KNOWN_RELATIONS = "known_relations.json"
PAIR_SEP = "__"
RESULT_SUFFIX = ".p"
#: the file names read as results (``.pkl``: written by hand or by earlier scripts)
RESULT_SUFFIXES = (RESULT_SUFFIX, ".pkl")


# ------------------------------------------------------------------------------------------
# Names and their inverse
# ------------------------------------------------------------------------------------------
def pair_dir_name(base: str, ft: str) -> str:
    """``<slug(base)>__<slug(ft)>``: the folder of one pair (see :func:`tracing.cli_util.model_slug`)."""
    return f"{model_slug(base)}{PAIR_SEP}{model_slug(ft)}"


def pair_dir(out: str | os.PathLike, pair) -> Path:
    """The folder holding every result of one pair (``pair.base``, ``pair.ft``)."""
    return Path(out) / pair_dir_name(pair.base, pair.ft)


def result_name(stat: str, key: str) -> str:
    """``<stat>-<options hash>.p``."""
    return f"{stat}-{key}{RESULT_SUFFIX}"


def result_path(out: str | os.PathLike, pair, stat: str, options) -> Path:
    """``<out>/<slug(base)>__<slug(ft)>/<stat>-<options hash>.p`` (the hash of the options this
    statistic reads: changing another option, or the verdict's level, finds the same file). A result
    an earlier version wrote under a key that held another level is found too."""
    path = pair_dir(out, pair) / result_name(stat, options.key_for(stat))
    if not path.exists():
        earlier = path.with_name(result_name(stat, options.key_for(stat, with_level=True)))
        if earlier != path and earlier.exists():
            return earlier
    return path


@dataclass(frozen=True)
class ResultName:
    """What a result file's path says: the two model slugs of its pair folder, the statistic and
    the options hash (None for a file named ``<stat>.p`` by hand)."""

    base_slug: str
    ft_slug: str
    stat: str
    key: str | None


def parse_result_path(path: str | os.PathLike) -> ResultName | None:
    """The inverse of :func:`result_path`: the parts of ``.../<base>__<ft>/<stat>-<key>.p`` (or
    ``<stat>.p``, ``.pkl``), or None when the path is not named that way."""
    p = Path(path)
    parts = p.parent.name.split(PAIR_SEP)
    stat, _, key = p.stem.partition("-")
    if len(parts) != 2 or not all(parts) or not stat or p.suffix not in RESULT_SUFFIXES:
        return None
    return ResultName(parts[0], parts[1], stat, key or None)


def pair_of(path: str | os.PathLike, models) -> tuple[str, str, str] | None:
    """``(base, ft, stat)`` of a result file whose folder is named after two of ``models``, else None."""
    name = parse_result_path(path)
    if name is None:
        return None
    by_slug = {}
    for m in models:
        by_slug.setdefault(slug(m), m)
        by_slug[model_slug(m)] = m
    if name.base_slug in by_slug and name.ft_slug in by_slug:
        return by_slug[name.base_slug], by_slug[name.ft_slug], name.stat
    return None


# ------------------------------------------------------------------------------------------
# launch.json
# ------------------------------------------------------------------------------------------
def read_run_log(out: str | os.PathLike) -> dict:
    """``<out>/launch.json`` as a dict (empty when there is none or it cannot be read)."""
    try:
        doc = json.loads((Path(out) / RUN_LOG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_run_log(out: Path, tasks: list, cluster: str, arrays: list[dict]) -> None:
    """``<out>/launch.json``: what ran where (job ids let a rerun find still-running jobs)."""
    doc = {"cluster": cluster, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "arrays": arrays,
           "pairs": [{"base": t.pair.base, "ft": t.pair.ft, "dir": t.dir.name, "stats": t.stats,
                      "results": [str(t.paths[x]) for x in t.stats],
                      "status": str(t.status), "job_id": t.job_id, "time": t.time, "error": t.error,
                      "restarts": t.restarts, "start": t.compute_start, "end": t.compute_end,
                      "resources": dataclasses.asdict(t.resources) if t.resources else None} for t in tasks]}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / RUN_LOG, json.dumps(doc, indent=1, default=str))


@dataclass(frozen=True)
class PlannedResult:
    """One result file ``launch.json`` lists: its pair, statistic, the launch's status and error, the
    path it was written to and where it sits in this folder (the same unless the folder was moved)."""

    base: str | None
    ft: str | None
    stat: str
    written: Path
    here: Path
    status: str | None
    error: str | None

    @property
    def path(self) -> Path:
        """The file: where it was written when it is there, else its place in this folder."""
        return self.written if self.written.exists() else self.here

    def exists(self) -> bool:
        return self.path.exists()

    def names(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is this result's file (as written, or in this folder)."""
        return Path(path) in (self.written, self.here)


def planned_results(folder: str | os.PathLike, launch: dict | None = None) -> list[PlannedResult]:
    """Every result file ``launch.json`` of ``folder`` lists (``launch``: the parsed file, read when
    None)."""
    folder = Path(folder)
    launch = read_run_log(folder) if launch is None else launch
    out = []
    for p in launch.get("pairs") or []:
        if not isinstance(p, dict):
            continue
        for stat, res in zip(p.get("stats") or [], p.get("results") or []):
            written = Path(res)
            out.append(PlannedResult(p.get("base"), p.get("ft"), stat, written,
                                     folder / p.get("dir", "") / written.name, p.get("status"), p.get("error")))
    return out


# ------------------------------------------------------------------------------------------
# The folder itself and its known lineage / relations
# ------------------------------------------------------------------------------------------
def default_out(config: str | os.PathLike) -> Path:
    """``results/<name of the model list>``."""
    return Path("results") / Path(config).stem


def _write_known(out: Path, name: str, data: dict | None) -> None:
    if not data:
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / name, json.dumps(data, indent=1, default=str))


def write_known_lineage(out: Path, lineage: dict | None) -> None:
    """``<out>/known_lineage.json``: the lineage of a tree model list (the report scores against it)."""
    _write_known(out, KNOWN_LINEAGE, lineage)


def write_known_relations(out: Path, labels: dict | None) -> None:
    """``<out>/known_relations.json``: the pair labels of a labelled model list (the report scores against them)."""
    _write_known(out, KNOWN_RELATIONS, labels)
