"""Where to run: does a Slurm controller answer, what are its limits, and what this machine has."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import TracingError
from ..machine import cores as local_cores, total_memory_gb as local_mem_gb  # noqa: F401 - re-exported
from .console import first_line

GiB = 1 << 30


@dataclass
class ClusterChoice:
    kind: str  # "slurm" | "local"
    reason: str


def probe_slurm(env: dict | None = None, timeout: float = 10.0) -> tuple[bool, str]:
    """Does a Slurm controller answer? ``(True, why)`` only when ``scontrol ping`` says UP
    (or, without scontrol, when ``sinfo`` works); having ``srun`` on PATH is not enough."""
    env = dict(os.environ if env is None else env)
    path = env.get("PATH", os.defpath)
    scontrol, sinfo = shutil.which("scontrol", path=path), shutil.which("sinfo", path=path)
    if not scontrol and not sinfo:
        return False, "no Slurm commands (scontrol, sinfo) on PATH"
    conf = env.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        return False, f"SLURM_CONF={conf} does not exist"
    cmd = [scontrol, "ping"] if scontrol else [sinfo, "-h", "-o", "%P"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        shown = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))
        return False, f"`{shown}` got no answer within {timeout:.0f} s"
    except OSError as e:
        return False, f"cannot run {cmd[0]} ({e.strerror})"
    out = first_line(r.stdout) or first_line(r.stderr)
    name = "scontrol ping" if scontrol else "sinfo"
    if r.returncode == 0 and (not scontrol or " UP" in r.stdout):
        return True, f"a Slurm controller answered `{name}`" + (f" ({out})" if out else "")
    return False, f"no Slurm controller answered `{name}`" + (f" ({out})" if out else f" (exit code {r.returncode})")


def choose_cluster(requested: str = "auto", env: dict | None = None) -> ClusterChoice:
    """``local`` when asked for or when no controller answers; ``slurm`` when one does."""
    if requested not in ("auto", "slurm", "local"):
        raise TracingError(f"--cluster must be auto, slurm or local, got {requested!r}")
    if requested == "local":
        return ClusterChoice("local", "--cluster local was given")
    ok, why = probe_slurm(env)
    if requested == "slurm":
        if not ok:
            raise TracingError(f"--cluster slurm was given but {why}; start the Slurm controller "
                               f"(or export SLURM_CONF) or use --cluster local")
        return ClusterChoice("slurm", why)
    return ClusterChoice("slurm", why) if ok else ClusterChoice("local", why)


@dataclass
class SlurmInfo:
    max_array_size: int = 1001
    node_cpus: int | None = None
    node_mem_gb: float | None = None
    has_gpus: bool = False


def slurm_info(partition: str | None = None) -> SlurmInfo:
    """Limits of the cluster: ``MaxArraySize`` (``scontrol show config``), the largest node's
    CPUs and memory and whether any node has GPUs (``sinfo``)."""
    info = SlurmInfo()
    try:
        r = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
        m = re.search(r"^MaxArraySize\s*=\s*(\d+)", r.stdout, re.M)
        if m:
            info.max_array_size = max(1, int(m.group(1)))
    except (OSError, subprocess.SubprocessError):
        pass
    cmd = ["sinfo", "-h", "-N", "-o", "%c|%m|%G"] + (["-p", partition] if partition else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        for line in r.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 3:
                continue
            c, m, g = parts
            if c.strip().isdigit():
                info.node_cpus = max(info.node_cpus or 0, int(c))
            if re.fullmatch(r"\d+\+?", m.strip()):
                info.node_mem_gb = max(info.node_mem_gb or 0.0, int(m.strip("+ ")) / 1024)
            if "gpu" in g.lower():
                info.has_gpus = True
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def active_slurm_jobs() -> set[str] | None:
    """Ids (``123`` and ``123_4``) of jobs Slurm still knows as pending or running; None if unknown."""
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%A"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return {part for line in r.stdout.split() for part in line.split("|") if part}


def default_max_workers(cores: int | None = None) -> int:
    """One pair per two cores, at least one."""
    return max(1, (cores or local_cores()) // 2)
