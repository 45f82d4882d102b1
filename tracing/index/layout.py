"""An index's settings, manifest and files: what makes two entries comparable.

An index is a folder::

    DIR/manifest.json                 settings (seed, K, blocks, sketch width, ...), format and toolkit version
    DIR/entries/<reference>/rows.safetensors   the reference's sampled rows (see :mod:`.entry`)
    DIR/entries/<reference>/entry.json         model id, commit, digests, shape, SHA-256 of rows.safetensors
    DIR/failed/<reference>.json       the last error of a reference that could not be indexed (retried)

Every file is plain JSON or safetensors (no pickles) and written atomically; ``entry.json`` is
written last, so an entry without it is unfinished and ignored.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import TracingError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENTRIES = "entries"
FAILED = "failed"
PROJECTION_STREAM = 0x1D3E  # keeps the sketch's projection apart from the row draw


@dataclass(frozen=True)
class Settings:
    """What every entry of one index shares. At the defaults a 7B-shaped reference (d = 4096,
    h = 11008, V = 32000) takes 8 blocks × 128 rows × 4096 bf16 (8 MiB), their 256-wide sketch
    (0.5 MiB), 128 embedding columns over the first 2048 tokens (0.5 MiB) and their 256-wide sketch
    (64 KiB): about 9.1 MiB."""

    seed: int = 0
    rows: int = 128  # K: up_proj rows sampled per block (and embedding columns)
    blocks: int = 8  # blocks per model, evenly spaced from the first to the last
    sketch: int = 256  # width of the fixed random projection the screen matches on
    emb_tokens: int = 2048  # embedding columns are stored over the first this many token ids

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not isinstance(v, int) or v < (0 if k == "seed" else 1):
                raise TracingError(f"index setting {k} must be a {'non-negative' if k == 'seed' else 'positive'} "
                                   f"integer, got {v!r}")

    def manifest(self) -> dict:
        from .. import __version__
        return {"format_version": FORMAT_VERSION, "toolkit_version": __version__, **asdict(self),
                "statistic": "cos on sampled up_proj rows (sampled test, exact under the null)"}

    @classmethod
    def from_manifest(cls, m: dict, where: str) -> "Settings":
        if m.get("format_version") != FORMAT_VERSION:
            raise TracingError(f"{where}: index format version {m.get('format_version')!r}, this toolkit reads "
                               f"version {FORMAT_VERSION}; rebuild the index with this toolkit")
        try:
            return cls(**{k: m[k] for k in asdict(cls()).keys()})
        except KeyError as e:
            raise TracingError(f"{where}: manifest lacks the setting {e.args[0]}; rebuild the index") from None

    def differences(self, other: "Settings") -> str:
        a, b = asdict(self), asdict(other)
        return ", ".join(f"{k} {a[k]} vs {b[k]}" for k in a if a[k] != b[k])


def block_subset(L: int, n: int) -> list[int]:
    """``n`` blocks evenly spaced over ``0..L-1`` (all blocks when L ≤ n)."""
    return sorted({int(round(x)) for x in np.linspace(0, L - 1, min(n, L))})


def row_index(h: int, s: Settings) -> np.ndarray:
    """The K sampled units of a width-h MLP: the sampled test's own draw (``--rows K --seed``)."""
    from ..stats.base import sampled_rows
    return sampled_rows(h, min(s.rows, h), s.seed)


def projection(d: int, s: Settings):
    """The fixed random projection (d × sketch, float32) of one residual width, from the seed alone;
    None when d ≤ sketch (rows are then matched as they are)."""
    import torch
    if d <= s.sketch:
        return None
    rng = np.random.default_rng([PROJECTION_STREAM, s.seed, d])
    return torch.from_numpy(rng.standard_normal((d, s.sketch), dtype=np.float32) / np.float32(np.sqrt(s.sketch)))


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def read_manifest(root: Path) -> Settings:
    f = Path(root) / MANIFEST
    if not f.is_file():
        raise TracingError(f"{root} is not a reference index (no {MANIFEST}); build one with "
                           f"`python -m tracing.index build LIST.yaml --out {root}`")
    try:
        m = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TracingError(f"{f} is not valid JSON; restore it or rebuild the index") from None
    return Settings.from_manifest(m, str(f))


def open_or_create(root: Path, settings: Settings) -> Settings:
    """The index at ``root`` with ``settings``: created when new; refused (with the differing
    settings) when it exists with others."""
    from ..fileio import atomic_write, file_lock
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".manifest.lock"):
        if not (root / MANIFEST).is_file():
            atomic_write(root / MANIFEST, json.dumps(settings.manifest(), indent=1))
            return settings
    have = read_manifest(root)
    if have != settings:
        raise TracingError(f"{root} was built with other settings ({have.differences(settings)}); entries of "
                           f"other settings cannot be compared with it: use those settings or another --out")
    return have


def entry_dir(root: Path, key: str) -> Path:
    return Path(root) / ENTRIES / key
