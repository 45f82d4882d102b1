"""Running pairs on this machine: a bounded pool of spawned worker processes that die with the
launcher (a killed launcher never leaves a worker computing on its own)."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable

from .console import first_line
from .job import PairJob, limit_threads, pair_job
from .probe import local_mem_gb
from .tasks import Task, TaskState, apply_summary, mark_failed

PR_SET_PDEATHSIG = 1
WATCHDOG_S = 1.0


def _die_with(parent_pid: int) -> None:
    """End this process as soon as ``parent_pid`` is gone: the kernel's parent-death signal on
    Linux, and a thread watching the parent id everywhere (and in case the signal is not armed)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch():
        while True:
            time.sleep(WATCHDOG_S)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_init(threads: int, parent_pid: int) -> None:
    _die_with(parent_pid)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    limit_threads(threads)


def _call(job: PairJob, base: str, ft: str, options: dict, save: dict) -> dict:
    return job(base, ft, options, save)


def _fits(running: dict, nxt: Task, mem_limit_gb: float) -> bool:
    used = sum(t.resources.mem_gb for t in running.values())
    return not running or used + nxt.resources.mem_gb <= mem_limit_gb


def _collect(fut, task: Task) -> bool:
    """Take a finished future's outcome; True when the pool broke (a worker died)."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        apply_summary(task, fut.result())
    except BrokenProcessPool:
        mark_failed(task, "the worker process died (out of memory or killed?)", time.time() - task.handed_out_at)
        return True
    except Exception as e:  # noqa: BLE001
        mark_failed(task, f"{type(e).__name__}: {first_line(str(e))}", time.time() - task.handed_out_at)
    return False


def _run_pool(pool, queue: list[Task], job: PairJob, max_workers: int, mem_limit_gb: float,
              on_done: Callable[[Task], None] | None) -> bool:
    """Feed ``queue`` through one pool until it is empty or the pool breaks."""
    from concurrent.futures import FIRST_COMPLETED, wait

    running: dict = {}
    broken = False
    while (queue or running) and not broken:
        while queue and len(running) < max_workers and _fits(running, queue[0], mem_limit_gb):
            nxt = queue.pop(0)
            nxt.status, nxt.handed_out_at = TaskState.RUNNING, time.time()
            running[pool.submit(_call, job, nxt.pair.base, nxt.pair.ft, nxt.options, nxt.save_targets())] = nxt
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for fut in done:
            task = running.pop(fut)
            broken = _collect(fut, task) or broken
            if on_done:
                on_done(task)
    if broken:  # every pair that was running in the dead pool is recorded as failed
        for task in running.values():
            mark_failed(task, "the worker pool broke while this pair ran (another worker died); rerun to retry",
                        time.time() - task.handed_out_at)
            if on_done:
                on_done(task)
    return broken


def run_local(tasks: list[Task], max_workers: int, threads: int, on_done: Callable[[Task], None] | None = None,
              mem_limit_gb: float | None = None, rows_store: str | None = None, download: bool = False) -> None:
    """At most ``max_workers`` pairs at a time (and no more than fits in memory), each in a
    spawned worker process limited to ``threads`` torch threads."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    mem_limit_gb = local_mem_gb() if mem_limit_gb is None else mem_limit_gb
    queue = list(tasks)
    ctx = mp.get_context("spawn")  # fork after torch is imported is unsafe
    job = pair_job(threads=threads, rows_store=rows_store, download=download)
    while queue:
        pool = ProcessPoolExecutor(max_workers=max_workers, mp_context=ctx, initializer=_worker_init,
                                   initargs=(threads, os.getpid()))
        broken = False
        try:
            broken = _run_pool(pool, queue, job, max_workers, mem_limit_gb, on_done)
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)
