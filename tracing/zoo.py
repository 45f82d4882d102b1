"""The offline demo model family: tiny Llama models trained here, on CPU, with known lineage.

No network is needed. The corpus is the standard library's own documentation (docstrings of a
fixed list of modules, plus the language-reference topics that ship in ``pydoc_data``); a
byte-level BPE tokenizer is trained on it; seven small Llama models are trained from it:

==============  ==========  =========  =============================================
name            parent      root       recipe
==============  ==========  =========  =============================================
``base-a``      --          base-a     init seed 1, pretrained on ``pretrain``
``base-b``      --          base-b     init seed 2, pretrained on ``pretrain``
``base-c``      --          base-c     init seed 3, pretrained on ``pretrain``
``a-docs``      base-a      base-a     fine-tuned on ``docs`` (text-processing modules)
``a-docs-v2``   a-docs      base-a     fine-tuned on ``sys`` (os / io / network modules)
``a-sys``       base-a      base-a     fine-tuned on ``sys``
``b-docs``      base-b      base-b     fine-tuned on ``docs``
==============  ==========  =========  =============================================

Two models are dependent iff they share a root. Users name the models ``demo:<name>``.

Layout of a built zoo (``ensure_built()`` returns ``<root>``)::

    <root>/COMPLETE                  written last; its content names the recipe version
    <root>/lineage.json              {"models": {name: {...}}, "version": ...}
    <root>/corpus/{train,docs,sys,eval}.txt   one whitespace-normalised document per line
    <root>/tokenizer/                the shared tokenizer (PreTrainedTokenizerFast)
    <root>/<name>/                   config.json, model.safetensors (float32), tokenizer files

The root is ``$TRACING_DEMO_DIR`` if set, else ``~/.cache/model-tracing/demo-<VERSION>``
(``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set). A build takes about 2 minutes on two idle
cores and happens once; concurrent callers serialise on ``<root>.lock`` and the finished tree is
renamed into place, so a reader never sees a half-built zoo. Models are trained by worker
processes (``$TRACING_DEMO_WORKERS``, default min(2, cores)) with one torch thread each, so a
rebuild gives byte-identical weight files whatever the number of cores or workers (same Python,
torch and CPU type); only timings in ``lineage.json`` differ.

CLI::

    python -m tracing.zoo build [DIR]
    python -m tracing.zoo list [--root DIR]
    python -m tracing.zoo path NAME [--root DIR]

Heavy imports (torch, transformers, tokenizers) happen inside functions, so importing this
module, ``is_demo_spec`` and the lineage helpers are cheap.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass

from tracing.errors import TracingError

# Bump whenever anything that changes the built files changes (corpus lists, tokenizer, recipe).
VERSION = "v2"

DEMO_PREFIX = "demo:"
ENV_DIR = "TRACING_DEMO_DIR"
ENV_WORKERS = "TRACING_DEMO_WORKERS"  # parallel training processes (default: min(2, cores))

MODEL_NAMES: tuple[str, ...] = ("base-a", "base-b", "base-c", "a-docs", "a-docs-v2", "a-sys", "b-docs")
SLICE_FILES = {"pretrain": "train.txt", "docs": "docs.txt", "sys": "sys.txt", "eval": "eval.txt"}

VOCAB_SIZE = 1024
BLOCK_SIZE = 128
BATCH_SIZE = 16
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, as in Llama (unk 0, bos 1, eos 2)
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3

MODEL_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    initializer_range=0.02,
)

_MARKER = ".model-tracing-demo"  # first file of every build: proves a directory is ours to replace
_COMPLETE = "COMPLETE"

# --------------------------------------------------------------------------------------------
# Corpus: fixed, sorted module lists. Modules that cannot be imported on this platform are
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

# Runs in a fresh, isolated interpreter (python -I): the caller's process imports nothing and
# neither the working directory nor PYTHONPATH can shadow a standard-library module.
_EXTRACT_SCRIPT = r'''
import importlib, inspect, json, sys, warnings
warnings.simplefilter("ignore")
groups = json.loads(sys.stdin.read())

def defined_here(obj, mname):
    om = getattr(obj, "__module__", None)
    if not isinstance(om, str):
        return False
    short = mname.rsplit(".", 1)[-1]
    return om == mname or om.startswith(mname + ".") or om.lstrip("_") == short

def module_docs(mname):
    try:
        mod = importlib.import_module(mname)
    except Exception:
        return []
    items = []
    if isinstance(mod.__doc__, str):
        items.append((mname, mod.__doc__))
    names = getattr(mod, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = dir(mod)
    for n in sorted({n for n in names if isinstance(n, str) and not n.startswith("_")}):
        obj = getattr(mod, n, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not defined_here(obj, mname):
            continue
        doc = getattr(obj, "__doc__", None)
        if isinstance(doc, str):
            items.append((mname + "." + n, doc))
        if inspect.isclass(obj):
            members = vars(obj)
            for an in sorted(k for k in members if isinstance(k, str) and (not k.startswith("_") or k == "__init__")):
                a = members[an]
                if isinstance(a, (staticmethod, classmethod)):
                    a = a.__func__
                if not (inspect.isroutine(a) or isinstance(a, property)):
                    continue
                doc = getattr(a, "__doc__", None)
                if isinstance(doc, str):
                    items.append((mname + "." + n + "." + an, doc))
    return items

def topics():
    try:
        from pydoc_data.topics import topics as t
    except Exception:
        return []
    items = []
    for name in sorted(t):
        chunk, i = [], 0
        for para in t[name].split("\n\n"):
            chunk.append(para)
            if sum(len(p) for p in chunk) >= 1000:
                items.append(("pydoc_data.topics.%s#%d" % (name, i), "\n\n".join(chunk)))
                chunk, i = [], i + 1
        if chunk:
            items.append(("pydoc_data.topics.%s#%d" % (name, i), "\n\n".join(chunk)))
    return items

out = {}
with_topics = groups.pop("topics")
for group, mods in groups.items():
    items = []
    for m in mods:
        items.extend(module_docs(m))
    if group == "pretrain" and with_topics:
        items.extend(topics())
    out[group] = items
json.dump(out, sys.stdout)
'''


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
        [sys.executable, "-I", "-W", "ignore", "-c", _EXTRACT_SCRIPT],
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


# --------------------------------------------------------------------------------------------
# Recipe


@dataclass(frozen=True)
class Recipe:
    name: str
    parent: str | None
    data: str
    steps: int
    lr: float
    warmup: int
    init_seed: int  # the seed that initialised the root's weights
    data_seed: int  # order of training blocks


_BASE_STEPS, _FT_STEPS = 600, 150
_BASE_LR, _FT_LR = 3e-3, 5e-4

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("base-a", None, "pretrain", _BASE_STEPS, _BASE_LR, 40, 1, 1),
        Recipe("base-b", None, "pretrain", _BASE_STEPS, _BASE_LR, 40, 2, 2),
        Recipe("base-c", None, "pretrain", _BASE_STEPS, _BASE_LR, 40, 3, 3),
        Recipe("a-docs", "base-a", "docs", _FT_STEPS, _FT_LR, 10, 1, 11),
        Recipe("a-docs-v2", "a-docs", "sys", _FT_STEPS, _FT_LR, 10, 1, 12),
        Recipe("a-sys", "base-a", "sys", _FT_STEPS, _FT_LR, 10, 1, 13),
        Recipe("b-docs", "base-b", "docs", _FT_STEPS, _FT_LR, 10, 2, 14),
    )
}
assert tuple(RECIPES) == MODEL_NAMES
# One dependency chain per training worker (about equal numbers of steps).
_CHAINS = (("base-a", "a-docs", "a-docs-v2", "a-sys"), ("base-b", "b-docs", "base-c"))
assert sorted(n for c in _CHAINS for n in c) == sorted(MODEL_NAMES)
_TINY_STEPS = 3  # tiny=True: the machinery only (tests of locking and caching)


def _recipe_signature(tiny: bool) -> str:
    return f"model-tracing demo zoo {VERSION} {'tiny' if tiny else 'full'}"


def _name(spec_or_name: str) -> str:
    name = spec_or_name[len(DEMO_PREFIX):] if spec_or_name.startswith(DEMO_PREFIX) else spec_or_name
    if name not in RECIPES:
        raise TracingError(f"unknown demo model {name!r}; available: {', '.join(MODEL_NAMES)}")
    return name


def root_of(name: str) -> str:
    """The base model a demo model descends from (itself for a base). Accepts ``demo:<name>``."""
    name = _name(name)
    while RECIPES[name].parent is not None:
        name = RECIPES[name].parent
    return name


def are_dependent(a: str, b: str) -> bool:
    """True iff the two demo models share a root (one is derived from the other or both from one base)."""
    return root_of(a) == root_of(b)


# --------------------------------------------------------------------------------------------
# Paths and specs


def default_root() -> pathlib.Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return pathlib.Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "model-tracing" / f"demo-{VERSION}"


def _root(root) -> pathlib.Path:
    return pathlib.Path(root).expanduser().absolute() if root is not None else default_root().absolute()


def is_built(root=None, tiny: bool = False) -> bool:
    complete = _root(root) / _COMPLETE
    try:
        return complete.read_text(encoding="utf-8").strip() == _recipe_signature(tiny)
    except OSError:
        return False


def is_demo_spec(spec: str) -> bool:
    """True for model specs of the form ``demo:<name>``."""
    return isinstance(spec, str) and spec.startswith(DEMO_PREFIX)


def resolve_demo(spec: str, root=None) -> pathlib.Path:
    """The local folder of demo model ``demo:<name>`` (a bare name is accepted too), building the zoo if needed."""
    name = _name(spec)
    return ensure_built(root) / name


def demo_eval_text_path(root=None) -> pathlib.Path:
    """The held-out evaluation text (``--dataset demo``): one document per line, never trained on."""
    return ensure_built(root) / "corpus" / SLICE_FILES["eval"]


def lineage(root=None) -> dict:
    """The contents of ``<root>/lineage.json`` (building the zoo if needed)."""
    path = ensure_built(root) / "lineage.json"
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Build


def ensure_built(root=None, progress: bool = True, *, tiny: bool = False) -> pathlib.Path:
    """Build the demo zoo at ``root`` unless a complete build is already there; return ``root``.

    Safe to call from several processes at once: builders serialise on ``<root>.lock`` and the
    tree is built in a sibling temp directory and renamed into place, ``COMPLETE`` included.
    A directory without ``COMPLETE`` (a crashed build) or from another recipe version is
    replaced; a non-empty directory that is not a demo zoo is never touched (error).
    ``tiny=True`` trains a few steps only — for tests of this machinery, never for real use.
    """
    return _ensure_built(root, progress=progress, tiny=tiny)[0]


def _ensure_built(root=None, progress: bool = True, tiny: bool = False) -> tuple[pathlib.Path, bool]:
    """Like ``ensure_built`` but also says whether this call did the build."""
    import fcntl

    root = _root(root)
    if is_built(root, tiny):
        return root, False
    _check_replaceable(root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        lock = open(root.parent / (root.name + ".lock"), "a+")
    except OSError as err:
        raise TracingError(f"cannot create the demo model directory {root}: {err.strerror or err}") from None
    with lock:
        if progress and not _try_lock(lock):
            print(f"waiting for another process building the demo models in {root} ...", file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_built(root, tiny):
                return root, False
            _check_replaceable(root)
            for stale in root.parent.iterdir():  # leftovers of crashed builders (we hold the lock)
                if stale.name.startswith(f".{root.name}.") and stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            tmp = root.parent / f".{root.name}.building-{os.getpid()}"
            try:
                t0 = time.time()
                if progress:
                    what = "tiny test " if tiny else ""
                    print(f"building the {what}demo models in {root} (once; about 2 min on 2 idle CPU cores)", file=sys.stderr, flush=True)
                _build(tmp, progress=progress, tiny=tiny)
                (tmp / _COMPLETE).write_text(_recipe_signature(tiny) + "\n", encoding="utf-8")
                if root.exists():  # stale or partial: move aside atomically, then delete
                    trash = root.parent / f".{root.name}.old-{os.getpid()}"
                    os.rename(root, trash)
                    os.rename(tmp, root)
                    shutil.rmtree(trash, ignore_errors=True)
                else:
                    os.rename(tmp, root)
                if progress:
                    print(f"demo models ready in {root} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            return root, True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _try_lock(lock) -> bool:
    import fcntl

    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _check_replaceable(root: pathlib.Path) -> None:
    if root.exists() and not root.is_dir():
        raise TracingError(f"{root} exists and is not a directory; choose another demo model directory")
    if root.is_dir() and any(root.iterdir()) and not (root / _MARKER).exists():
        hint = f" (it comes from ${ENV_DIR})" if os.environ.get(ENV_DIR) and _root(None) == root else ""
        raise TracingError(
            f"{root} is not empty and is not a demo model directory{hint}; choose a new or empty directory"
        )


def _build_workers() -> int:
    env = os.environ.get(ENV_WORKERS)
    if env is None:
        return max(1, min(len(_CHAINS), os.cpu_count() or 1))
    try:
        return max(1, int(env))
    except ValueError:
        raise TracingError(f"{ENV_WORKERS} must be a positive integer, not {env!r}") from None


def _build(out: pathlib.Path, progress: bool, tiny: bool) -> None:
    """Build the whole zoo into the fresh directory ``out`` (everything but ``COMPLETE``).

    The corpus and tokenizer are made here; the models are trained by worker processes, one
    torch thread each (a dependency chain per worker), so the weights are bit-identical whatever
    the machine's core count and the caller's torch settings are left alone.
    """
    import tokenizers
    import torch
    import transformers
    from safetensors.torch import save_file

    t0 = time.time()
    out.mkdir(parents=True)
    (out / _MARKER).write_text(_recipe_signature(tiny) + "\n", encoding="utf-8")

    slices = build_corpus(tiny=tiny)
    corpus_dir = out / "corpus"
    corpus_dir.mkdir()
    corpus_info = {}
    for name, docs in slices.items():
        text = "".join(d + "\n" for d in docs)
        (corpus_dir / SLICE_FILES[name]).write_text(text, encoding="utf-8", newline="\n")
        corpus_info[name] = {
            "file": f"corpus/{SLICE_FILES[name]}",
            "documents": len(docs),
            "chars": len(text),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        }

    raw_tok = _train_tokenizer(slices["pretrain"] + slices["docs"] + slices["sys"])
    hf_tok = _wrap_tokenizer(raw_tok)
    hf_tok.save_pretrained(out / "tokenizer")

    blocks = {name: _pack(raw_tok, docs) for name, docs in slices.items()}
    for name, b in blocks.items():
        corpus_info[name]["tokens"] = int(b.numel())
        corpus_info[name]["blocks"] = int(b.shape[0])
        if b.shape[0] == 0:
            raise TracingError(f"the demo corpus slice {name!r} is shorter than one block of {BLOCK_SIZE} tokens")
    work = out / ".work"
    work.mkdir()
    save_file({k: v.contiguous() for k, v in blocks.items()}, str(work / "blocks.safetensors"))
    if progress:
        sizes = ", ".join(f"{k} {v['chars'] / 1e3:.0f} kB" for k, v in corpus_info.items())
        print(f"corpus: {sizes}; tokenizer: {len(hf_tok)} tokens", file=sys.stderr, flush=True)

    n_workers = _build_workers()
    plans = [[] for _ in range(min(n_workers, len(_CHAINS)))]
    for i, chain in enumerate(_CHAINS):
        plans[i % len(plans)].extend(chain)
    _run_workers(out, plans, vocab_size=len(hf_tok), tiny=tiny, progress=progress)

    records = {}
    for name in MODEL_NAMES:
        records[name] = json.loads((work / f"{name}.json").read_text(encoding="utf-8"))
        for f in (out / "tokenizer").iterdir():
            shutil.copy2(f, out / name / f.name)
    shutil.rmtree(work)

    info = {
        "version": VERSION,
        "recipe": "tiny" if tiny else "full",
        "models": records,
        "dependent_iff": "same root",
        "vocab_size": len(hf_tok),
        "block_size": BLOCK_SIZE,
        "batch_size": BATCH_SIZE,
        "eval_loss": "mean token cross-entropy (nats) over corpus/eval.txt packed into "
                     f"{BLOCK_SIZE}-token blocks: each line tokenised with <s> prepended and </s> "
                     "appended, lines concatenated, the last partial block dropped",
        "ln_vocab": math.log(len(hf_tok)),
        "corpus": corpus_info,
        "torch_threads_per_model": 1,
        "workers": len(plans),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "build_seconds": round(time.time() - t0, 1),
    }
    (out / "lineage.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _run_workers(out: pathlib.Path, plans: list[list[str]], vocab_size: int, tiny: bool, progress: bool) -> None:
    """Run one training process per plan; draw their progress (reported as JSON lines on stdout) here."""
    import queue
    import threading

    from tqdm.auto import tqdm

    pkg_parent = str(pathlib.Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    code = "import sys; from tracing.zoo import _worker_main; sys.exit(_worker_main())"
    events: queue.Queue = queue.Queue()

    def pump(i, stream):
        for line in stream:
            events.put((i, line))
        events.put((i, None))

    procs, bars = [], {}
    try:
        for i, names in enumerate(plans):
            job = {"out": str(out), "names": names, "vocab_size": vocab_size, "tiny": tiny, "worker": i}
            proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    env=env, text=True, encoding="utf-8")
            procs.append(proc)
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
            threading.Thread(target=pump, args=(i, proc.stdout), daemon=True).start()
        running = len(procs)
        while running:
            i, line = events.get()
            if line is None:
                running -= 1
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not progress or not isinstance(ev, dict):
                continue
            if ev.get("event") == "start":
                if i in bars:
                    bars[i].close()
                bars[i] = tqdm(total=ev["steps"], desc=f"{ev['name']:>9}", position=i, leave=False,
                               file=sys.stderr, dynamic_ncols=True, mininterval=0.25)
            elif ev.get("event") == "step" and i in bars:
                bars[i].update(ev["step"] - bars[i].n)
                bars[i].set_postfix(loss=f"{ev['loss']:.3f}", refresh=False)
            elif ev.get("event") == "done":
                if i in bars:
                    bars.pop(i).close()
                tqdm.write(f"{ev['name']:>9}: eval loss {ev['eval_loss']:.3f} after {ev['steps']} steps "
                           f"on {ev['data']!r} ({ev['seconds']:.0f} s)", file=sys.stderr)
        codes = [proc.wait() for proc in procs]
    finally:
        for bar in bars.values():
            bar.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, code_ in enumerate(codes):
        if code_ != 0:
            err = out / ".work" / f"error-{i}.txt"
            msg = err.read_text(encoding="utf-8").strip() if err.exists() else f"exit status {code_}"
            raise TracingError(f"training the demo models failed: {msg}")


def _worker_main() -> int:
    """Entry point of a training worker process: job as JSON on stdin, progress as JSON lines on stdout."""
    job = json.loads(sys.stdin.read())
    out = pathlib.Path(job["out"])
    try:
        _train_chain(out, job["names"], job["vocab_size"], job["tiny"])
        return 0
    except BaseException as err:  # one line for the parent to report
        msg = " ".join(f"{type(err).__name__}: {err}".split())
        (out / ".work" / f"error-{job['worker']}.txt").write_text(msg + "\n", encoding="utf-8")
        return 1


def _emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _train_chain(out: pathlib.Path, names: list[str], vocab_size: int, tiny: bool) -> None:
    import torch
    import transformers
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    blocks = load_file(str(out / ".work" / "blocks.safetensors"))
    models = {}
    for k, name in enumerate(names):
        r = RECIPES[name]
        steps = _TINY_STEPS if tiny else r.steps
        if r.parent is None:
            torch.manual_seed(r.init_seed)
            model = transformers.LlamaForCausalLM(_model_config(vocab_size))
        else:
            model = copy.deepcopy(models[r.parent])
        start = time.time()
        _emit(event="start", name=name, steps=steps)
        train_losses = _train(model, blocks[r.data], steps=steps, lr=r.lr, warmup=min(r.warmup, steps),
                              seed=r.data_seed,
                              on_step=lambda step, loss: _emit(event="step", name=name, step=step, loss=loss))
        loss = eval_loss(model, blocks["eval"])
        models[name] = model
        _save_model(model, out / name)
        tail = train_losses[-10:]
        record = {
            "parent": r.parent,
            "root": root_of(name),
            "init_seed": r.init_seed,
            "data": r.data,
            "data_seed": r.data_seed,
            "steps": steps,
            "lr": r.lr,
            "final_train_loss": round(sum(tail) / len(tail), 6),
            "final_eval_loss": float(loss),
            "relative_change_from_parent": (
                None if r.parent is None else round(_relative_change(models[r.parent], model), 6)
            ),
            "train_seconds": round(time.time() - start, 2),
        }
        (out / ".work" / f"{name}.json").write_text(json.dumps(record), encoding="utf-8")
        _emit(event="done", name=name, eval_loss=loss, steps=steps, data=r.data, seconds=record["train_seconds"])
        later = names[k + 1:]
        for old in list(models):  # keep only models that a later one in this chain starts from
            if not any(RECIPES[n].parent == old for n in later):
                del models[old]


def _train_tokenizer(docs: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def _wrap_tokenizer(raw_tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=raw_tok,
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def _pack(raw_tok, docs: list[str]):
    """Token blocks [N, BLOCK_SIZE]: each document as ``<s> ... </s>``, concatenated, remainder dropped."""
    import torch

    ids: list[int] = []
    for enc in raw_tok.encode_batch(docs, add_special_tokens=True):
        ids.extend(enc.ids)
        ids.append(EOS_ID)
    n = len(ids) // BLOCK_SIZE
    return torch.tensor(ids[: n * BLOCK_SIZE], dtype=torch.long).view(n, BLOCK_SIZE)


def _model_config(vocab_size: int):
    import torch
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=vocab_size, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        **MODEL_CONFIG,
    )
    cfg.dtype = torch.float32
    return cfg


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _train(model, blocks, steps: int, lr: float, warmup: int, seed: int, on_step=None) -> list[float]:
    """AdamW on random batches of ``blocks`` (epochs of a seeded permutation); returns the step losses."""
    import torch

    model.train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    order = torch.empty(0, dtype=torch.long)
    losses = []
    for step in range(steps):
        if order.numel() < BATCH_SIZE:  # next epoch (the tail of the previous one is used first)
            order = torch.cat([order, torch.randperm(blocks.shape[0], generator=gen)])
        idx, order = order[:BATCH_SIZE], order[BATCH_SIZE:]
        batch = blocks[idx]
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_step is not None and ((step + 1) % 5 == 0 or step + 1 == steps):
            on_step(step + 1, losses[-1])
    model.eval()
    return losses


def eval_loss(model, blocks, batch_size: int = 32) -> float:
    """Mean token cross-entropy (nats) of ``model`` on token ``blocks`` [N, T] (equal-length blocks)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, blocks.shape[0], batch_size):
            batch = blocks[i : i + batch_size]
            logits = model(input_ids=batch).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += batch[:, 1:].numel()
    return total / count


def eval_blocks(root=None, tokenizer=None):
    """The held-out evaluation text of a built zoo as token blocks [N, BLOCK_SIZE] (the ``final_eval_loss`` data)."""
    from tokenizers import Tokenizer

    root = ensure_built(root)
    raw = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json")) if tokenizer is None else tokenizer
    docs = (root / "corpus" / SLICE_FILES["eval"]).read_text(encoding="utf-8").splitlines()
    return _pack(raw, docs)


def _relative_change(parent, child) -> float:
    import torch

    num = den = 0.0
    p = dict(parent.named_parameters())
    for k, v in child.named_parameters():
        num += float(torch.sum((v.detach() - p[k].detach()) ** 2))
        den += float(torch.sum(p[k].detach() ** 2))
    return math.sqrt(num / den)


def _save_model(model, folder: pathlib.Path) -> None:
    import inspect

    import torch

    model = model.to(torch.float32)
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:  # transformers 4.x
        kwargs["safe_serialization"] = True
    model.save_pretrained(folder, **kwargs)
    if not (folder / "model.safetensors").exists():
        raise TracingError(f"saving demo model to {folder} did not write model.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    for f in folder.iterdir():  # some writers create 0600 files; a shared cache should follow the umask
        f.chmod(0o666 & ~mask)


# --------------------------------------------------------------------------------------------
# CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _fmt_loss(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _table(root: pathlib.Path, info: dict | None) -> str:
    rows = [("name", "parent", "root", "data", "steps", "eval loss", "path")]
    for name in MODEL_NAMES:
        r = RECIPES[name]
        rec = (info or {}).get("models", {}).get(name, {})
        rows.append((name, r.parent or "-", root_of(name), r.data, str(rec.get("steps", r.steps)),
                     _fmt_loss(rec.get("final_eval_loss")), str(root / name)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main(argv=None) -> int:
    parser = _Parser(prog="python -m tracing.zoo", description="The offline demo model family (demo:<name>).")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    p = sub.add_parser("build", help="build the demo models (if not built) and show them")
    p.add_argument("dir", nargs="?", help=f"where to build (default: ${ENV_DIR} or the user cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("list", help="names, parents, roots and paths (does not build)")
    p.add_argument("--root", help="zoo directory (default: the cache)")
    p = sub.add_parser("path", help="print the folder of one demo model (builds if needed)")
    p.add_argument("name", help="a demo model name, e.g. base-a or demo:base-a")
    p.add_argument("--root", help="zoo directory (default: the cache)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            root = ensure_built(args.dir, progress=not args.quiet)
            info = json.loads((root / "lineage.json").read_text(encoding="utf-8"))
            print(_table(root, info))
            print(f"eval text: {root / 'corpus' / SLICE_FILES['eval']}  "
                  f"(ln V = {info['ln_vocab']:.3f}; built in {info['build_seconds']} s)")
        elif args.cmd == "list":
            root = _root(args.root)
            built = is_built(root)
            info = json.loads((root / "lineage.json").read_text(encoding="utf-8")) if built else None
            print(_table(root, info))
            print(f"{root}: {'built' if built else 'not built yet (python -m tracing.zoo build)'}")
        elif args.cmd == "path":
            name = _name(args.name)
            print(ensure_built(args.root) / name)
    except TracingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
