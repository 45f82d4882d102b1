"""Which weight files a record was computed on, at two costs.

- **full**: each file's SHA-256 (the hub's LFS digest when the hub recorded one, else computed
  once and remembered by path, size and modification time). Evidence, the reference index and
  ``--digest full`` use it; hashing a 7B pair reads 26 GB.
- **fast** (the default of a sampled test): the file's size, modification (and status-change)
  time and the SHA-256 of its header — the safetensors JSON header (every tensor's dtype, shape and
  byte offsets) or the GGUF metadata and tensor table. It reads kilobytes, names the files exactly
  on this machine and changes whenever a file is rewritten, but it is not a content digest: two files
  with the same header and different values (a fine-tune saved the same way) differ only in their
  modification times. Records say which identity they hold.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

FAST_NOTE = ("fast file identity: each weight file's size, modification time and SHA-256 of its header "
             "(tensor table), not of its data; --digest full hashes the whole files")
MAX_HEADER = 1 << 30  # a longer safetensors header is not a header


def header_bytes_safetensors(fh) -> bytes | None:
    """The 8-byte length and JSON header of an open safetensors file, or None when it has none."""
    head = fh.read(8)
    if len(head) != 8:
        return None
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER:
        return None
    body = fh.read(n)
    return head + body if len(body) == n and body[:1] == b"{" else None


def header_digest(f: Path) -> str | None:
    """SHA-256 of a weight file's header (safetensors or GGUF), None for other formats."""
    if f.suffix == ".safetensors":
        with open(f, "rb") as fh:
            blob = header_bytes_safetensors(fh)
        return None if blob is None else hashlib.sha256(blob).hexdigest()
    if f.suffix == ".gguf":
        from .sources.ggufheader import header_of
        return header_of(f).digest
    return None


def fast_identity(f: Path) -> dict | None:
    """``{"mtime_ns", "ctime_ns", "header_sha256"}`` of a weight file (the status-change time too: a
    file rewritten and given back its old modification time still changes it), None when its format has no header to
    digest (then only its full SHA-256 identifies it)."""
    digest = header_digest(f)
    if digest is None:
        return None
    st = f.stat()
    return {"mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "header_sha256": digest,
            "sha256_source": "not computed (fast identity)"}


def file_identity(entry: dict, folder: str | None) -> tuple | None:
    """What identifies one provenance file entry: its SHA-256 when known, else its fast identity
    (with the model's folder, so two copies in two places are two keys); None when neither."""
    if entry.get("sha256"):
        return (entry.get("file"), entry.get("size"), entry["sha256"])
    if entry.get("header_sha256"):
        return (entry.get("file"), entry.get("size"),
                f"fast:{folder}:{entry.get('mtime_ns')}:{entry.get('ctime_ns')}:{entry['header_sha256']}")
    return None


def content_probe(f: Path, size: int = 1 << 16) -> str:
    """SHA-256 of three ``size``-byte windows of a file (start, middle, end): two files that differ
    there differ, without reading them whole (equal probes prove nothing: then hash in full)."""
    n = f.stat().st_size
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for start in sorted({0, max(0, n // 2 - size // 2), max(0, n - size)}):
            fh.seek(start)
            h.update(fh.read(size))
    return h.hexdigest()
