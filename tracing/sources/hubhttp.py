"""Byte ranges of files of one hub repository at one commit, by HTTP range requests through
huggingface_hub's HTTP session.

Each request asks the hub's ``resolve/<commit>/<file>`` URL for one byte range. Redirects are
followed by hand so the token (``Authorization``) goes to the hub's own host only, never to a
redirect target elsewhere. The hub's digest of the file (its LFS SHA-256, the ``X-Linked-Etag`` /
``ETag`` of the hub's answers) is checked on every answer from the hub's host: a file that changed under the same revision
is refused. A dropped connection, a timeout or a 5xx is retried with backoff (a bounded number of
times), then the read fails with one line naming the file and the byte range; a 416, an answer
that ignores the range or a short body fail at once. Neither the token nor a URL with one ever
reaches a message.

Requests go out up to :data:`PARALLEL` at once on one pool of threads and huggingface_hub's one
connection pool. A caller that knows what it will read next (the sampled experts grid: every
expert's rows of a block) records those reads first (:meth:`HubFiles.record`: nothing is sent),
fetches them all at once (:meth:`HubFiles.fetch_ahead`), and then makes them as before, each served
from memory: the same requests and bytes, the round trips overlapping instead of following one another.
"""
from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from urllib.parse import quote, urljoin, urlsplit

from ..errors import TracingError
from ..machine import REMOTE_READS_IN_FLIGHT

RETRIES = 4  # tries per range
BACKOFF = 0.25  # seconds before the second try, doubled for each further one (capped at 4 s)
PARALLEL = REMOTE_READS_IN_FLIGHT  # requests in flight at once
MAX_REDIRECTS = 5


def endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def timeout() -> float:
    """Seconds to wait for a connection or for the next bytes of an answer."""
    try:
        return float(os.environ.get("TRACING_HUB_TIMEOUT", "30"))
    except ValueError:
        return 30.0


def _origin(url: str) -> tuple[str, str]:
    u = urlsplit(url)
    return u.scheme, u.netloc.lower()


def _digest(headers) -> str | None:
    """The hub's SHA-256 of a file, from an answer's ``X-Linked-Etag`` or ``ETag``."""
    for key in ("x-linked-etag", "etag"):
        v = (headers.get(key) or "").removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", v):
            return v
    return None


class _Retry(Exception):
    """A fault worth another try (dropped connection, timeout, 5xx)."""


class HubFiles:
    """Ranged reads of the files of ``repo_id`` at ``commit``; ``sha256`` maps a file to the digest
    the hub recorded for it (checked against every answer). ``bytes_read`` counts what was
    transferred per file."""

    def __init__(self, repo_id: str, commit: str, sha256: dict[str, str], label: str, progress: bool = True):
        self.repo_id, self.commit, self.sha256, self.label = repo_id, commit, dict(sha256), label
        self.base = endpoint()
        self.bytes_read: dict[str, int] = {}
        self.progress = progress
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._asked = threading.local()  # .ranges: the ranges asked for while recording (see record())
        self._ready: dict[tuple[str, int, int], bytes] = {}  # ranges fetched ahead (fetch_ahead()), not yet used

    def url(self, file: str) -> str:
        return f"{self.base}/{self.repo_id}/resolve/{self.commit}/{quote(file)}"

    # one range ------------------------------------------------------------------------------
    def read(self, file: str, start: int, length: int, bar=None, headers=None) -> bytes:
        """Bytes ``start`` to ``start + length - 1`` of ``file`` (``headers``: :meth:`_headers`, when
        built once for many reads)."""
        if length <= 0:
            return b""
        with self._lock:
            ready = self._ready.pop((file, start, length), None)
        if ready is not None:
            if bar is not None:
                bar.update(len(ready))
            return ready
        where = f"{self.label}: {file} bytes {start}-{start + length - 1}"
        delay, why = BACKOFF, ""
        for attempt in range(RETRIES):
            try:
                data = self._get(file, start, length, where, headers)
            except _Retry as e:
                why = str(e)
                if attempt + 1 < RETRIES:
                    time.sleep(delay)
                    delay = min(delay * 2, 4.0)
                continue
            with self._lock:
                self.bytes_read[file] = self.bytes_read.get(file, 0) + len(data)
            if bar is not None:
                bar.update(len(data))
            return data
        raise TracingError(f"cannot read {where} from the hub after {RETRIES} tries ({why}); check the network "
                           f"and run again, or fetch the whole model first with --download")

    @staticmethod
    def _headers() -> dict:
        """The request headers for the hub's host (with the token, read now; None: huggingface_hub's
        login) and for any other host (without it): ``{True: ..., False: ...}``."""
        from huggingface_hub.utils import build_hf_headers
        token = os.environ.get("HF_TOKEN") or None
        return {True: build_hf_headers(token=token), False: build_hf_headers(token=False)}

    def _get(self, file: str, start: int, length: int, where: str, built=None) -> bytes:
        import httpx2 as httpx
        from huggingface_hub.utils import get_session
        hub = _origin(self.base)
        url, want = self.url(file), f"bytes={start}-{start + length - 1}"
        built = built or self._headers()  # the token is not kept beyond the reads it is built for
        for _ in range(MAX_REDIRECTS + 1):
            at_hub = _origin(url) == hub
            headers = dict(built[at_hub])
            headers["Range"] = want
            headers["Accept-Encoding"] = "identity"
            try:
                with get_session().stream("GET", url, headers=headers, follow_redirects=False,
                                          timeout=timeout()) as r:
                    if at_hub:  # the hub's digest; a CDN's ETag may be another hash
                        self._check_digest(file, r.headers)
                    if r.status_code in (301, 302, 303, 307, 308) and r.headers.get("location"):
                        url = urljoin(url, r.headers["location"])
                        continue
                    self._check_status(r.status_code, r.headers, start, length, where)
                    body = b"".join(r.iter_bytes())
            except httpx.TransportError as e:  # dropped connection, timeout, refused connection
                raise _Retry(type(e).__name__) from None
            except (httpx.HTTPError, OSError) as e:  # e.g. HF_HUB_OFFLINE turned on meanwhile
                raise TracingError(f"cannot read {where} from the hub ({type(e).__name__}); fetch the whole "
                                   f"model first with --download, or set HF_HUB_OFFLINE=0") from None
            if len(body) != length:
                raise TracingError(f"the hub sent {len(body)} of the {length} bytes asked for {where}; "
                                   f"run again, or fetch the whole model first with --download")
            return body
        raise TracingError(f"too many redirects reading {where}")

    def _check_digest(self, file: str, headers) -> None:
        got, want = _digest(headers), self.sha256.get(file)
        if got and want and got != want:
            raise TracingError(f"refused: {self.label}: {file} changed on the hub under commit {self.commit} "
                               f"(digest {got[:12]}…, the hub recorded {want[:12]}… when the model was opened); "
                               f"run again to read the file as it is now")

    def _check_status(self, status: int, headers, start: int, length: int, where: str) -> None:
        if status in (401, 403):
            raise TracingError(f"the hub refused {where} (HTTP {status}); set HF_TOKEN for gated or private models")
        if status == 416:
            raise TracingError(f"the hub cannot serve {where} (HTTP 416, range not satisfiable): the file is "
                               f"shorter than its header says; fetch it whole with --download")
        if status >= 500 or status == 429:
            raise _Retry(f"HTTP {status}")
        if status != 206:
            raise TracingError(f"the hub answered HTTP {status} to a range request for {where}; "
                               f"fetch the whole model with --download")
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (headers.get("content-range") or "").strip())
        if not m or int(m.group(1)) != start or int(m.group(2)) != start + length - 1:
            raise TracingError(f"the hub answered {where} with another range "
                               f"({headers.get('content-range')!r}); fetch the whole model with --download")

    # many ranges -----------------------------------------------------------------------------
    def read_many(self, file: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(start, length)`` range of ``file``, read by up to :data:`PARALLEL`
        requests at once, with a progress bar in bytes."""
        asked = getattr(self._asked, "ranges", None)
        if asked is not None:  # recording: what would be read, and zeros in its place
            asked.extend((file, s, n) for s, n in ranges)
            return [bytes(n) for _, n in ranges]
        return self._fetch([(file, s, n) for s, n in ranges], f"{file} (range reads)")

    def _fetch(self, ranges: list[tuple[str, int, int]], desc: str) -> list[bytes]:
        """The bytes of each ``(file, start, length)``, by up to :data:`PARALLEL` requests at once on
        one pool of threads (kept for the life of this object), with a progress bar in bytes."""
        from tqdm.auto import tqdm
        total = sum(n for _, _, n in ranges)
        headers = self._headers()
        with tqdm(total=total, unit="B", unit_scale=True, leave=False, desc=desc,
                  disable=not self.progress or None) as bar:
            if len(ranges) == 1:
                return [self.read(*ranges[0], bar=bar, headers=headers)]
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="hub-reads")
                pool = self._pool
            futures = [pool.submit(self.read, *r, bar=bar, headers=headers) for r in ranges]
            wait(futures)  # every request has finished before any error is raised
            return [f.result() for f in futures]

    # reading ahead -----------------------------------------------------------------------------
    @contextmanager
    def record(self):
        """Within: :meth:`read_many` (on this thread) reads nothing, gives zeros and adds each range it
        was asked for to the list this yields."""
        self._asked.ranges = asked = []
        try:
            yield asked
        finally:
            self._asked.ranges = None

    def fetch_ahead(self, ranges: list[tuple[str, int, int]]) -> None:
        """Read ``(file, start, length)`` ranges now, all with up to :data:`PARALLEL` requests in flight,
        and keep each for the one :meth:`read` of exactly that range that follows. The same requests as
        reading them one call after another, so the bytes sent and the result are the same; the round
        trips overlap."""
        todo = list(dict.fromkeys(r for r in ranges if r[2] > 0))
        if not todo:
            return
        got = self._fetch(todo, f"{self.label} (range reads ahead)")
        with self._lock:
            self._ready.update(zip(todo, got))


    def read_spans(self, file: str, spans: list[tuple[int, int]], requests=None, gap: int = 0) -> bytearray:
        """The bytes of ``spans`` (sorted ``(start, length)``) of ``file``, concatenated, read by the merged
        ``requests`` (:func:`coalesce` of the spans with ``gap`` when not given)."""
        requests = coalesce(spans, gap=gap) if requests is None else requests
        chunks = self.read_many(file, [(s, n) for s, n, _ in requests])
        out = bytearray(sum(n for _, n in spans))
        pos = 0
        for (start, _, members), chunk in zip(requests, chunks):
            for i in members:
                s, n = spans[i]
                out[pos:pos + n] = chunk[s - start:s - start + n]
                pos += n
        return out


def coalesce(spans: list[tuple[int, int]], gap: int) -> list[tuple[int, int, list[int]]]:
    """Byte spans ``(start, length)`` (sorted by start) merged where at most ``gap`` bytes lie between
    them: ``(start, length, [span numbers])`` per request."""
    out: list[tuple[int, int, list[int]]] = []
    for i, (s, n) in enumerate(spans):
        if out and s - (out[-1][0] + out[-1][1]) <= gap:
            first, length, members = out[-1]
            out[-1] = (first, max(length, s + n - first), members + [i])
        else:
            out.append((s, n, [i]))
    return out
