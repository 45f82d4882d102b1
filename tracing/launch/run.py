"""One launch, phase by phase: read the list, choose the cluster, plan, prefetch, size, run,
then summarise and write the report."""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import TracingError
from .claims import Claims, wait_released
from .console import fmt_minutes, fmt_seconds, first_line, plan_table, rel, say as _say, summary_table
from ..fileio import check_out_folder
from ..results_folder import (default_out, read_run_log, write_known_lineage, write_known_relations,
                              write_run_log)
from .local import run_local
from .model_list import ModelList, build_options, read_model_list
from .prefetch import ensure_demo, prefetch
from .probe import (ClusterChoice, SlurmInfo, active_slurm_jobs, choose_cluster, default_max_workers,
                    local_cores, local_mem_gb, slurm_info)
from .sizing import DEFAULT_SLURM_CPUS, is_forward_stat
from .slurm import chunked, group_by_resources, run_slurm, wait_for_foreign
from .tasks import Task, TaskState, make_tasks, mark_failed, refresh, size_tasks


@dataclass
class LaunchSettings:
    config: str
    cli_options: dict = field(default_factory=dict)  # comparison options given on the command line
    cluster: str = "auto"
    partition: str | None = None
    array_parallelism: int | None = None
    max_workers: int | None = None
    dry_run: bool = False
    out: str | None = None
    timeout_min: int | None = None
    mem_gb: int | None = None
    gpus: int | None = None
    cpus: int | None = None
    prefetch: bool = True
    report: bool = True
    attest_key: str | None = None  # sign each result (tracing.evidence) after the jobs
    download: bool = False  # hub models downloaded whole even for a sampled test (no range requests)


@dataclass
class Launch:
    """The state of one launch as it goes through its phases."""

    s: LaunchSettings
    say: Callable
    model_list: ModelList
    options: object  # tracing.options.Options
    out: Path
    choice: ClusterChoice | None = None
    info: SlurmInfo | None = None
    size_kw: dict = field(default_factory=dict)
    max_workers: int = 1
    tasks: list[Task] = field(default_factory=list)
    arrays: list[dict] = field(default_factory=list)
    finished: list[Task] = field(default_factory=list)
    n_expected: int = 0
    claims: Claims = field(default_factory=Claims)
    config_notes: list = field(default_factory=list)  # models whose config is not on this machine
    unrunnable: str | None = None  # why no pair can run with these options (main.py's checks)

    @property
    def slurm(self) -> bool:
        return self.choice is not None and self.choice.kind == "slurm"


def launch(s: LaunchSettings, say: Callable = _say) -> int:
    """Run (or with ``dry_run`` print) the plan; returns the exit code (0 ok, 1 a pair failed)."""
    run = read_list(s, say)
    choose_where(run)
    plan(run)
    check_options(run)
    if s.dry_run:
        return dry_run(run)
    if run.unrunnable:
        raise TracingError(run.unrunnable)
    write_known_lineage(run.out, run.model_list.lineage)
    write_known_relations(run.out, run.model_list.labels)
    start = time.time()
    try:
        todo, foreign, elsewhere = split_work(run)
        run.n_expected = len(todo) + len(foreign) + len(elsewhere)
        runnable = prepare(run, todo)
        execute(run, runnable)
        wait_for_others(run, foreign, elsewhere, runnable)
    finally:
        run.claims.release_all()
    return summarise(run, start)


# ------------------------------------------------------------------------------------------
# phases
# ------------------------------------------------------------------------------------------
def read_list(s: LaunchSettings, say: Callable) -> Launch:
    """Read the model list and the options; check the results folder before any work."""
    model_list = read_model_list(s.config)
    options = build_options(model_list, s.cli_options)
    out = check_out_folder(Path(s.out) if s.out else default_out(s.config))
    if s.attest_key:
        from ..evidence.statement import load_signer
        load_signer(s.attest_key)  # a bad key is an error before any work
    for n in model_list.notes:
        say(f"note: {n}")
    return Launch(s, say, model_list, options, out)


def choose_where(run: Launch) -> None:
    """Slurm or this machine, and what each pair may ask for there."""
    s = run.s
    run.choice = choose_cluster(s.cluster)
    run.say(f"cluster: {run.choice.kind} ({run.choice.reason})")
    run.info = slurm_info(s.partition) if run.slurm else None
    overrides = dict(run.model_list.resources)
    for k in ("mem_gb", "timeout_min", "gpus", "cpus", "partition"):
        v = getattr(s, k)
        if v is not None:
            overrides[k] = v
    run.max_workers = max(1, s.max_workers or default_max_workers())
    if run.slurm:
        cpus = DEFAULT_SLURM_CPUS
        if run.info.node_cpus and "cpus" not in overrides:
            cpus = min(cpus, run.info.node_cpus)
        data_gpus, has_gpus = None, run.info.has_gpus
    else:
        cpus = max(1, local_cores() // run.max_workers)
        overrides.pop("partition", None)
        overrides.pop("cpus", None)  # locally the worker count decides the threads
        data_gpus, has_gpus = 0, False
    run.size_kw = dict(slurm=run.slurm, cpus=cpus, data_gpus=data_gpus, cluster_has_gpus=has_gpus,
                       overrides=overrides)


def plan(run: Launch) -> None:
    """One task per pair, with its result files and what is already done."""
    run.tasks = make_tasks(run.model_list.pairs, run.options, run.out)
    n_done = sum(t.status == TaskState.DONE for t in run.tasks)
    run.say(f"{len(run.tasks)} pair(s) from {run.model_list.source} ({run.model_list.form}), statistics "
            f"{','.join(run.options.stat)}; results in {rel(run.out)}; {n_done} already done")


def check_options(run: Launch) -> None:
    """main.py's checks of the options against every pending pair's configs (no network, nothing
    written): a pair that fails them is an error of the plan; when every pair fails, nothing can
    run and the launch stops before any job starts."""
    run.config_notes = size_tasks(run.tasks, run.options, **run.size_kw)
    pending = [t for t in run.tasks if t.status != TaskState.DONE]
    bad = [t for t in pending if t.option_problem]
    if not pending or len(bad) < len(pending):
        return
    msgs = {str(t.problem) for t in bad}
    if len(msgs) == 1:
        run.unrunnable = f"{msgs.pop()} (every pair of {run.model_list.source})"
    else:
        run.unrunnable = (f"no pair of {run.model_list.source} can run with these options; {bad[0].pair.label}: "
                          f"{bad[0].problem} (--dry-run lists all {len(bad)})")


def dry_run(run: Launch) -> int:
    """Print the plan: pairs, resources, result files, status; nothing is written. The exit code is
    the run's: 2 when no pair can run with these options, 1 when some pair cannot run, else 0."""
    notes = run.config_notes
    from ..sources.cost import pair_cost
    network = [pair_cost(t.infos, run.options, run.s.download) if t.status != TaskState.DONE else "-"
               for t in run.tasks]
    run.say(plan_table(run.tasks, network if any(c not in ("none", "-") for c in network) else None))
    for t in run.tasks:
        if t.problem:
            run.say(f"error: {t.pair.label}: {t.problem}")
    if len(notes) > 3:  # one line, not one per model, for a long list of hub models
        run.say(f"note: the configs of {len(notes)} models are not in the local Hugging Face cache "
                f"({', '.join(n.spec for n in notes[:3])}, ...); their pairs are sized as Llama-2-7B; "
                f"`hf download <id> config.json` for each gives exact sizes")
    else:
        for n in notes:
            run.say(f"note: {n}")
    _say_read_costs(run)
    labels = run.model_list.labels
    if labels:
        from collections import Counter
        counts = Counter(p["relation"] for p in labels["pairs"])
        run.say(f"labels: {len(labels['pairs'])} labelled pair(s) ({', '.join(f'{r} {n}' for r, n in counts.items())}); "
                f"{len(labels['audit'])} relabelled, {len(labels['excluded'])} excluded (see the list's audit)")
    resource_warnings(run.tasks, run.slurm, run.info, run.say)
    if run.slurm:
        groups = group_by_resources([t for t in run.tasks if t.status != TaskState.DONE and not t.problem])
        n_arrays = sum(len(chunked(g, run.info.max_array_size)) for g in groups.values())
        run.say(f"would submit {n_arrays} job array(s) (MaxArraySize {run.info.max_array_size})")
    if run.unrunnable:
        run.say(f"error: {run.unrunnable}", file=sys.stderr)
        return 2
    return 1 if any(t.problem for t in run.tasks if t.status != TaskState.DONE) else 0


def _say_read_costs(run: Launch) -> None:
    """A sampled test's bytes per hub model (from the configs; nothing is read)."""
    from ..sources.cost import estimate_line, total_cost_line
    seen = set()
    for t in run.tasks:
        for info in t.infos or ():
            if info is not None and info.spec not in seen and not run.s.download:
                seen.add(info.spec)
                line = estimate_line(info, run.options)
                if line:
                    run.say(line)
    line = total_cost_line([t for t in run.tasks if t.status != TaskState.DONE], run.options, run.s.download)
    if line:
        run.say(line)


def split_work(run: Launch) -> tuple[list[Task], list[Task], list[Task]]:
    """The pairs this launch computes, those an earlier launch's Slurm jobs still compute, and
    those another launch running now computes (claimed by it)."""
    todo = [t for t in run.tasks if t.status != TaskState.DONE]
    for t in run.tasks:
        if t.status == TaskState.DONE:
            t.status = TaskState.SKIPPED
    foreign = _still_on_slurm(run, todo) if run.slurm and todo else []
    todo = [t for t in todo if t not in foreign]
    elsewhere, holders = [], set()
    for t in todo:
        holder = run.claims.claim(t.dir)
        if holder is not None:
            t.status = TaskState.ELSEWHERE
            elsewhere.append(t)
            holders.add(f"process {holder.get('pid', '?')} on {holder.get('host', '?')}")
            continue
        refresh(t)  # another launch may have finished it between the plan and the claim
        if t.status == TaskState.DONE:
            t.status = TaskState.SKIPPED
            run.claims.release(t.dir)
    todo = [t for t in todo if t.status not in (TaskState.ELSEWHERE, TaskState.SKIPPED)]
    if elsewhere:
        run.say(f"{len(elsewhere)} pair(s) are being computed by another launch ({', '.join(sorted(holders))}) "
                f"into the same folder: waiting for them instead of computing them again")
    return todo, foreign, elsewhere


def _still_on_slurm(run: Launch, todo: list[Task]) -> list[Task]:
    """Pairs still running from an earlier launch are waited for, not resubmitted."""
    previous = {(p.get("base"), p.get("ft"), tuple(p.get("results") or ())): p.get("job_id")
                for p in read_run_log(run.out).get("pairs", [])}
    active = active_slurm_jobs() or set()
    foreign = []
    for t in todo:
        jid = previous.get((t.pair.base, t.pair.ft, tuple(str(t.paths[x]) for x in t.stats)))
        if jid and jid in active:
            t.job_id, t.status = jid, TaskState.RUNNING
            foreign.append(t)
    if foreign:
        run.say(f"{len(foreign)} pair(s) still running from an earlier launch (jobs "
                f"{', '.join(sorted({str(t.job_id).split('_')[0] for t in foreign}))}): waiting for them")
    return foreign


def prepare(run: Launch, todo: list[Task]) -> list[Task]:
    """Fetch the models, size the pairs; the pairs that cannot run are recorded as failed."""
    if run.s.prefetch and todo:
        errors = prefetch(todo, run.say, remote=run.options.rows is not None and not run.s.download)
        for t in todo:
            bad = [errors[m] for m in (t.pair.base, t.pair.ft) if m in errors]
            if bad:
                t.problem = TracingError(bad[0])
    elif todo:
        ensure_demo(todo)
    notes = size_tasks([t for t in todo if not t.problem], run.options, configs={}, **run.size_kw)
    for n in notes:
        run.say(f"note: the config of {n.spec} is not cached (--no-prefetch): its jobs fetch the model "
                f"themselves, and its resources assume a Llama-2-7B-sized model")
    runnable = []
    for t in todo:
        if t.problem:
            mark_failed(t, t.problem)
            _on_done(run, t)
        else:
            runnable.append(t)
    resource_warnings(runnable, run.slurm, run.info, run.say)
    return runnable


def _on_done(run: Launch, t: Task) -> None:
    run.finished.append(t)
    run.claims.release(t.dir)
    extra = f" ({t.error})" if t.error else ""
    run.say(f"[{len(run.finished)}/{run.n_expected}] {t.pair.label}: {t.status} in {fmt_seconds(t.time)}{extra}")


def rows_store(run: Launch) -> str | None:
    """Where jobs keep each model's sampled rows (``--rows``), so a grid reads each model once."""
    if run.options.rows is None:
        return None
    from ..rowstore import FOLDER
    return str(run.out / FOLDER)


def execute(run: Launch, runnable: list[Task]) -> None:
    """Run the pairs: Slurm job arrays, or a bounded pool of workers here."""
    if not runnable:
        return
    s = run.s
    store = rows_store(run)
    if store:
        run.say(f"sampled rows (--rows {run.options.rows}): read once per model and kept in {rel(Path(store))}")
    if run.slurm:
        def on_submit(chunk, array_id):
            r = chunk[0].resources
            run.arrays.append({"job_id": array_id, "tasks": len(chunk), **dataclasses.asdict(r)})
            run.say(f"submitted Slurm job {array_id}: {len(chunk)} pair(s), {r.mem_gb} GB, {r.cpus} CPU(s), "
                    f"{r.gpus} GPU(s), {fmt_minutes(r.timeout_min)} each"
                    + (f", at most {s.array_parallelism} at once" if s.array_parallelism else ""))
            write_run_log(run.out, run.tasks, run.choice.kind, run.arrays)

        run_slurm(runnable, run.out, array_parallelism=s.array_parallelism, info=run.info,
                  job_name=f"tracing-{run.out.name}"[:64], rows_store=store, on_submit=on_submit,
                  on_done=lambda t: _on_done(run, t), download=s.download)
    else:
        threads = max(1, local_cores() // run.max_workers)
        run.say(f"running {len(runnable)} pair(s) here, at most {run.max_workers} at a time, {threads} thread(s) each")
        run_local(runnable, run.max_workers, threads, on_done=lambda t: _on_done(run, t), rows_store=store,
                  download=s.download)


def wait_for_others(run: Launch, foreign: list[Task], elsewhere: list[Task], runnable: list[Task]) -> None:
    """Wait for the pairs an earlier launch's Slurm jobs or another running launch compute."""
    if foreign:
        wait_for_foreign(foreign, on_done=lambda t: _on_done(run, t))
    for t in elsewhere:
        wait_released(t.dir)
        refresh(t)
        if t.status == TaskState.DONE:  # computed by the other launch: this one only waited
            t.status, t.error = TaskState.DONE_ELSEWHERE, None
        else:
            t.status = TaskState.FAILED
            t.error = "the other launch computing this pair ended without its result; rerun to retry"
        _on_done(run, t)
    if not (foreign or elsewhere or runnable) and not any(t.status == TaskState.FAILED for t in run.tasks):
        run.say("nothing to do: every result already exists (delete a result file to recompute it)")


def summarise(run: Launch, start: float) -> int:
    """Record the run, print the summary, write the report; the exit code."""
    write_run_log(run.out, run.tasks, run.choice.kind, run.arrays)
    counts = {k: sum(t.status == k for t in run.tasks)
              for k in (TaskState.DONE, TaskState.FAILED, TaskState.SKIPPED, TaskState.DONE_ELSEWHERE)}
    elsewhere = counts[TaskState.DONE_ELSEWHERE]
    run.say("")
    run.say(summary_table(run.tasks))
    run.say(f"done {counts[TaskState.DONE]}, failed {counts[TaskState.FAILED]}, skipped {counts[TaskState.SKIPPED]} "
            f"(already done)" + (f", {elsewhere} done by another launch" if elsewhere else "")
            + f" in {fmt_seconds(time.time() - start)}; results in {rel(run.out)}")
    if counts[TaskState.FAILED]:
        run.say("rerun the same command to retry the failed pairs (their errors are in the result files)")
    families = write_families(run)
    if run.s.attest_key:
        from ..evidence.make import attest_results
        done, _ = attest_results([p for t in run.tasks for p in t.paths.values()], run.s.attest_key, run.say,
                                 {stat: doc for stat, (_, doc) in families.items()})
        carried = " and its grid's Holm family" if families else ""
        run.say(f"attested {done} result(s) with {run.s.attest_key}{carried} (<result>.intoto.json beside each)")
    if run.s.report:
        write_report_for(run.out, run.say, run.options.significance)
    return 1 if counts[TaskState.FAILED] else 0


def write_families(run: Launch) -> dict:
    """The Holm family of each statistic's grid in the results folder, now that every pair is done
    (``attest RESULT --family`` takes it); a problem with it is a warning, never a failed run."""
    from ..evidence.family import write_grid_families
    try:
        families = write_grid_families(run.out, run.options.significance)
    except (TracingError, OSError) as e:
        run.say(f"warning: could not write the Holm family of the grid ({first_line(str(e))[:200]})", file=sys.stderr)
        return {}
    for stat, (path, doc) in families.items():
        run.say(f"Holm family of the {stat} grid ({len(doc['members'])} pairs): {rel(path)}")
    return families


def resource_warnings(tasks: list[Task], slurm: bool, info: SlurmInfo | None, say: Callable) -> None:
    """Pairs that will not fit where they are going."""
    if slurm and info:
        if info.node_mem_gb:
            big = [t for t in tasks if t.resources and t.resources.mem_gb > info.node_mem_gb]
            if big:
                say(f"warning: {len(big)} pair(s) need more memory than the largest node ({info.node_mem_gb:.0f} GB); "
                    f"Slurm will refuse them: use a partition with bigger nodes (--partition) or lower --mem_gb")
        if not info.has_gpus and any(t.resources and any(is_forward_stat(s) for s in t.stats) for t in tasks):
            say("note: the cluster reports no GPUs; forward-pass statistics will run on CPUs")
    elif not slurm:
        limit = local_mem_gb()
        big = [t for t in tasks if t.resources and t.resources.mem_gb > limit]
        if big:
            say(f"warning: {len(big)} pair(s) are estimated to need more than this machine's {limit:.0f} GB; "
                f"they may run out of memory (first: {big[0].pair.label}, {big[0].resources.mem_gb} GB)")


def write_report_for(out: Path, say: Callable, significance: float | None = None) -> None:
    """The report of the results folder, its verdicts at ``significance`` (from the stored p-values,
    whatever level a result was computed at); a problem with it is a warning, never a failed run."""
    try:
        from ..report import write_report
        write_report(out, significance=significance)
        say(f"report: {rel(out)}")
    except Exception as e:  # noqa: BLE001 - a report problem never fails the run
        say(f"warning: could not write the report ({type(e).__name__}: {first_line(str(e))[:200]})", file=sys.stderr)
