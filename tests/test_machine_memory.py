"""The memory the toolkit sizes its parallel work by: MemAvailable, at most a cgroup's memory limit
(a Slurm job's ``--mem``), read from fake cgroup files."""
from tracing.machine import available_bytes, cgroup_limit_files, cgroup_memory_limit

GiB = 1 << 30


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v2_limit_of_the_job_above_the_task(tmp_path):
    """Slurm's limit is on the job's cgroup; the step's and task's say ``max``."""
    root = tmp_path / "cgroup"
    own = _write(tmp_path / "self", "0::/system.slice/job_7/step_0/task_0\n")
    _write(root / "system.slice/job_7/step_0/task_0/memory.max", "max\n")
    _write(root / "system.slice/job_7/step_0/memory.max", "max\n")
    _write(root / "system.slice/job_7/memory.max", f"{3 * GiB}\n")
    files = cgroup_limit_files(own, root)
    assert files[0] == f"{root}/system.slice/job_7/step_0/task_0/memory.max" and files[-1] == f"{root}/memory.max"
    assert cgroup_memory_limit(files) == 3 * GiB
    _write(root / "system.slice/job_7/step_0/memory.max", f"{2 * GiB}\n")  # the smallest limit binds
    assert cgroup_memory_limit(files) == 2 * GiB


def test_cgroup_v1_limit_and_no_limit(tmp_path):
    root = tmp_path / "cgroup"
    own = _write(tmp_path / "self", "5:cpu,cpuacct:/slurm/job_9\n4:memory:/slurm/job_9\n0::/\n")
    leaf = _write(root / "memory/slurm/job_9/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "none"
    files = cgroup_limit_files(own, root)
    assert str(leaf) in files and not any("cpu" in f for f in files)
    assert cgroup_memory_limit(files) is None
    leaf.write_text(f"{5 * GiB}\n")
    assert cgroup_memory_limit(files) == 5 * GiB
    assert cgroup_memory_limit(cgroup_limit_files(tmp_path / "missing", root)) is None  # no cgroup listing


def test_available_bytes_is_memavailable_at_most_the_limit(tmp_path):
    meminfo = _write(tmp_path / "meminfo", "MemTotal: 25165824 kB\nMemAvailable: 8388608 kB\n")
    limit = _write(tmp_path / "memory.max", f"{2 * GiB}\n")
    assert available_bytes(meminfo, [limit]) == 2 * GiB
    limit.write_text("max\n")
    assert available_bytes(meminfo, [limit]) == 8 * GiB
    assert available_bytes(meminfo, []) == 8 * GiB
