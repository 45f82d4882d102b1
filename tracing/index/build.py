"""Building an index: one job per reference through the launch machinery (worker processes on
this machine, or Slurm job arrays), resumable (an entry already built for the same weights is not
rebuilt), a failed reference recorded under ``DIR/failed`` and retried by the next build."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from submitit.helpers import Checkpointable

from .. import provenance
from ..errors import TracingError
from .layout import FAILED, Settings, entry_dir, open_or_create


@dataclass
class Outcome:
    model: str
    family: str | None
    status: str  # built | skipped | failed
    error: str = ""
    seconds: float = 0.0
    bytes_read: int = 0
    host: str = field(default_factory=provenance.host)
    job_id: str | None = field(default_factory=provenance.job_id)


class EntryJob(Checkpointable):
    """Index one reference: open it, read its sampled rows, write its entry (or its failure record).
    Pickled with nothing but ids, paths and the settings; a preempted Slurm job requeues itself."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, spec: str, family: str | None, root: str, settings: dict) -> dict:
        from ..cli_util import slug
        from ..launch.console import first_line
        from ..fileio import atomic_write
        if self.threads:
            from ..launch.job import limit_threads
            limit_threads(self.threads)
        start, s, key = time.time(), Settings(**settings), slug(spec)
        fail = Path(root) / FAILED / f"{key}.json"
        try:
            out = build_entry(spec, family, Path(root), s)
        except Exception as e:  # noqa: BLE001 - every failure is recorded, never raised
            err = f"{type(e).__name__}: {first_line(str(e)) or type(e).__name__}" if not isinstance(e, TracingError) \
                else first_line(str(e))
            fail.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(fail, json.dumps({"model": spec, "family": family, "error": err, "time": time.time()}))
            return asdict(Outcome(spec, family, "failed", err, time.time() - start))
        fail.unlink(missing_ok=True)
        out.seconds = time.time() - start
        return asdict(out)


def build_entry(spec: str, family: str | None, root: Path, s: Settings) -> Outcome:
    """The entry of ``spec`` (skipped when one exists for the same weight files)."""
    from ..cli_util import slug
    from ..models import Checkpoint
    from .entry import describe, features, read_entry, write_entry
    ck = Checkpoint(spec, remote=True)  # a hub model not in the cache: only the rows it needs, by range requests
    meta = describe(ck, family)
    key = slug(spec)
    try:
        have = read_entry(entry_dir(root, key), s)
        if have.meta.get("weight_files") == meta["weight_files"] and have.meta.get("family") == family:
            for f in have.meta["files"]:
                have.tensors(f)  # rows intact too
            return Outcome(spec, family, "skipped")
    except TracingError:
        pass
    counter = _ReadCounter(ck)
    tensors = features(counter, s)
    write_entry(root, key, meta, tensors, s)
    ck.release()
    return Outcome(spec, family, "built", bytes_read=counter.bytes)


class _ReadCounter:
    """A weight source that counts the bytes of the rows and columns read through it."""

    def __init__(self, inner):
        self.inner, self.bytes = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_rows(self, name, index, dtype):
        t = self.inner.get_rows(name, index, dtype)
        self.bytes += _stored_bytes(t)
        return t

    def get_columns(self, name, index, dtype):
        t = self.inner.get_columns(name, index, dtype)
        self.bytes += _stored_bytes(t)
        return t


def _stored_bytes(t) -> int:
    """Bytes of ``t`` in the narrowest dtype that holds it exactly (the checkpoint's, for bf16/f16 weights)."""
    from ..rowstore import _compact
    return t.numel() * _compact(t).element_size()


def plan(refs: list[tuple[str, str | None]], s: Settings, partition: str | None = None,
         overrides: dict | None = None) -> list[tuple]:
    """``[(Resources, note)]``: each reference's job sized from its own config (:mod:`.sizing`)."""
    from .sizing import size_entry
    return [size_entry(spec, s, partition, overrides) for spec, _ in refs]


def _sized(o: dict, sized: tuple) -> dict:
    res, note = sized
    o.update(mem_gb=res.mem_gb, cpus=res.cpus, timeout_min=res.timeout_min, sizing=note)
    return o


def build(refs: list[tuple[str, str | None]], root: str | os.PathLike, s: Settings, cluster: str = "auto",
          workers: int = 1, on_done=None, partition: str | None = None, overrides: dict | None = None,
          mem_limit_gb: float | None = None) -> list[dict]:
    """Index every reference ``[(id, family)]`` into ``root``: inline when ``workers`` is 0, else one
    job per reference, sized from its config (:func:`plan`), in worker processes (no more at once
    than fit in ``mem_limit_gb``, default this machine's memory) or on Slurm (one job array per
    group of equal resources). Returns one outcome dict per reference (with the job's resources)."""
    from ..launch import choose_cluster
    root = Path(root)
    open_or_create(root, s)
    args = [(spec, fam, str(root), asdict(s)) for spec, fam in refs]
    if workers == 0:
        out = [EntryJob()(*a) for a in args]
        for o in out:
            on_done and on_done(o)
        return out
    sized = plan(refs, s, partition, overrides)
    if choose_cluster(cluster).kind == "slurm":
        return _run_slurm(args, sized, root, on_done)
    return _run_local(args, sized, workers, on_done, mem_limit_gb)


def _run_local(args: list[tuple], sized: list[tuple], workers: int, on_done, mem_limit_gb: float | None) -> list[dict]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from ..launch.local import _worker_init
    from ..launch.probe import local_mem_gb
    limit = local_mem_gb() if mem_limit_gb is None else mem_limit_gb
    out: dict[int, dict] = {}
    queue, running = list(range(len(args))), {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(1, os.getpid())) as pool:
        while queue or running:
            used = sum(sized[i][0].mem_gb for i in running.values())
            while queue and len(running) < workers and (not running or used + sized[queue[0]][0].mem_gb <= limit):
                i = queue.pop(0)
                running[pool.submit(EntryJob(threads=1), *args[i])] = i
                used += sized[i][0].mem_gb
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                i = running.pop(f)
                try:
                    out[i] = f.result()
                except Exception as e:  # noqa: BLE001 - a dead worker fails its reference only
                    out[i] = asdict(Outcome(args[i][0], args[i][1], "failed", f"worker died: {type(e).__name__}"))
                _sized(out[i], sized[i])
                on_done and on_done(out[i])
    return [out[i] for i in range(len(args))]


def _run_slurm(args: list[tuple], sized: list[tuple], root: Path, on_done) -> list[dict]:
    from ..launch.probe import slurm_info
    from ..launch.slurm import _executor, chunked
    groups: dict[tuple, list[int]] = {}
    for i, (res, _) in enumerate(sized):
        groups.setdefault(res.group_key(), []).append(i)
    out: dict[int, dict] = {}
    for idx in groups.values():
        res = sized[idx[0]][0]
        for chunk in chunked(idx, slurm_info(res.partition).max_array_size):
            ex = _executor(root / ".index-jobs", res, "tracing-index", None)
            jobs = ex.map_array(EntryJob(threads=res.cpus), *[list(col) for col in zip(*[args[i] for i in chunk])])
            for i, j in zip(chunk, jobs):
                try:
                    o = j.result()
                except Exception as e:  # noqa: BLE001 - a lost job fails its reference only
                    o = asdict(Outcome(args[i][0], args[i][1], "failed", f"job {j.job_id} ended abnormally: {str(e)[:200]}"))
                out[i] = _sized(o, sized[i])
                on_done and on_done(o)
    return [out[i] for i in range(len(args))]
