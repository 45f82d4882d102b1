"""A local stand-in for the Hugging Face hub: a threading HTTP server on 127.0.0.1 serving model
folders in the hub's URL layout, for the real huggingface_hub client (``HF_ENDPOINT`` pointed at it).

- ``GET /api/models/<repo>[/revision/<rev>]``: model info (commit, files with size and LFS SHA-256)
- ``HEAD`` / ``GET /<repo>/resolve/<rev>/<file>``, with ``Range``: the headers the client expects
  (``X-Repo-Commit``, ``ETag`` / ``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Range``)

It counts the bytes it serves per file, keeps each request's headers, and injects faults:
``server.faults`` is a list of ``fault(path, method, range) -> action or None``; actions: ``"drop"``
(half the body, then the connection closes), ``"500"``, ``"stall"`` (no answer for ``stall``
seconds), ``"416"``, ``"short"`` (a 206 whose body is a byte short, connection closed),
``("redirect", url)``, ``("etag", digest)`` (the file changed).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class HubServer:
    def __init__(self, host: str = "127.0.0.1", stall: float = 3.0, rate: float | None = None):
        """``rate``: a bandwidth cap in bytes per second shared by all connections (None: none)."""
        self.rate, self._next_free = rate, 0.0
        self._digests: dict[tuple, str] = {}
        self.repos: dict[str, tuple[Path, str]] = {}  # repo id -> (folder, commit)
        self.faults: list = []
        self.served: dict[str, int] = {}  # "<repo>/<file>" -> body bytes sent
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.stall = stall
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, 0), _Handler)
        self.httpd.hub = self
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, repo: str, folder, commit: str | None = None) -> str:
        commit = commit or hashlib.sha1(repo.encode()).hexdigest()
        self.repos[repo] = (Path(folder), commit)
        return commit

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, key: str, n: int):
        with self._lock:
            self.served[key] = self.served.get(key, 0) + n

    def digest(self, f: Path) -> str:
        """SHA-256 of a file, computed once per (path, size, mtime)."""
        st = f.stat()
        key = (str(f), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = sparse_sha256(f)
        return self._digests[key]

    def pace(self, n: int):
        """Sleep so that the bytes sent by all connections stay under ``rate``."""
        if not self.rate:
            return
        with self._lock:
            start = max(time.monotonic(), self._next_free)
            self._next_free = start + n / self.rate
        time.sleep(max(0.0, self._next_free - time.monotonic()))

    def fault(self, path, method, rng):
        for f in list(self.faults):
            action = f(path, method, rng)
            if action is not None:
                return action
        return None


def serving(models: dict, tmp_path, monkeypatch, timeout: float = 30.0, **server_args):
    """A started :class:`HubServer` holding ``models`` (``{"org/name": folder}``), with the real
    huggingface_hub client pointed at it (``HF_ENDPOINT``), online, without a token, with an empty cache
    under ``tmp_path``, and the range reader's retry backoff short. ``timeout``: the range reader's
    (a test of a stalled answer sets it below the server's ``stall``; any shorter default lets a busy
    machine's slow answer be retried, which sends its bytes twice). Close it after use."""
    from huggingface_hub import constants
    server = HubServer(**server_args)
    for repo, folder in models.items():
        server.add(repo, Path(folder))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRACING_HUB_TIMEOUT", str(timeout))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("tracing.sources.hubhttp.BACKOFF", 0.01)
    return server


def sha256(f: Path) -> str:
    return hashlib.sha256(f.read_bytes()).hexdigest()


def sparse_sha256(f: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file whose holes (a sparse file's unwritten ranges) are hashed as zeros from
    memory, without reading them: the same digest as reading the file whole."""
    h, zeros = hashlib.sha256(), bytes(chunk)
    size = f.stat().st_size
    with open(f, "rb") as fh:
        fd, pos = fh.fileno(), 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # no data after pos: the rest is a hole
                data = size
            for n in _chunks(data - pos, chunk):  # the hole before the next data
                h.update(zeros[:n])
            if data >= size:
                break
            end = os.lseek(fd, data, os.SEEK_HOLE)
            fh.seek(data)
            for n in _chunks(end - data, chunk):
                h.update(fh.read(n))
            pos = end
    return h.hexdigest()


def _chunks(n: int, chunk: int):
    while n > 0:
        yield min(n, chunk)
        n -= chunk


def _git_oid(f: Path) -> str:
    return hashlib.sha1(f.read_bytes()).hexdigest() if f.stat().st_size < (1 << 20) else "0" * 40


def _is_lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".gguf", ".bin"))


class _Handler(BaseHTTPRequestHandler):
    """One request; ``self.server.hub`` is the :class:`HubServer`."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        self.server.hub.requests.append((self.command, self.path, dict(self.headers)))
        path = unquote(urlsplit(self.path).path)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)
        if m:
            return self._tree(m.group(1))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
        if m:
            return self._info(m.group(1))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and m.group(1) in self.server.hub.repos:
            return self._file(m.group(1), m.group(3), body)
        self._send(404, {}, b'{"error": "not found"}')

    def _send(self, status, headers, data=b"", body=True):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)) if "Content-Length" not in headers else headers["Content-Length"])
        self.end_headers()
        if body and data:
            self.wfile.write(data)

    def _files(self, repo):
        folder = self.server.hub.repos[repo][0]
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = f.relative_to(folder).as_posix()
            yield name, f.stat().st_size, _git_oid(f), (self.server.hub.digest(f) if _is_lfs(name) else None)

    def _info(self, repo):
        if repo not in self.server.hub.repos:
            return self._send(404, {"X-Error-Code": "RepoNotFound"}, b'{"error": "Repository not found"}')
        siblings = []
        for name, size, oid, lfs in self._files(repo):
            entry = {"rfilename": name, "size": size, "blobId": oid}
            if lfs:
                entry["lfs"] = {"sha256": lfs, "size": size, "pointerSize": 130}
            siblings.append(entry)
        data = json.dumps({"id": repo, "modelId": repo, "sha": self.server.hub.repos[repo][1], "private": False,
                           "siblings": siblings}).encode()
        self._send(200, {"Content-Type": "application/json"}, data)

    def _tree(self, repo):
        if repo not in self.server.hub.repos:
            return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"")
        out = []
        for name, size, oid, lfs in self._files(repo):
            entry = {"type": "file", "oid": oid, "size": size, "path": name}
            if lfs:
                entry["lfs"] = {"oid": lfs, "size": size, "pointerSize": 130}
            out.append(entry)
        self._send(200, {"Content-Type": "application/json"}, json.dumps(out).encode())

    def _file(self, repo, name, body):
        folder, commit = self.server.hub.repos[repo]
        f = folder / name
        if not f.is_file():
            return self._send(404, {"X-Error-Code": "EntryNotFound"}, b"")
        size = f.stat().st_size
        etag = self.server.hub.digest(f) if _is_lfs(name) else _git_oid(f)
        rng = self.headers.get("Range")
        action = self.server.hub.fault(f"{repo}/{name}", self.command, rng)
        if isinstance(action, tuple) and action[0] == "etag":
            etag = action[1]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if _is_lfs(name):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": size})
        if isinstance(action, tuple) and action[0] == "redirect":
            return self._send(302, {**headers, "Location": action[1]})
        if action == "500":
            return self._send(500, {}, b"boom")
        if action in ("401", "403"):
            return self._send(int(action), {"X-Error-Code": "GatedRepo"}, b"")
        if action == "416":
            return self._send(416, {"Content-Range": f"bytes */{size}"})
        if action == "stall":
            time.sleep(self.server.hub.stall)
            self.close_connection = True
            return
        status, a, b = 200, 0, size - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m:
            a = int(m.group(1))
            b = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            status = 206
            headers["Content-Range"] = f"bytes {a}-{b}/{size}"
        n = b - a + 1
        headers["Content-Length"] = n
        if action == "drop":
            self.close_connection = True
            n //= 2
        elif action == "short":
            n -= 1
            headers["Content-Length"] = n
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        if body:
            self._body(f, a, n, f"{repo}/{name}")

    def _body(self, f: Path, a: int, n: int, key: str):
        with open(f, "rb") as fh:
            fh.seek(a)
            while n > 0:
                chunk = fh.read(min(n, 1 << 20))
                if not chunk:
                    break
                self.server.hub.pace(len(chunk))
                # counted before it is written: the client may have the bytes (and a test look at the
                # count) before this thread runs again
                self.server.hub.count(key, len(chunk))
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                n -= len(chunk)

