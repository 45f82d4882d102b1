"""Where a result came from: the toolkit's commit, package versions, host and job id, and the
redaction of secrets from everything written or printed."""
from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN")


def git_commit(root: Path = ROOT) -> str:
    """The toolkit's commit hash, with ``-dirty`` when the tree has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version
    for mod in ("torch", "transformers", "scipy", "numpy", "safetensors", "submitit"):
        try:  # the installed distribution's version: nothing is imported for it
            out[mod] = version(mod)
        except PackageNotFoundError:
            pass
    return out


def job_id() -> str | None:
    """The Slurm job running this process: ``<array job>_<task>`` inside an array task, the plain
    ``SLURM_JOB_ID`` otherwise, None off Slurm. The one rule for every record, log and index entry."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def host() -> str:
    """The name of this machine."""
    return socket.gethostname()


def provenance() -> dict:
    """The commit, versions, host and job id stored in every record."""
    return {"commit": git_commit(), "versions": versions(), "host": host(), "job_id": job_id()}


HEX_DIGEST = re.compile(r"[0-9a-f]{40}(-dirty)?|[0-9a-f]{64}")
MIN_SECRET_SUBSTRING = 8  # shorter secrets are only redacted where they are a whole value


def scrub(obj):
    """Redact known secrets (``HF_TOKEN`` and friends) from the string values of a nested plain
    structure. A secret of at least 8 characters is removed wherever it occurs in a string; a
    shorter one (no real token is that short) only where a whole value equals it, so records
    stay intact. Keys, hashes and commit ids are never changed."""
    secrets = [os.environ[k] for k in SECRET_ENV if os.environ.get(k)]
    if not secrets:
        return obj
    long = [x for x in secrets if len(x) >= MIN_SECRET_SUBSTRING]

    def walk(x):
        if isinstance(x, str):
            if x in secrets:
                return "<redacted>"
            if HEX_DIGEST.fullmatch(x):  # a hash or commit id: no token hides in it
                return x
            for secret in long:
                x = x.replace(secret, "<redacted>")
            return x
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v) for v in x)
        return x
    return walk(obj)
