"""One reference's entry: its sampled rows, read once from its weights, and what identifies it.

``rows.safetensors`` holds, for each indexed block b: ``up.b``, the K sampled up_proj rows as
stored in the checkpoint (losslessly in bf16/f16 when that round-trips, else float32);
``emb``, the K sampled embedding columns over the first tokens. ``sketch.safetensors`` holds what
the screen reads: ``sketch.b``, block b's rows times the index's fixed projection, normalised, in
float16, and ``sketch.emb``, the embedding columns centred, projected the same way over the tokens
and normalised.
``entry.json`` holds the model id, family, hub commit, config / tokenizer / weight-file digests,
the shape, the blocks and the SHA-256 of ``rows.safetensors``, and a checksum of itself.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TracingError
from .layout import Settings, block_subset, canonical, entry_dir, projection, row_index, sha256_bytes

ROWS_FILE = "rows.safetensors"  # up.b (sampled up_proj rows) and emb (sampled embedding columns)
SKETCH_FILE = "sketch.safetensors"  # sketch.*: what the screen reads (small, checked on every scan)
ENTRY_FILE = "entry.json"


def shape_of(arch) -> dict:
    return {"model_type": arch.model_type, "d": int(arch.d), "h": int(arch.h), "L": int(arch.L), "V": int(arch.V)}


def shape_problem(arch) -> str | None:
    """Why a model cannot be indexed or screened (None when it can).

    Mixture-of-experts models are refused on purpose. Rows of a fixed subset of experts, compared
    expert by expert, would keep the test exact (the rows are chosen without looking at the
    weights), but reordering the experts together with the router's rows leaves the function
    unchanged and moves every sampled expert onto another one: such a copy would come out "not
    significant" rather than "cannot rule out", and an upcycled model (every expert a copy of a
    dense MLP) would not be screened against its dense ancestor at all. The experts grid of
    ``main.py --stat cos`` matches experts first and covers both."""
    if getattr(arch, "has_experts", False):
        return ("mixture-of-experts blocks: the index holds dense MLP rows, and experts compared by position have no "
                "power against a reordering of the experts; test this pair with the experts grid, "
                "`main.py --base_model_id REFERENCE --ft_model_id CANDIDATE --stat cos`")
    return None


def sketch(rows: torch.Tensor, P) -> torch.Tensor:
    """The screen's view of sampled rows: projected (when P), unit-normalised, float16."""
    x = rows.float() if P is None else rows.float() @ P
    n = x.norm(dim=1, keepdim=True)
    return torch.where(n > 0, x / n.clamp_min(1e-30), torch.zeros_like(x)).to(torch.float16)


def features(src, s: Settings) -> dict[str, torch.Tensor]:
    """The tensors of an entry (sampled up rows, their sketches, embedding columns) of one model."""
    from ..rowstore import _compact
    a = src.arch
    problem = shape_problem(a)
    if problem:
        raise TracingError(f"{getattr(src, 'label', 'model')}: {problem}")
    S, P = row_index(a.h, s), projection(a.d, s)
    out = {}
    for b in block_subset(a.L, s.blocks):
        up = src.get_rows(a.units(b)[0].up, S, torch.float32)
        out[f"up.{b}"] = _compact(up).contiguous()
        out[f"sketch.{b}"] = sketch(up, P).contiguous()
    cols = row_index(a.d, s)  # read as the first tokens' rows (contiguous), then the sampled columns
    emb = src.get_rows(a.embed, np.arange(min(a.V, s.emb_tokens)), torch.float32)[:, torch.from_numpy(cols)]
    out["emb"] = _compact(emb).contiguous()
    # the columns centred, projected over the tokens (fixed, from the seed) and normalised, as rows
    out["sketch.emb"] = sketch((emb - emb.mean(0)).T, projection(emb.shape[0], s)).contiguous()
    return out


def describe(ck, family: str | None) -> dict:
    """What identifies a reference: id, commit, digests of config, tokenizer and weight files."""
    from ..references import tokenizer_digest
    prov = ck.provenance()
    cfg = Path(ck.path) / "config.json"
    return {"model": ck.label, "family": family, "commit": prov.get("commit"), "revision": prov.get("revision"),
            "config_sha256": sha256_bytes(cfg.read_bytes()) if cfg.is_file() else None,
            "tokenizer_sha256": tokenizer_digest(ck),
            "weight_files": [{k: f.get(k) for k in ("file", "size", "sha256")} for f in prov.get("files") or []],
            "shape": shape_of(ck.arch)}


def write_entry(root: Path, key: str, meta: dict, tensors: dict[str, torch.Tensor], s: Settings) -> Path:
    """Write one entry atomically: the rows first, then ``entry.json`` naming their SHA-256."""
    from safetensors.torch import save

    from ..fileio import atomic_write
    folder = entry_dir(root, key)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, keep in ((ROWS_FILE, lambda k: not k.startswith("sketch.")), (SKETCH_FILE, lambda k: k.startswith("sketch."))):
        blob = save({k: v for k, v in tensors.items() if keep(k)})
        atomic_write(folder / name, blob)
        files[name] = {"sha256": sha256_bytes(blob), "bytes": len(blob)}
    blocks = sorted(int(k.split(".")[1]) for k in tensors if k.startswith("sketch.") and k[7:].isdigit())
    body = {**meta, "key": key, "settings": s.manifest(), "blocks": blocks, "files": files}
    body["checksum"] = sha256_bytes(canonical(body))
    atomic_write(folder / ENTRY_FILE, json.dumps(body, indent=1))
    return folder


@dataclass
class Entry:
    key: str
    meta: dict
    folder: Path

    @property
    def shape(self) -> dict:
        return self.meta["shape"]

    @property
    def digest(self) -> str:
        return self.meta["files"][ROWS_FILE]["sha256"]

    def tensors(self, file: str = ROWS_FILE, verify: bool = True) -> dict[str, torch.Tensor]:
        """The tensors of one of the entry's files; checks the file's SHA-256 first when ``verify``."""
        from safetensors.torch import load
        f = self.folder / file
        try:
            blob = f.read_bytes()
        except OSError as e:
            raise TracingError(f"index entry {self.key}: cannot read {f} ({e.strerror}); rebuild it with "
                               f"`python -m tracing.index add`") from None
        if verify and sha256_bytes(blob) != self.meta["files"][file]["sha256"]:
            raise TracingError(f"index entry {self.key}: {f} does not match its SHA-256 (corrupt or truncated); "
                               f"rebuild it with `python -m tracing.index add ... {self.meta['model']}`")
        try:
            t = load(blob)
        except Exception:  # noqa: BLE001 - any unreadable file is one clear line
            raise TracingError(f"index entry {self.key}: {f} is not a readable safetensors file; rebuild it") from None
        return t


def read_entry(folder: Path, s: Settings) -> Entry:
    """An entry's metadata, its own checksum and settings checked (the rows are checked on reading)."""
    f = Path(folder) / ENTRY_FILE
    key = Path(folder).name
    try:
        meta = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise TracingError(f"index entry {key}: {f} is missing or not valid JSON (corrupt or unfinished); "
                           f"rebuild it with `python -m tracing.index add`") from None
    body = {k: v for k, v in meta.items() if k != "checksum"} if isinstance(meta, dict) else {}
    if not body or meta.get("checksum") != sha256_bytes(canonical(body)):
        raise TracingError(f"index entry {key}: {f} does not match its checksum (corrupt); rebuild it")
    other = Settings.from_manifest(meta["settings"], str(f))
    if other != s:
        raise TracingError(f"index entry {key} was built with other settings ({other.differences(s)}); "
                           f"it cannot be compared with this index")
    return Entry(key, meta, Path(folder))
