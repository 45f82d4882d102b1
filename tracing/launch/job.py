"""The job of one pair: every statistic through one ``run_pair`` call, its records written."""
from __future__ import annotations

import os
import time

from submitit.helpers import Checkpointable

from ..provenance import host, job_id
from .console import first_line

# Tests only: a job sleeps this many seconds before computing, on its first start only (DelayedPairJob).
TEST_SLEEP_ENV = "TRACING_TEST_SLEEP_S"


class PairJob(Checkpointable):
    """Compute every statistic of one pair (one ``run_pair`` call) and write its records.

    Pickled by submitit with nothing but ids, paths and option dicts. As a ``Checkpointable``,
    a timed-out or preempted Slurm job requeues itself with the same arguments; statistics
    already written are not recomputed on the restart. Any error becomes a ``status: failed``
    record for each statistic not done, so the launcher (and a rerun) see it.
    """

    def __init__(self, threads: int | None = None, progress: bool = False, rows_store: str | None = None,
                 download: bool = False):
        self.threads = threads
        self.progress = progress
        self.rows_store = rows_store  # sampled rows kept per model (tracing.rowstore), beside the results
        self.download = download  # hub models downloaded whole, even for a sampled test

    def __call__(self, base: str, ft: str, options: dict, save: dict) -> dict:
        start = time.time()
        if self.threads:
            limit_threads(self.threads)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        from ..results import is_done

        error = self._compute(base, ft, options, {s: p for s, p in save.items() if not is_done(p)}, start)
        failed = [s for s, p in save.items() if not is_done(p)]
        if failed and error is None:
            error = f"no result written for {', '.join(failed)}"
        return {"status": "failed" if failed else "ok", "error": error, "time": time.time() - start,
                "start": start, "end": time.time(), "restarts": restarts, "job_id": job_id(),
                "host": host()}

    def _compute(self, base: str, ft: str, options: dict, todo: dict, start: float) -> str | None:
        """Run the statistics in ``todo``; an error is recorded per statistic and returned as a line."""
        if not todo:
            return None
        from ..options import Options
        from ..results import failure_record, is_done, save_record

        opts = Options.from_dict({**options, "stat": list(todo)})
        try:
            from ..api import run_pair
            run_pair(base, ft, opts, save=todo, progress=self.progress,
                     rows_store=getattr(self, "rows_store", None), download=getattr(self, "download", False))
        except Exception as e:  # noqa: BLE001 - every failure is recorded, never raised
            for s, p in todo.items():
                if not is_done(p):
                    save_record(failure_record(base, ft, s, opts.for_stat(s).to_dict(), e, time.time() - start), p)
            return f"{type(e).__name__}: {first_line(str(e)) or type(e).__name__}"
        return None


class DelayedPairJob(PairJob):
    """A :class:`PairJob` that first sleeps ``TRACING_TEST_SLEEP_S`` seconds, on its first start only, so that a
    test has time to cancel, requeue or preempt it. Chosen by :func:`pair_job` when that variable is set; never
    set it for real work."""

    def __call__(self, base: str, ft: str, options: dict, save: dict) -> dict:
        sleep_s = float(os.environ.get(TEST_SLEEP_ENV) or 0)
        if sleep_s > 0 and int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0:
            print(f"{TEST_SLEEP_ENV}: sleeping {sleep_s:g} s before computing", flush=True)
            time.sleep(sleep_s)
        return super().__call__(base, ft, options, save)


def pair_job(**kwargs) -> PairJob:
    """The job object the launcher submits, ``PairJob(**kwargs)`` (the delayed one only when the test variable
    is set)."""
    cls = DelayedPairJob if os.environ.get(TEST_SLEEP_ENV) else PairJob
    return cls(**kwargs)


def limit_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch
    torch.set_num_threads(n)
