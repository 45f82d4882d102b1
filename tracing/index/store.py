"""An index as a whole: its entries (each checked), removal, and merging two indexes."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import TracingError
from .entry import ENTRY_FILE, Entry, read_entry
from .layout import ENTRIES, FAILED, Settings, entry_dir, open_or_create, read_manifest


def entries(root: Path, s: Settings | None = None) -> tuple[list[Entry], list[tuple[str, str]]]:
    """``(entries, problems)``: every finished entry whose metadata checks out, and for each other
    one its name and the one-line reason; a bad entry never hides the others."""
    root = Path(root)
    s = s or read_manifest(root)
    good, bad = [], []
    folder = root / ENTRIES
    for d in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not d.is_dir() or d.name.startswith(".") or not (d / ENTRY_FILE).exists() and not any(d.iterdir()):
            continue
        try:
            good.append(read_entry(d, s))
        except TracingError as e:
            bad.append((d.name, str(e)))
    return good, bad


def verify(root: Path) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Every entry with its rows' SHA-256 checked too."""
    good, bad = entries(root)
    ok = []
    for e in good:
        try:
            for f in e.meta["files"]:
                e.tensors(f)
            ok.append(e)
        except TracingError as err:
            bad.append((e.key, str(err)))
    return ok, sorted(bad)


def failures(root: Path) -> dict[str, str]:
    import json
    out = {}
    for f in sorted((Path(root) / FAILED).glob("*.json")):
        try:
            rec = json.loads(f.read_text())
            out[rec.get("model", f.stem)] = rec.get("error", "")
        except (OSError, ValueError):
            out[f.stem] = "unreadable failure record"
    return out


def remove(root: Path, keys_or_models: list[str]) -> list[str]:
    """Remove entries by key or model id; returns the keys removed. Unknown names are an error."""
    from ..cli_util import slug
    read_manifest(root)
    removed = []
    for name in keys_or_models:
        key = name if entry_dir(root, name).is_dir() else slug(name)
        d = entry_dir(root, key)
        if not d.is_dir():
            raise TracingError(f"{name} is not in the index {root}; `python -m tracing.index list {root}` shows its entries")
        shutil.rmtree(d)
        removed.append(key)
    return removed


def merge(src: Path, dst: Path) -> tuple[list[str], list[str]]:
    """Copy every good entry of index ``src`` into ``dst`` (created with ``src``'s settings when new;
    refused when its settings differ). Returns ``(copied, skipped)``: an entry already in ``dst``
    with the same rows is skipped."""
    s = read_manifest(src)
    open_or_create(dst, s)
    good, bad = verify(src)
    if bad:
        raise TracingError(f"{src}: entry {bad[0][0]} is damaged ({bad[0][1]}); run `python -m tracing.index verify {src}`")
    copied, skipped = [], []
    for e in good:
        target = entry_dir(dst, e.key)
        try:
            if read_entry(target, s).meta["files"] == e.meta["files"]:
                skipped.append(e.key)
                continue
        except TracingError:
            pass
        tmp = target.with_name(f".{e.key}.merge")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(e.folder, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        copied.append(e.key)
    return copied, skipped
