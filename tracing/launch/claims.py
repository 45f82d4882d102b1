"""Claims on pairs, so that two launches into the same results folder never compute a pair twice.

A claim is a small file ``<pair folder>/.launch.lock`` created exclusively, holding the
claiming launcher's host and process id. A launcher refreshes its claims while it runs and
removes them when a pair ends. A claim is stale when its process is gone (same host), or when
it has not been refreshed for :data:`STALE_S` seconds (another host). A stale claim is removed
under a lock (``.launch.takeover``, removed afterwards), so two launchers taking it over at once
claim it once.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

LOCK_NAME = ".launch.lock"
TAKEOVER_NAME = ".launch.takeover"  # lock file serialising the takeover of a stale claim
REFRESH_S = 30.0
STALE_S = 600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_claim(path: Path) -> dict | None:
    """The holder of a claim (``{"host", "pid", "time"}``), None when there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged: judged by its age


def is_stale(path: Path, holder: dict) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _pid_alive(holder["pid"])
    try:
        return time.time() - path.stat().st_mtime > STALE_S
    except FileNotFoundError:
        return True


class Claims:
    """The pairs this launcher computes; refreshed in the background until released."""

    def __init__(self):
        self.held: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}

    def claim(self, folder: Path) -> dict | None:
        """Claim a pair folder: None when this launcher holds it now, else the live holder."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_NAME
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_claim(path)
                if holder is None:
                    continue  # released meanwhile
                if not is_stale(path, holder):
                    return holder
                self._remove_stale(folder, path)  # its launcher died: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**self.me, "time": time.time()}, f)
            with self._lock:
                self.held.add(path)
            self._start()
            return None
        return read_claim(path) or {}

    @staticmethod
    def _remove_stale(folder: Path, path: Path) -> None:
        """Remove a claim judged stale, judging it again under a lock: of two launchers taking over
        the same claim, the second then finds the first one's fresh claim and leaves it."""
        from ..fileio import file_lock
        takeover = folder / TAKEOVER_NAME
        with file_lock(takeover):
            holder = read_claim(path)
            if holder is not None and is_stale(path, holder):
                path.unlink(missing_ok=True)
            # Not left behind in the pair folder. A launcher still waiting on the unlinked file, and
            # one locking a new file, may then both be here at once; both judge the claim again
            # under their lock, and once the stale claim is gone all they can find is a live one.
            takeover.unlink(missing_ok=True)

    def release(self, folder: Path) -> None:
        path = folder / LOCK_NAME
        with self._lock:
            if path not in self.held:
                return
            self.held.discard(path)
        path.unlink(missing_ok=True)

    def release_all(self) -> None:
        self._stop.set()
        with self._lock:
            held, self.held = list(self.held), set()
        for p in held:
            p.unlink(missing_ok=True)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._refresh, name="claims", daemon=True)
            self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            with self._lock:
                held = list(self.held)
            for p in held:
                try:
                    os.utime(p)
                except OSError:
                    pass


def wait_released(folder: Path, poll_s: float = 1.0) -> None:
    """Return once nobody live holds the claim on ``folder``."""
    path = folder / LOCK_NAME
    while True:
        holder = read_claim(path)
        if holder is None or is_stale(path, holder):
            return
        time.sleep(poll_s)
