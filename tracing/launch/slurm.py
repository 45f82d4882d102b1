"""Running pairs on Slurm: job arrays through submitit, one per group of identical resources,
chunked under the cluster's ``MaxArraySize``."""
from __future__ import annotations

import shlex
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from .console import first_line, say
from .job import pair_job
from .probe import SlurmInfo, active_slurm_jobs
from .tasks import Task, TaskState, apply_summary, mark_failed

ROOT = Path(__file__).resolve().parents[2]


def chunked(items: list, size: int) -> list[list]:
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


def group_by_resources(tasks: list[Task]) -> "OrderedDict[tuple, list[Task]]":
    """Tasks with identical resources, in first-seen order (one job array each)."""
    groups: OrderedDict = OrderedDict()
    for t in tasks:
        groups.setdefault(t.resources.group_key(), []).append(t)
    return groups


def _executor(out: Path, res, job_name: str, array_parallelism: int | None):
    """A fresh executor per array: no parameter of another group carries over."""
    import submitit

    pythonpath = f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"
    params = dict(timeout_min=res.timeout_min, mem_gb=res.mem_gb, cpus_per_task=res.cpus,
                  name=job_name, slurm_setup=[pythonpath],
                  slurm_signal_delay_s=int(min(120, max(10, res.timeout_min * 60 // 10))))
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    if res.partition:
        params["slurm_partition"] = res.partition
    if array_parallelism:
        params["slurm_array_parallelism"] = int(array_parallelism)
    executor = submitit.AutoExecutor(folder=out / ".submitit" / "%j", cluster="slurm", slurm_max_num_timeout=3)
    executor.update_parameters(**params)
    return executor


def _submit(chunk: list[Task], executor, res, on_done, rows_store: str | None = None, download: bool = False) -> list:
    """Submit one array; on a refusal every task of the chunk is recorded as failed."""
    try:
        return executor.map_array(
            pair_job(threads=res.cpus, rows_store=rows_store, download=download), [t.pair.base for t in chunk],
            [t.pair.ft for t in chunk],
            [t.options for t in chunk], [t.save_targets() for t in chunk])
    except Exception as e:  # noqa: BLE001 - e.g. sbatch rejects the request
        msg = f"submission failed: {first_line(str(e)) or type(e).__name__}"
        for t in chunk:
            mark_failed(t, msg)
            if on_done:
                on_done(t)
        return []


def _job_lost(t: Task, j, e: Exception) -> None:
    """Record a job that ended without returning (killed, out of memory, timed out too often...)."""
    state = ""
    try:
        state = j.get_info(mode="cache").get("State", "")
    except Exception:  # noqa: BLE001
        pass
    why = first_line(str(e).split("has failed with ")[-1]) if str(e) else type(e).__name__
    mark_failed(t, f"job {j.job_id} ended {state or 'abnormally'}: {why[:200]} (log: {j.paths.stderr})",
                time.time() - t.handed_out_at)


def _wait_jobs(pending: dict, on_done, poll_s: float) -> None:
    try:
        while pending:
            for j in list(pending):
                if not j.done():
                    continue
                t = pending.pop(j)
                try:
                    apply_summary(t, j.result())
                except Exception as e:  # noqa: BLE001
                    _job_lost(t, j, e)
                if on_done:
                    on_done(t)
            if pending:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        ids = sorted({str(j.job_id).split("_")[0] for j in pending})
        say(f"\ninterrupted: {len(pending)} job(s) keep running on Slurm (job ids {', '.join(ids)}); "
            f"rerun the same command to wait for them, or `scancel {' '.join(ids)}` to stop them", file=sys.stderr)
        raise


def run_slurm(tasks: list[Task], out: Path, *, array_parallelism: int | None, info: SlurmInfo,
              job_name: str, rows_store: str | None = None, download: bool = False,
              on_submit: Callable[[list[Task], str], None] | None = None,
              on_done: Callable[[Task], None] | None = None, poll_s: float = 1.0) -> None:
    """Submit the tasks as job arrays (one per group of identical resources, chunked under
    MaxArraySize) and wait for every job."""
    pending: dict = {}
    for group in group_by_resources(tasks).values():
        res = group[0].resources
        for chunk in chunked(group, info.max_array_size):
            jobs = _submit(chunk, _executor(out, res, job_name, array_parallelism), res, on_done, rows_store,
                           download)
            if not jobs:
                continue
            for t, j in zip(chunk, jobs):
                t.job_id, t.status, t.handed_out_at = j.job_id, TaskState.RUNNING, time.time()
                t.log = str(j.paths.stderr)
                pending[j] = t
            if on_submit:
                on_submit(chunk, str(jobs[0].job_id).split("_")[0])
    _wait_jobs(pending, on_done, poll_s)


def wait_for_foreign(tasks: list[Task], poll_s: float = 2.0, on_done: Callable[[Task], None] | None = None) -> None:
    """Wait for pairs whose jobs an earlier launch submitted and Slurm still runs."""
    from ..results import is_done

    pending = list(tasks)
    while pending:
        active = active_slurm_jobs() or set()
        for t in list(pending):
            if t.job_id not in active:
                pending.remove(t)
                if all(is_done(t.paths[s]) for s in t.stats):
                    t.status, t.error = TaskState.DONE, None
                else:
                    t.status = TaskState.FAILED
                    t.error = f"job {t.job_id} (from an earlier launch) ended without a result"
                if on_done:
                    on_done(t)
        if pending:
            time.sleep(poll_s)
