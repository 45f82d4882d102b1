"""Pytest fixtures for the tests against a REAL single-node Slurm cluster (tests/slurm/setup.sh).

Opt-in: they run only with ``TRACING_SLURM_TESTS=1``, because bringing the cluster up installs
system packages (slurm, munge, mariadb) with apt-get as root and starts daemons listening on
local ports. With ``TRACING_REQUIRE_SLURM=1`` (CI) a cluster that does not come up is a test
failure instead of a skip.

    bash tests/slurm/setup.sh                      # optional: the fixture runs it too (idempotent)
    TRACING_SLURM_TESTS=1 python -m pytest -q tests/test_slurm.py
    bash tests/slurm/teardown.sh
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SETUP = HERE / "slurm" / "setup.sh"
ENABLE_ENV = "TRACING_SLURM_TESTS"
REQUIRE_ENV = "TRACING_REQUIRE_SLURM"


def slurm_tests_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def slurm_tests_enabled() -> bool:
    return os.environ.get(ENABLE_ENV) == "1" or slurm_tests_required()


def _unavailable(why: str):
    if slurm_tests_required():
        pytest.fail(f"{REQUIRE_ENV}=1 but the local Slurm cluster is not available: {why}", pytrace=False)
    pytest.skip(f"local Slurm cluster not available: {why}")


@pytest.fixture(scope="module")
def slurm_cluster():
    """Bring up the local single-node Slurm (idempotent) and point the Slurm commands at it.

    Yields ``{"conf", "partition", "dir"}``; ``SLURM_CONF`` is set while the tests of a module run, so
    every subprocess (launch.py, sbatch, sacct) talks to this cluster.
    """
    if not slurm_tests_enabled():
        pytest.skip(f"tests on a real Slurm cluster are opt-in: set {ENABLE_ENV}=1 to run them (as root: "
                    f"tests/slurm/setup.sh installs slurm, munge and mariadb with apt-get and starts local daemons)")
    if os.geteuid() != 0:
        _unavailable("tests/slurm/setup.sh must run as root")
    if not SETUP.is_file():
        _unavailable(f"{SETUP} is missing")
    base = os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local")
    try:
        r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        _unavailable("tests/slurm/setup.sh did not finish within 15 minutes")
    if r.returncode != 0:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        _unavailable(f"tests/slurm/setup.sh failed (exit {r.returncode}): {tail}")
    conf = f"{base}/etc/slurm.conf"
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", conf)
    from tracing.launch import probe_slurm

    ok, why = probe_slurm()
    if not ok or not shutil.which("sbatch") or not shutil.which("srun"):
        mp.undo()
        _unavailable(why if not ok else "sbatch/srun missing after setup")
    try:
        yield {"conf": conf, "partition": os.environ.get("SLURM_LOCAL_PARTITION", "debug"), "dir": base}
    finally:
        mp.undo()


@pytest.fixture
def slurm_executor(slurm_cluster, tmp_path):
    """A submitit executor on the local cluster (asserted to really be Slurm)."""
    import submitit

    ex = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", slurm_max_num_timeout=3)
    assert ex.cluster == "slurm"  # AutoExecutor silently falls back to 'local' without srun
    ex.update_parameters(timeout_min=5, slurm_partition=slurm_cluster["partition"], cpus_per_task=1, mem_gb=2)
    return ex
