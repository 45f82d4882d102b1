"""launch.py as a process: a killed launcher leaves no worker behind, two launches into one
folder compute each pair once, and a bad --out fails at once."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tracing.launch import TEST_SLEEP_ENV
from tracing.results import load_results

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch.py"
SLEEPING = f"{TEST_SLEEP_ENV}: sleeping"


def launch_env(tmp_path: Path, **extra) -> dict:
    conf = tmp_path / "slurm-none.conf"  # no Slurm controller can answer
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "SLURM_CONF": str(conf),
            **extra}


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _children() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(pid: int) -> set[int]:
    parents = _children()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def started(pid: int) -> str | None:
    """When ``pid`` started (clock ticks after boot): with the pid, names one process even if the pid is reused."""
    fields = _stat(pid)
    return fields[19] if fields else None


def alive(pid: int, start: str | None = None) -> bool:
    """Running (not gone, not a zombie waiting to be reaped), and the same process when ``start`` is given."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and (start is None or fields[19] == start)


def wait_until(done, timeout: float, what) -> None:
    """Poll ``done()`` until it holds; fail after ``timeout`` seconds with ``what()``. The deadline is
    generous: it bounds a hung test, not the time a loaded machine may take."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what()}")
        time.sleep(0.1)


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    def seen():
        if proc.poll() is not None and text not in path.read_text(errors="replace"):
            raise AssertionError(f"launch.py ended early:\n{path.read_text(errors='replace')}")
        return text in path.read_text(errors="replace")
    wait_until(seen, timeout, lambda: f"no {text!r}:\n{path.read_text(errors='replace')}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_launcher_leaves_no_worker(tmp_path):
    """Every process under the launcher while a worker is inside its job is gone once the launcher is
    killed. Each wait polls for the state it needs, with deadlines far above what a loaded machine
    takes; the job sleeps far longer than them, so it is still inside the job when the launcher dies."""
    cfg = write_yaml(tmp_path / "list.yaml", ["demo:base-a", "demo:a-docs"])
    log = tmp_path / "launch.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(LAUNCH), str(cfg), "--cluster", "local", "--stat", "cos",
                                 "--max_workers", "1", "--no-report", "--out", str(tmp_path / "out")],
                                stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=launch_env(tmp_path, **{TEST_SLEEP_ENV: "3600"}))
    left: dict[int, str | None] = {}
    try:
        wait_for_text(log, SLEEPING, proc, timeout=900)  # a worker is inside the job
        left = {p: started(p) for p in descendants(proc.pid)}
        assert left, "no worker process found"
        assert proc.poll() is None and all(alive(p, t) for p, t in left.items()), "the launch ended before it was killed"
        proc.kill()
        proc.wait()

        def orphans():
            return [p for p, t in left.items() if alive(p, t)]
        wait_until(lambda: not orphans(), 300,
                   lambda: [Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in orphans()])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p, t in left.items():
            if alive(p, t):
                os.kill(p, signal.SIGKILL)


def test_two_launches_into_one_folder_compute_each_pair_once(tmp_path):
    pairs = [("demo:base-a", "demo:a-docs"), ("demo:base-a", "demo:base-b"), ("demo:base-b", "demo:b-docs"),
             ("demo:base-c", "demo:a-sys")]
    cfg = write_yaml(tmp_path / "list.yaml", {"models_1": [a for a, _ in pairs], "models_2": [b for _, b in pairs]})
    cmd = [sys.executable, str(LAUNCH), str(cfg), "--cluster", "local", "--stat", "cos", "--max_workers", "1",
           "--no-report", "--out", str(tmp_path / "out")]
    env = launch_env(tmp_path, **{TEST_SLEEP_ENV: "2"})
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    computed = [o.count(SLEEPING) for o in outs]  # printed by the job itself, once per pair it computes
    assert sum(computed) == len(pairs), (computed, outs)
    assert any("being computed by another launch" in o for o in outs), outs
    for o, c in zip(outs, computed):  # a pair a launch only waited for is not reported as done by it
        waited = len(re.findall(r"^\[\d+/\d+\] .*: done by another launch in ", o, re.M))
        skipped = int(re.search(r"skipped (\d+) \(already done\)", o).group(1))
        assert c + waited + skipped == len(pairs), o
        assert len(re.findall(r"^\[\d+/\d+\] .*: done in ", o, re.M)) == c, o
        assert re.search(rf"^done {c}, failed 0, skipped {skipped} \(already done\)"
                         + (rf", {waited} done by another launch in " if waited else " in "), o, re.M), o
    df = load_results(tmp_path / "out")
    assert len(df) == len(pairs) and set(df["status"]) == {"ok"}
    assert not list((tmp_path / "out").rglob(".launch.lock"))  # every claim was released


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stdout, r.stderr)
    return lines[0]


def test_bad_out_fails_before_any_work(tmp_path):
    cfg = write_yaml(tmp_path / "list.yaml", ["nobody-org/model-a", "nobody-org/model-b"])
    taken = tmp_path / "results.txt"
    taken.write_text("not a folder\n")
    env = launch_env(tmp_path, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    for out in (taken, taken / "sub"):
        r = subprocess.run([sys.executable, str(LAUNCH), str(cfg), "--cluster", "local", "--stat", "cos",
                            "--no-report", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=env,
                           timeout=120)
        line = _one_line_error(r)
        assert "--out" in line and str(taken) in line
        assert "fetching" not in r.stdout  # nothing was started
    assert taken.read_text() == "not a folder\n"
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o500)
        r = subprocess.run([sys.executable, str(LAUNCH), str(cfg), "--cluster", "local", "--no-report",
                            "--out", str(ro / "out")], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        assert "not writable" in _one_line_error(r)


def test_claims_of_a_dead_launcher_are_taken_over(tmp_path):
    import json
    import socket

    from tracing.launch import Claims
    from tracing.launch.claims import LOCK_NAME

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "pair"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "time": 0}))
    mine, other = Claims(), Claims()
    assert mine.claim(folder) is None  # the dead launcher's claim is stale
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert other.claim(folder)["pid"] == os.getpid()  # a live holder is reported, not overridden
    mine.release_all()
    assert not (folder / LOCK_NAME).exists()


def test_taking_over_a_dead_launchers_claims_leaves_no_files(tmp_path):
    """After a killed launch's claims are taken over and the pairs finish, the pair folders hold
    only results: no claim and no takeover lock."""
    import json
    import socket

    from tracing.launch import Claims
    from tracing.launch.claims import LOCK_NAME

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folders = [tmp_path / f"pair{i}" for i in range(3)]
    mine = Claims()
    for folder in folders:
        folder.mkdir()
        (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "time": 0}))
        assert mine.claim(folder) is None
    mine.release(folders[0])
    mine.release_all()
    assert [sorted(p.name for p in f.iterdir()) for f in folders] == [[], [], []]


def test_a_stale_claim_is_taken_over_by_one_launcher_only(tmp_path, monkeypatch):
    """Two launchers find the same dead launcher's claim; the late one is still judging it stale when
    the early one has already taken it over. The late one must leave the fresh claim alone (not
    delete it and compute the pair as well) and report the early one as the holder."""
    import json
    import socket
    import threading

    from tracing.launch import Claims, claims

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    real = claims.is_stale
    late_judging = threading.Event()
    slept = set()

    def staged(path, holder):
        stale = real(path, holder)
        me = threading.current_thread().name
        if stale and me == "late" and me not in slept:
            slept.add(me)
            late_judging.set()
            time.sleep(0.5)  # the early launcher takes the claim over meanwhile
        elif stale and me == "early":
            late_judging.wait(10)
        return stale

    monkeypatch.setattr(claims, "is_stale", staged)
    folder = tmp_path / "pair"
    folder.mkdir()
    (folder / claims.LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "time": 0}))
    launchers = {}
    for tag in ("early", "late"):
        launchers[tag] = Claims()
        launchers[tag].me = {**launchers[tag].me, "launcher": tag}
    got = {}
    start = threading.Barrier(2)

    def claim(tag):
        start.wait()
        got[tag] = launchers[tag].claim(folder)

    threads = [threading.Thread(target=claim, args=(tag,), name=tag) for tag in launchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert got["early"] is None, got
    assert (got["late"] or {}).get("launcher") == "early", got  # the fresh claim, reported as live
    assert json.loads((folder / claims.LOCK_NAME).read_text())["launcher"] == "early"  # and left in place
    for c in launchers.values():
        c.release_all()
    assert not (folder / claims.LOCK_NAME).exists()
