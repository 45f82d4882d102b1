"""launch.py on a REAL single-node Slurm cluster (opt-in: TRACING_SLURM_TESTS=1, see conftest_slurm.py).

Nothing is mocked: jobs are submitted with sbatch through submitit, run under slurmd, and their
states come from sacct.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest_slurm import slurm_cluster, slurm_executor  # noqa: F401 - fixtures
from helpers import save_trio
from tracing import launch
from tracing.options import Options
from tracing.results import load_record, load_results

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch.py"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-models")
    return save_trio(root)


def launch_cmd(cfg, out, *extra):
    return [sys.executable, str(LAUNCH), str(cfg), "--cluster", "slurm", "--stat", "cos", "--out", str(out),
            "--cpus", "1", "--no-report", *map(str, extra)]


def run_launch(cfg, out, *extra, env=None, timeout=150):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(launch_cmd(cfg, out, *extra), capture_output=True, text=True, env=e, cwd=ROOT,
                          timeout=timeout)


def sacct_states(job_id: str, wait_s: float = 15) -> dict[str, str]:
    """Final states of a job's tasks (a task's result file appears just before its step ends)."""
    deadline = time.time() + wait_s
    while True:
        r = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State"], capture_output=True,
                           text=True, check=True)
        states = dict(line.split("|", 1) for line in r.stdout.split() if "|" in line)
        if time.time() > deadline or not set(states.values()) & {"RUNNING", "COMPLETING", "PENDING"}:
            return states
        time.sleep(0.5)


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_pair_job_runs_under_slurm(slurm_executor, tiny_models, tmp_path):
    assert slurm_executor.cluster == "slurm"
    o = Options(stat=["cos"])
    save = {"cos": str(tmp_path / "cos.p")}
    job = slurm_executor.submit(launch.PairJob(threads=1), tiny_models["base"], tiny_models["ft"], o.to_dict(), save)
    summary = job.result()
    assert summary["status"] == "ok" and summary["job_id"] == job.job_id
    rec = load_record(save["cos"])
    assert rec["status"] == "ok" and rec["job_id"] == job.job_id and rec["log10_pvalue"] < -5
    # the result file appears just before the job step ends, and the accounting may list the job as
    # PENDING for a moment after that: wait for a final state, as sacct_states does
    deadline = time.time() + 60
    while job.get_info(mode="force")["State"] in ("RUNNING", "COMPLETING", "PENDING") and time.time() < deadline:
        time.sleep(0.5)
    assert job.get_info(mode="force")["State"] == "COMPLETED"


def test_launch_submits_one_array_and_rerun_submits_nothing(slurm_cluster, tiny_models, tmp_path):
    cfg = write_yaml(tmp_path / "list.yaml", [tiny_models["base"], tiny_models["ft"], tiny_models["indep"]])
    out = tmp_path / "out"
    r = run_launch(cfg, out, "--partition", slurm_cluster["partition"], "--array_parallelism", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cluster: slurm" in r.stdout
    assert r.stdout.count("submitted Slurm job") == 1
    log = json.loads((out / "launch.json").read_text())
    assert log["cluster"] == "slurm"
    assert len(log["arrays"]) == 1 and log["arrays"][0]["tasks"] == 3
    array_id = log["arrays"][0]["job_id"]
    assert sorted(p["job_id"] for p in log["pairs"]) == [f"{array_id}_{i}" for i in range(3)]
    assert sacct_states(array_id) == {f"{array_id}_{i}": "COMPLETED" for i in range(3)}

    assert len(list(out.rglob("cos-*.p"))) == 3
    df = load_results(out)
    assert len(df) == 3 and set(df["status"]) == {"ok"}
    assert sorted(df["job_id"]) == [f"{array_id}_{i}" for i in range(3)]  # computed inside the array tasks
    lp = {(Path(b).name, Path(f).name): v for b, f, v in zip(df["base"], df["ft"], df["log10_pvalue"])}
    assert lp[("base", "ft")] < -5 and lp[("base", "indep")] > -2

    jobs_before = sorted(p.name for p in (out / ".submitit").iterdir())
    r2 = run_launch(cfg, out)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "submitted" not in r2.stdout and "nothing to do" in r2.stdout
    assert "done 0, failed 0, skipped 3" in r2.stdout
    assert sorted(p.name for p in (out / ".submitit").iterdir()) == jobs_before
    assert json.loads((out / "launch.json").read_text())["arrays"] == []


def test_sampled_rows_are_read_once_per_model_across_array_tasks(slurm_cluster, tiny_models, tmp_path):
    """--rows under Slurm: the array tasks share the store beside the results (lock files, atomic
    writes); over the three pairs each model's rows are read from its weights exactly once."""
    from tracing.rowstore import FOLDER
    cfg = write_yaml(tmp_path / "list.yaml", [tiny_models["base"], tiny_models["ft"], tiny_models["indep"]])
    out = tmp_path / "out"
    r = run_launch(cfg, out, "--rows", "32", "--partition", slurm_cluster["partition"], "--array_parallelism", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"read once per model and kept in {out / FOLDER}" in r.stdout
    recs = [load_record(f) for f in out.rglob("cos-*.p")]
    assert len(recs) == 3 and all(rec["status"] == "ok" and rec["extra"]["rows"] == 32 for rec in recs)
    assert all(rec["job_id"] for rec in recs)  # computed inside the array tasks
    L = len(recs[0]["per_layer"])
    read = sum(rec["rows_store"][side]["read"] for rec in recs for side in ("base", "ft"))
    assert read == 3 * L  # three models, each block's rows read once
    assert len([d for d in (out / FOLDER).iterdir() if d.is_dir()]) == 3


def test_broken_pairs_fail_while_others_succeed(slurm_cluster, tiny_models, tmp_path):
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((Path(tiny_models["base"]) / "config.json").read_text())
    missing = tmp_path / "missing"
    cfg = write_yaml(tmp_path / "list.yaml", {"models_1": [tiny_models["base"]] * 3,
                                              "models_2": [tiny_models["ft"], str(no_weights), str(missing)]})
    out = tmp_path / "out"
    r = run_launch(cfg, out)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "done 1, failed 2, skipped 0" in r.stdout
    log = json.loads((out / "launch.json").read_text())
    assert len(log["arrays"]) == 1 and log["arrays"][0]["tasks"] == 2  # the missing folder never reaches Slurm
    df = load_results(out).set_index("ft")
    assert df.loc[tiny_models["ft"], "status"] == "ok"
    assert df.loc[str(no_weights), "status"] == "failed" and "no weights" in df.loc[str(no_weights), "error"]
    assert df.loc[str(no_weights), "job_id"]  # the failure happened inside a Slurm job
    assert df.loc[str(missing), "status"] == "failed" and "does not exist" in df.loc[str(missing), "error"]
    array_id = log["arrays"][0]["job_id"]
    assert set(sacct_states(array_id).values()) == {"COMPLETED"}  # a failed pair is a recorded result


def _wait_sleeping(out: Path, deadline: float) -> str:
    """The job id of the single pair once its job is inside the test-only sleep (so the
    Python process is up and submitit's signal handlers are installed)."""
    while time.time() < deadline:
        try:
            job_id = json.loads((out / "launch.json").read_text())["pairs"][0]["job_id"]
        except (OSError, ValueError, KeyError, IndexError):
            job_id = None
        if job_id:
            logs = list((out / ".submitit" / job_id).glob("*_log.out"))
            if any(f"{launch.TEST_SLEEP_ENV}: sleeping" in f.read_text(errors="replace") for f in logs):
                return job_id
        time.sleep(0.3)
    raise AssertionError("the job never started running")


@pytest.mark.parametrize("how", ["scontrol-requeue", "preemption-signal"])
def test_requeued_job_still_completes(slurm_cluster, tiny_models, tmp_path, how):
    """A running pair is requeued (by the admin, or by submitit's checkpoint on a preemption
    signal); the restarted job computes the result and the launcher reports it done."""
    cfg = write_yaml(tmp_path / "list.yaml", [tiny_models["base"], tiny_models["ft"]])
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", launch.TEST_SLEEP_ENV: "60"}
    proc = subprocess.Popen(launch_cmd(cfg, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)
    try:
        job_id = _wait_sleeping(out, time.time() + 90)
        if how == "scontrol-requeue":
            subprocess.run(["scontrol", "requeue", job_id], check=True)
        else:  # what Slurm sends on preemption: SIGTERM, then USR2 -> PairJob.checkpoint -> requeue
            subprocess.run(["scancel", job_id, "--signal", "SIGTERM"], check=True)
            subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stdout
    log = json.loads((out / "launch.json").read_text())
    pair = log["pairs"][0]
    assert pair["status"] == "done" and pair["job_id"] == job_id
    assert pair["restarts"] >= 1  # it really ran a second time
    assert pair["time"] < 60  # the restart skipped the first start's 60 s sleep: it computed at once
    rec = load_record(next(out.rglob("cos-*.p")))
    assert rec["status"] == "ok" and rec["log10_pvalue"] < -5
    # the launcher returns as soon as the result is saved; Slurm records the job's end a moment later
    deadline = time.time() + 60
    while True:
        r = subprocess.run(["sacct", "-n", "-P", "-j", job_id, "-D", "-X", "-o", "State"], capture_output=True,
                           text=True)
        states = r.stdout.split()
        if (states and states[-1] not in ("RUNNING", "COMPLETING", "PENDING")) or time.time() > deadline:
            break
        time.sleep(1)
    assert "REQUEUED" in states or "PREEMPTED" in states or len(states) >= 2, states
    assert states[-1] == "COMPLETED", states


def test_interrupted_launch_rerun_waits_for_running_jobs(slurm_cluster, tiny_models, tmp_path):
    """Ctrl-C leaves the jobs running; a rerun waits for them instead of submitting them again."""
    cfg = write_yaml(tmp_path / "list.yaml", [tiny_models["base"], tiny_models["ft"]])
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", launch.TEST_SLEEP_ENV: "25"}
    # launch.py as a terminal starts it, Ctrl-C raising KeyboardInterrupt, even when these tests run
    # in the background (there a child inherits SIGINT ignored, and Python then leaves it ignored)
    cmd = launch_cmd(cfg, out)
    cmd[1:2] = ["-c", "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                      f"sys.argv = sys.argv[1:]; runpy.run_path({str(LAUNCH)!r}, run_name='__main__')", str(LAUNCH)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        job_id = _wait_sleeping(out, time.time() + 90)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout
    assert "keep running on Slurm" in stdout
    r = run_launch(cfg, out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "still running from an earlier launch" in r.stdout and "submitted Slurm job" not in r.stdout
    assert "done 1, failed 0" in r.stdout
    job_dirs = [p.name for p in (out / ".submitit").iterdir() if not p.name.startswith(".")]
    assert job_dirs == [job_id]  # submitted once
    assert load_record(next(out.rglob("cos-*.p")))["status"] == "ok"
