"""Building the demo family once into its cache folder (locked, atomic, deterministic)."""
from __future__ import annotations

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

from .. import machine
from ..errors import TracingError
from .corpus import build_corpus
from .paths import _root, is_built
from .recipes import (_CHAINS, _COMPLETE, _MARKER, BATCH_SIZE, BLOCK_SIZE, ENV_DIR, ENV_WORKERS, MODEL_NAMES, SLICE_FILES,
                      VERSION, _recipe_signature)
from .tokenizer import _pack, _train_tokenizer, _wrap_tokenizer



def ensure_built(root=None, progress: bool = True, *, tiny: bool = False) -> pathlib.Path:
    """Build the demo family at ``root`` unless a complete build is already there; return ``root``.

    Safe to call from several processes at once: builders serialise on ``<root>/.lock``, the tree
    is built in ``<root>/.building-<pid>`` and moved into place, ``COMPLETE`` last. Nothing is
    written beside ``root``.
    A directory without ``COMPLETE`` (a crashed build) or from another recipe version is
    replaced; a non-empty directory that is not a demo family is never touched (error).
    ``tiny=True`` trains a few steps only — for tests of this machinery, never for real use.
    """
    return _ensure_built(root, progress=progress, tiny=tiny)[0]


LOCK_NAME = ".lock"  # inside the root: serialises builders (kept, so a lock is never replaced while held)
BUILDING = ".building-"  # inside the root: a build in progress, moved into place when complete


def _ensure_built(root=None, progress: bool = True, tiny: bool = False) -> tuple[pathlib.Path, bool]:
    """Like ``ensure_built`` but also says whether this call did the build."""
    import fcntl

    root = _root(root)
    if is_built(root, tiny):
        return root, False
    _check_replaceable(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / LOCK_NAME, "a+")
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
            for stale in root.iterdir():  # leftovers of crashed builders (we hold the lock)
                if stale.name.startswith(BUILDING) and stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            tmp = root / f"{BUILDING}{os.getpid()}"
            try:
                t0 = time.time()
                if progress:
                    what = "tiny test " if tiny else ""
                    print(f"building the {what}demo models in {root} (once; about 2 min on 2 idle CPU cores)", file=sys.stderr, flush=True)
                _build(tmp, progress=progress, tiny=tiny)
                _move_into_place(tmp, root, tiny)
                if progress:
                    print(f"demo models ready in {root} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            return root, True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _move_into_place(tmp: pathlib.Path, root: pathlib.Path, tiny: bool) -> None:
    """Replace what ``root`` holds (a crashed or older build) by the build in ``tmp``. ``COMPLETE``
    goes first and comes back last, so no reader takes a half-moved tree for a build."""
    (root / _COMPLETE).unlink(missing_ok=True)
    for old in root.iterdir():
        if old.name == LOCK_NAME or old == tmp:
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for new in tmp.iterdir():
        os.rename(new, root / new.name)
    (root / _COMPLETE).write_text(_recipe_signature(tiny) + "\n", encoding="utf-8")
    tmp.rmdir()


def _try_lock(lock) -> bool:
    import fcntl

    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _builder_file(p: pathlib.Path) -> bool:
    """The builders' lock, or a build in progress (all a crashed first build leaves)."""
    return p.name == LOCK_NAME or p.name.startswith(BUILDING)


def _check_replaceable(root: pathlib.Path) -> None:
    if root.exists() and not root.is_dir():
        raise TracingError(f"{root} exists and is not a directory; choose another demo model directory")
    if root.is_dir() and any(not _builder_file(p) for p in root.iterdir()) and not (root / _MARKER).exists():
        hint = f" (it comes from ${ENV_DIR})" if os.environ.get(ENV_DIR) and _root(None) == root else ""
        raise TracingError(
            f"{root} is not empty and is not a demo model directory{hint}; choose a new or empty directory"
        )


def _build_workers() -> int:
    env = os.environ.get(ENV_WORKERS)
    if env is None:
        return max(1, min(len(_CHAINS), machine.cores()))
    try:
        return max(1, int(env))
    except ValueError:
        raise TracingError(f"{ENV_WORKERS} must be a positive integer, not {env!r}") from None


def _write_corpus(out: pathlib.Path, slices: dict[str, list[str]]) -> dict:
    """``<out>/corpus/*.txt``, one document per line; returns their sizes and hashes."""
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

    return corpus_info


def _build(out: pathlib.Path, progress: bool, tiny: bool) -> None:
    """Build the whole family into the fresh directory ``out`` (everything but ``COMPLETE``).

    The corpus and tokenizer are made here; the models are trained by worker processes, one
    torch thread each (the plans of ``recipes._CHAINS``), so the weights are bit-identical whatever
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
    corpus_info = _write_corpus(out, slices)

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
    events: queue.Queue = queue.Queue()

    def pump(i, stream):
        for line in stream:
            events.put((i, line))
        events.put((i, None))

    procs, bars = [], {}
    try:
        for i, names in enumerate(plans):
            job = {"out": str(out), "names": names, "vocab_size": vocab_size, "tiny": tiny, "worker": i}
            proc = subprocess.Popen([sys.executable, "-m", "tracing.demo.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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
                if procs[i].wait() != 0:  # the others may be waiting for its models: stop them
                    for other in procs:
                        if other.poll() is None:
                            other.kill()
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
    if any(codes):
        errors = sorted((out / ".work").glob("error-*.txt"))
        msg = errors[0].read_text(encoding="utf-8").strip() if errors else f"exit status {max(codes, key=abs)}"
        raise TracingError(f"training the demo models failed: {msg}")


