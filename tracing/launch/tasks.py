"""The plan: one task per pair, its statistics, result files, resources and state."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
import enum
from pathlib import Path

from ..errors import TracingError
from .configs import ConfigUnavailable, model_info
from .console import first_line, say
from ..results_folder import result_path
from .model_list import Pair
from .sizing import Resources, size_pair


class _StrEnum(str, enum.Enum):
    """``enum.StrEnum`` for Python 3.10: members are strings and print as their values."""

    def __str__(self) -> str:
        return str(self.value)


StrEnum = getattr(enum, "StrEnum", _StrEnum)


class TaskState(StrEnum):
    """Where a pair stands. Before running: TODO, DONE (every result exists) or FAILED_BEFORE
    (an earlier run recorded a failure; retried). While running: RUNNING, or ELSEWHERE (another
    launch computes it). After: DONE, DONE_ELSEWHERE (another launch computed it while this one
    waited), SKIPPED (it was done before this launch) or FAILED."""

    TODO = "todo"
    DONE = "done"
    FAILED_BEFORE = "failed-before"
    RUNNING = "running"
    ELSEWHERE = "running elsewhere"
    DONE_ELSEWHERE = "done by another launch"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class Task:
    """One pair's job: its statistics, result files, resources and outcome."""

    pair: Pair
    stats: list[str]
    paths: dict[str, Path]  # stat -> result pickle
    options: dict  # Options.to_dict() for the statistics still to compute
    status: TaskState = TaskState.TODO
    todo: list[str] = field(default_factory=list)
    resources: Resources | None = None
    infos: tuple = (None, None)  # ModelInfo of base, ft
    problem: TracingError | None = None  # why the pair cannot run (found before running)
    option_problem: bool = False  # the problem is an option this pair cannot take (main.py's checks)
    error: str | None = None
    time: float | None = None
    job_id: str | None = None
    restarts: int = 0
    handed_out_at: float = 0.0  # when this launch submitted it (for the elapsed time of a lost job)
    compute_start: float | None = None  # wall-clock start and end of the computation (epoch seconds)
    compute_end: float | None = None
    log: str | None = None

    @property
    def dir(self) -> Path:
        return next(iter(self.paths.values())).parent

    def plan_status(self) -> str:
        """The status cell of the plan table."""
        if self.problem:
            return "error"
        if None in self.infos:
            return f"{self.status} *"
        if self.status == TaskState.TODO and len(self.todo) < len(self.stats):
            return f"todo ({len(self.stats) - len(self.todo)}/{len(self.stats)} done)"
        return str(self.status)

    def save_targets(self) -> dict[str, str]:
        """``{stat: result path}`` of the statistics the job must write."""
        return {s: str(self.paths[s]) for s in self.todo}


def stat_status(path: Path) -> str:
    """``missing``, ``unreadable``, or the status stored in the result (``ok``, ``failed``)."""
    from ..results import load_record

    if not path.is_file():
        return "missing"
    try:
        rec = load_record(path)
    except Exception:
        return "unreadable"
    return rec.get("status", "ok") if isinstance(rec, dict) else "unreadable"


def refresh(task: Task) -> None:
    """Set ``todo`` and the state from the result files on disk."""
    states = {s: stat_status(p) for s, p in task.paths.items()}
    task.todo = [s for s, st in states.items() if st != "ok"]
    if not task.todo:
        task.status = TaskState.DONE
    elif any(st == "failed" for st in states.values()):
        task.status = TaskState.FAILED_BEFORE
    else:
        task.status = TaskState.TODO


def make_tasks(pairs: list[Pair], options, out: Path) -> list[Task]:
    """One task per pair; ``status`` from the result files already there."""
    tasks = []
    for pair in pairs:
        paths = {s: result_path(out, pair, s, options) for s in options.stat}
        task = Task(pair, list(options.stat), paths, {})
        refresh(task)
        tasks.append(task)
    return tasks


def size_tasks(tasks: list[Task], options, *, slurm: bool, cpus: int | None, data_gpus: int | None,
               cluster_has_gpus: bool, overrides: dict, configs: dict | None = None) -> list[ConfigUnavailable]:
    """Read both configs of every pair (no network), check the options against them as main.py
    does (a pair that fails gets its ``problem``) and size it; returns the models whose config is
    not on this machine (their pairs are sized as Llama-2-7B and checked by their job)."""
    configs = {} if configs is None else configs

    def info_of(spec):
        if spec not in configs:
            try:
                configs[spec] = model_info(spec)
            except TracingError as e:
                configs[spec] = e
        return configs[spec]

    for t in tasks:
        ia, ib = info_of(t.pair.base), info_of(t.pair.ft)
        hard = [x for x in (ia, ib) if isinstance(x, Exception) and not isinstance(x, ConfigUnavailable)]
        t.infos = tuple(None if isinstance(x, Exception) else x for x in (ia, ib))
        if hard:
            t.problem, t.resources = hard[0], None
            continue
        stats = t.todo or t.stats
        if not any(x is None for x in t.infos):
            try:  # main.py's checks of the options against the two shapes, before any job starts
                ctx = [i.max_positions for i in t.infos if i.max_positions]
                options.check_pair(t.infos[0].arch, t.infos[1].arch, stats, min(ctx) if ctx else None)
            except TracingError as e:
                t.problem, t.option_problem, t.resources = e, True, None
                continue
        t.resources = size_pair(t.infos[0], t.infos[1], stats, options, slurm=slurm, cpus=cpus,
                                data_gpus=data_gpus, cluster_has_gpus=cluster_has_gpus, overrides=overrides)
        opts = options.for_stat(stats[0]).to_dict()
        opts["stat"] = list(stats)
        if opts.get("mem_budget_gb") is None and t.resources.solve_budget_gb is not None:
            opts["mem_budget_gb"] = t.resources.solve_budget_gb
        t.options = opts
    return [x for x in configs.values() if isinstance(x, ConfigUnavailable)]


class PairFailed(Exception):
    """Why a pair ended without a result when the job itself could not say (e.g. it was killed)."""


def mark_failed(task: Task, error: str | BaseException, elapsed: float = 0.0) -> None:
    """Write a failed record for every statistic of the task not done yet."""
    from ..results import failure_record, is_done, save_record

    exc = error if isinstance(error, BaseException) else PairFailed(error)
    task.status, task.time = TaskState.FAILED, elapsed
    task.error = f"{type(exc).__name__}: {first_line(str(exc))}" if isinstance(error, BaseException) else error
    task.compute_end = time.time()
    task.compute_start = task.compute_end - elapsed
    for s in task.todo or task.stats:
        p = task.paths[s]
        if not is_done(p):
            opts = {**task.options, "stat": s}
            try:
                save_record(failure_record(task.pair.base, task.pair.ft, s, opts, exc, elapsed), p)
            except Exception as e:  # noqa: BLE001
                say(f"warning: could not write the failure record {p}: {e}", file=sys.stderr)


def apply_summary(task: Task, summary: dict) -> None:
    """Take the outcome a job returned (see :class:`tracing.launch.job.PairJob`)."""
    task.time = summary.get("time")
    task.compute_start, task.compute_end = summary.get("start"), summary.get("end")
    task.job_id = summary.get("job_id") or task.job_id
    task.restarts = int(summary.get("restarts") or 0)
    if summary.get("status") == "ok":
        task.status, task.error = TaskState.DONE, None
    else:
        task.status, task.error = TaskState.FAILED, summary.get("error") or "failed"
