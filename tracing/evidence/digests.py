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
    out = {}
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p)
        if rel.parts[0] in GIT_PATHS or not f.is_file():
            continue
        out[rel.as_posix()] = _file_sha256(f)
    if not out:
        raise TracingError(f"{p} holds no files; give the model folder the statement names")
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


def weights_unchanged(entry: dict, files: dict[str, str], single: bool) -> list[str]:
    """Weight files whose recorded SHA-256 differs from ``files`` (the record's hashes vs now)."""
    changed = []
    for f in entry.get("files") or []:
        now = files.get(".") if single else files.get(f["file"])
        if f.get("sha256") and now != f["sha256"]:
            changed.append(f["file"])
    return changed
