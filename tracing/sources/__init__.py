"""Weight formats: Hugging Face folders (safetensors or ``.bin``), GGUF (llama.cpp) files and GPTQ /
AWQ folders, each a *backend* (:class:`~tracing.sources.base.Backend`) behind
:class:`tracing.models.Checkpoint`.

:func:`open_backend` asks the classes of :data:`BACKENDS` in turn which one claims a resolved model
id. A backend knows which tensors the files hold and hands out one at a time as float (dequantized
to float32 for quantized formats; never the whole model); its config is read without a tensor.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from ..errors import TracingError
from ..specs import Resolved
from .base import Backend, type_summary  # noqa: F401 (re-exported for the format modules)

#: the name formats have subclassed so far (kept for them)
QuantizedBackend = Backend


#: the weight formats, asked in this order which one claims a model; a new format is one module
#: of this package and one line here (before the plain folder, which claims any folder)
BACKENDS: list = ["ggufremote.RemoteGGUFBackend", "remote_quantized.RemoteQuantizedBackend", "remote.RemoteBackend",
                  "gguf.GGUFBackend", "gptq.PackedInt4Backend", "layered.LayeredBackend", "folder.FolderBackend"]


def backend_classes() -> list[type[Backend]]:
    """The registered backend classes: an entry of :data:`BACKENDS` is ``"<module>.<Class>"`` of this
    package (imported on first use) or a class itself."""
    out = []
    for entry in BACKENDS:
        if isinstance(entry, str):
            module, _, name = entry.rpartition(".")
            entry = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        out.append(entry)
    return out


def open_backend(resolved: Resolved) -> Backend:
    """The backend of the first format that claims the resolved model id."""
    for cls in backend_classes():
        if cls.claims(resolved):
            return cls.open(resolved)
    raise TracingError(f"{resolved.spec}: no weight format recognises {resolved.path}; give a Hugging Face model "
                       f"folder (config.json + weights), a GPTQ or AWQ folder, or a .gguf file")


def quantization_config(folder: Path) -> dict | None:
    """``quantization_config`` of a folder's config.json, when it names a quantization method."""
    f = folder / "config.json"
    if not f.is_file():
        return None
    try:
        q = json.loads(f.read_text()).get("quantization_config")
    except (json.JSONDecodeError, AttributeError):
        return None
    if isinstance(q, dict) and q.get("quant_method"):
        return q
    return None


def find_gguf(path: Path, file: str | None, label: str) -> Path | None:
    """The GGUF file a spec names: ``file`` inside ``path``, ``path`` itself, or the only
    ``*.gguf`` of a folder without other weights."""
    if file is not None:
        f = path / file
        if not f.is_file():
            have = sorted(p.name for p in path.glob("*.gguf"))
            raise TracingError(f"{label}: no file {file} in {path}"
                               + (f"; it holds {', '.join(have)}" if have else ""))
        return f
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")):
        return None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) > 1:
        raise TracingError(f"{label} holds several GGUF files ({', '.join(p.name for p in ggufs)}); "
                           f"pick one with {label}:<file>.gguf")
    return ggufs[0] if ggufs else None


def detect(path: Path, file: str | None, label: str) -> Backend | None:
    """The quantized backend for a model folder or file, or None for plain float checkpoints."""
    backend = open_backend(Resolved(spec=label, path=path, file=file))
    return backend if backend.quantized else None
