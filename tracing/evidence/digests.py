"""Which exact weights a statement is about: per-file SHA-256s and the model's root digest.

The root digest is the one OpenSSF model signing v1.0 defines (and the ``model-signing`` package
computes with its default file serialization): SHA-256 over the concatenation of the raw 32-byte
SHA-256 digests of every file of the model folder, in the order of their relative POSIX paths,
git bookkeeping files (``.git/``, ``.gitattributes``, ``.github/``, ``.gitignore``) left out. A
single file (a GGUF) is hashed as model signing hashes a file: one entry named ``.``. A model
signed with ``model-signing`` and a tracing statement therefore name the same thing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import TracingError

GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


def _file_sha256(f: Path) -> str:
    from ..models import _sha_from_hub_cache, sha256_file
    return _sha_from_hub_cache(f) or sha256_file(f)


def model_files(path: str | Path) -> dict[str, str]:
    """``{relative POSIX path: sha256 hex}`` of every file of a model folder (links followed, as
    in a hub cache snapshot), or ``{".": sha256}`` of a single file."""
    p = Path(path)
    if p.is_file():
        return {".": _file_sha256(p)}
    if not p.is_dir():
        raise TracingError(f"{p} does not exist; give the model folder or file the statement names")
    out = {name: _file_sha256(f) for name, f in folder_files(p)}
    if not out:
        raise TracingError(f"{p} holds no files; give the model folder the statement names")
    return out


def folder_files(p: Path) -> list[tuple[str, Path]]:
    """``(relative POSIX path, file)`` of every file of a model folder a root digest covers."""
    out = []
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p)
        if rel.parts[0] in GIT_PATHS or not f.is_file():
            continue
        out.append((rel.as_posix(), f))
    return out


def root_digest(files: dict[str, str]) -> str:
    """OpenSSF model signing v1.0 root digest of ``{name: sha256 hex}``."""
    h = hashlib.sha256()
    for name in sorted(files, key=PurePosixPath):
        h.update(bytes.fromhex(files[name]))
    return h.hexdigest()


def location(path: str | Path, gguf_file: str | None = None) -> Path:
    """What a subject covers: the GGUF file when one file of a folder was read, else ``path``."""
    p = Path(path)
    return p / gguf_file if gguf_file and p.is_dir() else p


def checkpoint_location(ck) -> Path:
    """What a subject covers for an opened checkpoint: its GGUF file, else its folder."""
    q = getattr(ck, "quantized", None)
    if q is not None and q.format == "gguf":
        return Path(q.weight_files()[0])
    return location(ck.path, ck.resolved.file)


def record_location(entry: dict) -> Path | None:
    """The folder or file a record's ``models`` entry was read from (None for in-memory models)."""
    if entry.get("in_memory") or not entry.get("path"):
        return None
    q = entry.get("quantization") or {}
    files = entry.get("files") or []
    gguf = files[0]["file"] if q.get("format") == "gguf" and len(files) == 1 else None
    return location(entry["path"], gguf)


def subject_name(entry: dict) -> str:
    """``hf://org/repo@commit`` for a hub model, else the folder's or file's name."""
    if entry.get("repo_id") and entry.get("commit"):
        return f"hf://{entry['repo_id']}@{entry['commit']}"
    loc = record_location(entry)
    return loc.name if loc is not None else str(entry.get("id"))


def spec_of_name(name: str) -> str | None:
    """The model spec a subject name resolves to (hub names only)."""
    return name[len("hf://"):] if name.startswith("hf://") else None


HUB = "hub"
RECORDED = "record (hashed again at attest time)"
FAST_CHECKED = "computed at attest time (fast identity checked)"
NOT_RECORDED = "computed at attest time (not a weight file of the record)"
RANGE_READ = "hub (range-read; not on this machine)"


@dataclass
class AttestedFiles:
    """The files a statement names for one model: ``{name: sha256}``, where each digest comes from
    (``sources``), the weight files hashed at attest time because the record held only their fast
    identity (``computed``), and the weight files that are not what the run read (``changed``)."""

    files: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def identity_matches(f: Path, entry: dict) -> bool:
    """Does ``f`` still have the size and fast identity (modification and status-change times,
    header digest) a record's file entry holds?"""
    from ..identity import fast_identity
    now = fast_identity(f) if f.is_file() else None
    return (now is not None and f.stat().st_size == entry.get("size")
            and all(now[k] == entry.get(k) for k in ("mtime_ns", "ctime_ns", "header_sha256")))


def _entries(record: dict, loc: Path) -> list[tuple[str, Path | None, dict | None]]:
    """``(name in the subject, local file or None, the record's file entry or None)`` of each file
    a subject covers: the files on this machine, and recorded weight files that are not (range-read)."""
    recorded = {f["file"]: f for f in record.get("files") or [] if f.get("file")}
    if loc.suffix == ".gguf" and not loc.is_dir():
        return [(".", loc if loc.is_file() else None, recorded.get(loc.name) or next(iter(recorded.values()), None))]
    if loc.is_file():
        return [(".", loc, recorded.get(loc.name))]
    here = folder_files(loc) if loc.is_dir() else []
    names = {n for n, _ in here}
    return [(n, f, recorded.get(n)) for n, f in here] + [(n, None, e) for n, e in recorded.items() if n not in names]


def attest_files(record: dict, loc: Path) -> AttestedFiles:
    """Per-file SHA-256 of a record's model for its statement, checked against the record: a file
    recorded with a SHA-256 must hash to it; a file recorded by its fast identity must still have
    that identity, and only then is it hashed (and checked again after, so a file rewritten while
    being hashed is caught); a range-read file keeps the hub's digest the record holds."""
    out = AttestedFiles()
    entries = _entries(record, loc)
    for name, f, e in entries:  # the cheap checks first: nothing is hashed for a changed file
        fast = e is not None and not e.get("sha256")
        if (f is None and not (e or {}).get("sha256")) or (fast and not identity_matches(f, e)):
            out.changed.append(name if name != "." else loc.name)
    if out.changed:
        return out
    for name, f, e in entries:
        if f is None:
            out.files[name], out.sources[name] = e["sha256"], RANGE_READ
            continue
        sha = _file_sha256(f)
        if e is None:
            out.sources[name] = NOT_RECORDED
        elif e.get("sha256"):
            out.sources[name] = HUB if e.get("sha256_source") == HUB else RECORDED
            if sha != e["sha256"]:
                out.changed.append(name if name != "." else loc.name)
        else:
            out.sources[name] = FAST_CHECKED
            out.computed.append(name)
            if not identity_matches(f, e):
                out.changed.append(name if name != "." else loc.name)
        out.files[name] = sha
    return out
