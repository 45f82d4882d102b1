"""Writing files safely: atomic writes (readers never see a half-written file), a folder of results
replaced as a whole, a lock file, and the early check that a result path can be written."""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from secrets import token_hex

from .errors import TracingError


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


def check_out_folder(out: str | os.PathLike, what: str = "the results") -> Path:
    """Fail now, with the fix, when ``out`` cannot become a folder for ``what``: it is a file, or it
    (or its nearest existing parent) cannot be written. Nothing is created."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise TracingError(f"--out {out} is a file, not a folder; give a folder for {what} "
                           f"(it is created when missing)")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise TracingError(f"--out {out} cannot be created because {probe} is a file; give a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == out else f" (its parent {probe} is not writable)"
        raise TracingError(f"--out {out} is not writable{where}; choose a folder you can write to")
    return out


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


@contextlib.contextmanager
def replacing_results(out: str | os.PathLike, owned: Callable[[str], bool],
                      last: tuple[str, ...] = ()) -> Iterator[Path]:
    """A hidden temp folder inside ``out`` to write one run's results into. When the block succeeds,
    the files of ``out`` that ``owned`` claims (the previous run's results) and that this run did not
    write are removed, then each file written is renamed into ``out`` (those named in ``last`` last,
    in that order); when it fails, the temp folder is removed and ``out`` is left as it was. Folders,
    and files ``owned`` does not claim, are never touched."""
    import shutil
    import tempfile
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".writing-", dir=out))
    try:
        yield stage
        new = sorted((p.name for p in stage.iterdir()), key=lambda n: (last.index(n) + 1 if n in last else 0, n))
        for p in out.iterdir():
            if p.name not in new and owned(p.name) and p.is_file():
                p.unlink()
        for name in new:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
