"""Result records: plain-Python dicts, written atomically as pickles, loaded into pandas.

Pickles run code when loaded: only load results you wrote yourself.
"""
from __future__ import annotations

import math
import os
import pickle
import platform
import socket
import subprocess
import tempfile
import traceback
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
    for mod in ("torch", "transformers", "scipy", "numpy", "safetensors", "submitit"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def slurm_job_id() -> str | None:
    """``<array job>_<task>`` inside a SLURM array task, ``<job>`` in a plain job, else None."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else job


def provenance() -> dict:
    return {"commit": git_commit(), "versions": versions(), "host": socket.gethostname(), "job_id": slurm_job_id()}


def scrub(obj):
    """Remove every known secret value from a nested plain structure (belt and braces)."""
    secrets = [os.environ[k] for k in SECRET_ENV if os.environ.get(k)]
    if not secrets:
        return obj

    def walk(x):
        if isinstance(x, str):
            for s in secrets:
                x = x.replace(s, "<redacted>")
            return x
        if isinstance(x, dict):
            return {walk(k): walk(v) for k, v in x.items()}
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
    except OSError as e:
        raise TracingError(f"cannot create the folder {parent} for --save ({e.strerror}); choose a writable path") from None
    if p.is_dir():
        raise TracingError(f"--save {p} is a folder; give a file name such as {p}/result.p")
    if not os.access(parent, os.W_OK):
        raise TracingError(f"cannot write to {parent} (permission denied); choose a writable --save path")
    return p


def save_record(record: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a temp file in the same folder, then rename (never a half-written result)."""
    record = scrub(record)
    check_plain(record)
    p = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(record, f, protocol=4)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
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
        lp = row["log10_pvalue"]
        row["significant"] = (lp < math.log10(row["significance"])) if _finite(lp) else None
        if per_layer:
            for layer in res.get("per_layer") or []:
                rows.append({**row, **{f"layer_{k}" if k != "layer" else "layer": v for k, v in layer.items()}})
        else:
            rows.append(row)
    return rows


def load_results(folder: str | os.PathLike, per_layer: bool = False, csv: str | None = None,
                 parquet: str | None = None):
    """One tidy DataFrame row per pair × statistic (× aligned or not; × layer with ``per_layer``)."""
    import pandas as pd
    folder = Path(folder)
    if not folder.exists():
        raise TracingError(f"results folder {folder} does not exist")
    rows = []
    files = sorted(folder.rglob("*.p")) + sorted(folder.rglob("*.pkl"))
    # hidden folders hold job machinery (e.g. submitit's own pickles), not results
    files = [f for f in files if not any(part.startswith(".") for part in f.relative_to(folder).parts)]
    for f in files:
        try:
            rec = load_record(f)
        except Exception as e:
            rows.append({"file": str(f), "status": "unreadable", "error": f"{type(e).__name__}: {e}"})
            continue
        if isinstance(rec, dict):
            rows += record_rows(rec, str(f.relative_to(folder)), per_layer=per_layer)
    df = pd.DataFrame(rows)
    if csv:
        df.to_csv(csv, index=False)
    if parquet:
        df.to_parquet(parquet, index=False)
    return df
