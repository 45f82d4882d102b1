"""Result records: plain-Python dicts, written atomically as pickles, loaded into pandas.

Pickles run code when loaded: only load results you wrote yourself.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import pickle
import platform
import re
import socket
import subprocess
import traceback
from secrets import token_hex
from pathlib import Path

from .errors import TracingError

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


def slurm_job_id() -> str | None:
    """``<array job>_<task>`` inside a SLURM array task, ``<job>`` in a plain job, else None."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else job


def provenance() -> dict:
    return {"commit": git_commit(), "versions": versions(), "host": socket.gethostname(), "job_id": slurm_job_id()}


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


def check_plain(obj, path="record"):
    """Records hold plain Python values only (no tensors, arrays or Namespaces)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{path}: non-plain key {k!r}")
            check_plain(v, f"{path}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{path}[{i}]")
        return
    raise TypeError(f"{path}: {type(obj).__name__} is not a plain Python value")


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before any work) when a result cannot be written there."""
    p = Path(path)
    parent = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(p.name)) > os.pathconf(parent, "PC_NAME_MAX"):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), p.name)
        is_dir = p.is_dir()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise TracingError(f"--save {str(p)[:60]}...: a path component is too long for the file system; "
                               f"use shorter folder and file names") from None
        raise TracingError(f"cannot create the folder {parent} for --save ({e.strerror}); choose a writable path") from None
    if is_dir:
        raise TracingError(f"--save {p} is a folder; give a file name such as {p}/result.p")
    if not os.access(parent, os.W_OK):
        raise TracingError(f"cannot write to {parent} (permission denied); choose a writable --save path")
    return p


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temp file beside ``path`` for writing; on success it replaces ``path`` in one rename
    (readers never see a half-written file), on failure it is removed. The file gets the usual
    permissions (0666 minus the umask), unlike ``tempfile``'s private 0600."""
    if mode not in ("wb", "w"):
        raise ValueError("atomic_open writes: mode 'w' or 'wb'")
    p = Path(path)
    for _ in range(100):
        tmp = p.with_name(f".{p.name}.{token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover
        raise FileExistsError(f"cannot create a temp file beside {p}")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """An exclusive lock held while the block runs: ``flock`` on the lock file ``path`` (created if
    missing, left in place). Serialises processes on one machine, and on shared file systems that
    support ``flock``."""
    import fcntl
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    if not isinstance(data, (bytes, str)):
        raise TypeError(f"atomic_write takes bytes or str, not {type(data).__name__}")
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


def save_record(record: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a temp file in the same folder, then rename (never a half-written result)."""
    record = scrub(record)
    check_plain(record)
    p = check_writable(path)
    with atomic_open(p, "wb") as f:
        pickle.dump(record, f, protocol=4)
    return p


def load_record(path: str | os.PathLike) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def is_done(path: str | os.PathLike) -> bool:
    """A result exists and did not fail (failed pairs are retried)."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        return load_record(p).get("status", "ok") == "ok"
    except Exception:
        return False


def failure_record(base: str, ft: str, stat: str, options: dict, error: BaseException, elapsed: float) -> dict:
    msg = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    rec = {
        "args": {**options, "base_model_id": base, "ft_model_id": ft, "stat": stat},
        "commit": None, "non-aligned test stat": None, "time": elapsed,
        "stat": stat, "base_model_id": base, "ft_model_id": ft,
        "pvalue": None, "log10_pvalue": None, "statistic": None, "per_layer": [],
        "status": "failed", "error": f"{type(error).__name__}: {msg}",
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))[-4000:],
    }
    rec.update(provenance())
    return rec


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------
def _finite(x):
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def record_rows(rec: dict, path: str = "", per_layer: bool = False) -> list[dict]:
    base = {
        "file": path, "base": rec.get("base_model_id") or rec.get("args", {}).get("base_model_id"),
        "ft": rec.get("ft_model_id") or rec.get("args", {}).get("ft_model_id"),
        "stat": rec.get("stat") or rec.get("args", {}).get("stat"),
        "status": rec.get("status", "ok"), "error": rec.get("error"),
        "base_loss": rec.get("base loss"), "ft_loss": rec.get("ft loss"),
        "time": rec.get("time"), "commit": rec.get("commit"), "job_id": rec.get("job_id"),
        "permute": rec.get("args", {}).get("permute"), "rotate": rec.get("args", {}).get("rotate"),
        "significance": rec.get("args", {}).get("significance", 0.01),
        # options that change what a statistic measures (mode: which parts are interpolated)
        "attn": rec.get("args", {}).get("attn"), "emb": rec.get("args", {}).get("emb"),
        "num_perm": rec.get("args", {}).get("num_perm"),
        "rows": rec.get("args", {}).get("rows"),  # sampled cos / emb: K units
        "localized": "per_pair" in rec,  # a block map (models of different shapes)
    }
    variants = [("raw", rec)]
    if isinstance(rec.get("aligned"), dict):
        variants.append(("aligned", rec["aligned"]))
    rows = []
    for name, res in variants:
        row = dict(base, aligned=(name == "aligned"), statistic=res.get("statistic"),
                   pvalue=res.get("pvalue"), log10_pvalue=res.get("log10_pvalue"))
        for k in ("barrier", "loss_alpha", "alpha", "median_cos"):
            if k in res.get("extra", {}) or k in res:
                row[k] = res.get(k, res.get("extra", {}).get(k))
        fixed = (res.get("extra") or {}).get("fixed_points")
        if isinstance(fixed, dict):  # cos: the fixed-point test of the same matching (partial sharing)
            row["fixed_log10_pvalue"] = fixed.get("log10_pvalue")
        lp = row["log10_pvalue"]
        row["significant"] = (lp < math.log10(row["significance"])) if _finite(lp) else None
        if per_layer:
            for layer in res.get("per_layer") or []:
                rows.append({**row, **{f"layer_{k}" if k != "layer" else "layer": v for k, v in layer.items()}})
        else:
            rows.append(row)
    return rows


RESULT_SUFFIXES = (".p", ".pkl")


def iter_records(folder: str | os.PathLike):
    """Every result pickle under ``folder``, sorted: yields ``(relative path, record, error)`` with
    ``record`` a dict and ``error`` None, or ``record`` None and ``error`` a one-line reason for a
    file that cannot be read or holds no record. Hidden folders (job machinery such as
    submitit's own pickles) are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TracingError(f"results folder {folder} does not exist")
    files = sorted(f for f in folder.rglob("*") if f.suffix in RESULT_SUFFIXES and f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(folder).parts))
    for f in files:
        rel = str(f.relative_to(folder))
        try:
            rec = load_record(f)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not fatal
            yield rel, None, f"{type(e).__name__}: {str(e)[:200]}"
            continue
        if isinstance(rec, dict):
            yield rel, rec, None
        else:
            yield rel, None, f"not a result record ({type(rec).__name__})"


def load_results(folder: str | os.PathLike, per_layer: bool = False, csv: str | None = None,
                 parquet: str | None = None):
    """One tidy DataFrame row per pair × statistic (× aligned or not; × layer with ``per_layer``);
    files that hold no readable record get a row with status ``unreadable``."""
    import pandas as pd
    rows = []
    for rel, rec, error in iter_records(folder):
        if rec is None:
            rows.append({"file": rel, "status": "unreadable", "error": error})
        else:
            rows += record_rows(rec, rel, per_layer=per_layer)
    df = pd.DataFrame(rows)
    if csv:
        df.to_csv(csv, index=False)
    if parquet:
        df.to_parquet(parquet, index=False)
    return df
