"""The demo corpus: documentation strings of a fixed list of standard-library modules.

The extraction runs ``extract.py`` in a fresh, isolated interpreter (``python -I``): the caller's
process imports nothing and neither the working directory nor PYTHONPATH can shadow a
standard-library module.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

from ..errors import TracingError

EXTRACT_SCRIPT = Path(__file__).resolve().parent / "extract.py"

# --------------------------------------------------------------------------------------------
# Fixed, sorted module lists. Modules that cannot be imported on this platform are
# skipped. None of these has import side effects (no antigravity, this, turtle, tkinter,
# idlelib, webbrowser, ...), and none is deprecated.

PRETRAIN_MODULES = tuple(sorted((
    "abc", "argparse", "array", "ast", "asyncio", "bdb", "bisect", "builtins", "calendar",
    "cmath", "cmd", "code", "codeop", "collections", "collections.abc", "colorsys",
    "compileall", "concurrent.futures", "contextlib", "contextvars", "copy", "copyreg",
    "dataclasses", "datetime", "dis", "doctest", "enum", "errno", "fractions", "functools",
    "gc", "graphlib", "hashlib", "heapq", "hmac", "importlib", "importlib.abc",
    "importlib.util", "inspect", "itertools", "linecache", "logging", "logging.handlers",
    "math", "multiprocessing", "numbers", "operator", "optparse", "pdb", "pickle",
    "pickletools", "pkgutil", "profile", "pstats", "pydoc", "queue", "random", "runpy",
    "sched", "secrets", "shelve", "sqlite3", "statistics", "symtable", "sys", "sysconfig",
    "threading", "time", "timeit", "trace", "traceback", "tracemalloc", "types", "typing",
    "unittest", "unittest.mock", "uuid", "warnings", "weakref", "zipimport", "zoneinfo",
    "_pydecimal",
)))
DOCS_MODULES = tuple(sorted((  # "text / strings"
    "base64", "binascii", "codecs", "configparser", "csv", "difflib", "email.header",
    "email.headerregistry", "email.message", "email.parser", "email.policy", "email.utils",
    "fnmatch", "gettext", "html", "html.parser", "json", "json.decoder", "json.encoder",
    "keyword", "locale", "pprint", "quopri", "re", "reprlib", "shlex", "string", "stringprep",
    "textwrap", "tokenize", "tomllib", "unicodedata", "xml.dom.minidom",
    "xml.etree.ElementTree", "xml.sax.saxutils",
)))
SYS_MODULES = tuple(sorted((  # "os / io / network"
    "_pyio", "bz2", "fcntl", "filecmp", "fileinput", "ftplib", "getpass", "glob", "gzip",
    "http.client", "http.cookiejar", "http.cookies", "http.server", "imaplib", "io",
    "ipaddress", "lzma", "mailbox", "mimetypes", "mmap", "netrc", "os", "pathlib", "platform",
    "poplib", "posixpath", "select", "selectors", "shutil", "signal", "smtplib", "socket",
    "socketserver", "ssl", "stat", "subprocess", "tarfile", "tempfile", "urllib.error",
    "urllib.parse", "urllib.request", "wsgiref.handlers", "wsgiref.simple_server",
    "wsgiref.util", "xmlrpc.client", "xmlrpc.server", "zipfile", "zlib",
)))
EVAL_EVERY = 10  # a document is held out for evaluation when crc32(its key) % EVAL_EVERY == 0
MIN_DOC_CHARS = 24


def _normalise(text: str) -> str:
    return " ".join(text.split())


def build_corpus(tiny: bool = False) -> dict[str, list[str]]:
    """The corpus slices: ``{"pretrain": [...], "docs": [...], "sys": [...], "eval": [...]}``.

    Each entry is one document (``"<qualified name>: <docstring>"``, whitespace normalised, so it
    contains no newline). Deterministic for a given Python version. Documents are deduplicated
    across slices; ``eval`` holds ~1/10 of every group's documents and shares none with training.
    """
    groups = {"pretrain": list(PRETRAIN_MODULES), "docs": list(DOCS_MODULES), "sys": list(SYS_MODULES), "topics": True}
    if tiny:
        groups = {"pretrain": ["argparse", "heapq"], "docs": ["textwrap", "string"], "sys": ["shutil"], "topics": False}
    proc = subprocess.run(
        [sys.executable, "-I", "-W", "ignore", str(EXTRACT_SCRIPT)],
        input=json.dumps(groups), capture_output=True, text=True, encoding="utf-8",
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TracingError(f"could not extract the demo corpus from the standard library: {tail}")
    raw = json.loads(proc.stdout)
    slices: dict[str, list[str]] = {"pretrain": [], "docs": [], "sys": [], "eval": []}
    seen: set[str] = set()
    for group in ("pretrain", "docs", "sys"):
        for key, doc in raw[group]:
            doc = _normalise(doc)
            if len(doc) < MIN_DOC_CHARS or doc in seen:
                continue
            seen.add(doc)
            line = f"{key}: {doc}"
            held_out = zlib.crc32(key.encode("utf-8")) % EVAL_EVERY == 0
            slices["eval" if held_out else group].append(line)
    for name, docs in slices.items():
        if not docs:
            raise TracingError(f"the demo corpus slice {name!r} came out empty on this Python ({sys.version.split()[0]})")
    return slices


