"""Write any weight source (a quantized checkpoint, a transformed view, …) as a float Hugging Face
folder: config.json, safetensors shards and an index, and the tokenizer when given.  Tensors are
read and written one at a time, so a quantized model is dequantized without holding it whole.

Tensors are written under their stored names and layouts, so that transformers' ``from_pretrained``
loads the folder: the roles of a fused or stacked tensor (Phi-3 ``qkv_proj``, GPT-NeoX
``query_key_value``, gpt-oss / Llama 4 / Gemma 4 experts, ...) are put back into their places in it,
as the architecture adapter describes them (the first store of each :class:`~tracing.arch.layout.TensorRef`);
a fused tensor is held until its last role is read."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..arch.layout import place
from ..errors import TracingError


class _Refuse:
    """Stored tensors from logical ones: an unfused tensor as it is, a fused one once all its roles are in."""

    def __init__(self, arch, names, cfg, dtype):
        self.arch, self.cfg, self.dtype = arch, cfg, dtype
        self.left: dict[str, int] = {}  # stored name of a fused tensor -> roles still to read
        for name in names:
            stored, index = arch.ref(name).stores[0]
            if index is not None:
                self.left[stored] = self.left.get(stored, 0) + 1
        self.parts: dict[str, torch.Tensor] = {}
        self._shapes = None

    def shape(self, stored: str) -> torch.Size:
        """A fused tensor's shape, from transformers' module for the config (built on the meta device)."""
        if self._shapes is None:
            from transformers import AutoModelForCausalLM
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(self.cfg)
            self._shapes = {k: v.shape for k, v in model.state_dict().items()}
        if stored not in self._shapes:
            raise TracingError(f"cannot export {stored}: transformers' {self.cfg.model_type} model has no such tensor")
        return self._shapes[stored]

    def add(self, name: str, t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """The stored tensors complete once logical tensor ``name`` is in."""
        stored, index = self.arch.ref(name).stores[0]
        if index is None:
            return [(stored, t)]
        if stored not in self.parts:
            self.parts[stored] = torch.empty(self.shape(stored), dtype=t.dtype)
        place(self.parts[stored], index, t)
        self.left[stored] -= 1
        return [(stored, self.parts.pop(stored))] if not self.left[stored] else []


def save_source(source, folder, dtype: torch.dtype = torch.float32, shard_bytes: int = 2 << 30,
                tokenizer=None, progress: bool = True) -> Path:
    """Write ``source`` to ``folder`` (which must not exist or be empty); returns the folder. When the
    export fails (a read error, a full disk, an interrupt) everything it wrote is removed again, and the
    folder too when it created it: no ``.part`` shard or partial copy is left to be taken for a model."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise TracingError(f"{folder} exists and is not empty; give a new folder to export into")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _write(source, folder, dtype, shard_bytes, tokenizer, progress)
    except BaseException as e:
        left = _remove_written(folder, created)
        cause = e.__cause__ if isinstance(e, _WriteError) else e
        what = f"failed writing {e.path.name}" if isinstance(e, _WriteError) else "failed"
        if left:
            raise TracingError(f"export to {folder} {what} ({type(cause).__name__}: {cause}) and these files could not be "
                               f"removed: {', '.join(str(f) for f in left)}; delete them by hand") from cause
        if isinstance(cause, OSError) or cause is not e:
            raise TracingError(f"export to {folder} {what} ({cause}); nothing was left there: free space on the disk "
                               f"or export to another folder") from cause
        raise
    return folder


class _WriteError(Exception):
    """A shard that could not be written (the error it met is its ``__cause__``)."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


def _remove_written(folder: Path, created: bool) -> list[Path]:
    """Remove what a failed export wrote (the folder was new or empty); the paths that could not be removed."""
    import shutil
    left = []
    for f in list(folder.iterdir()) if folder.is_dir() else []:
        try:
            shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()
        except OSError:
            left.append(f)
    if created and not left:
        try:
            folder.rmdir()
        except OSError:
            pass
    return left


def _write(source, folder: Path, dtype, shard_bytes, tokenizer, progress):
    from safetensors.torch import save_file

    from ..models import config_for
    cfg = config_for(source.config, source.arch)
    cfg.dtype = str(dtype).removeprefix("torch.")
    cfg.save_pretrained(folder)
    names = source.names()
    current: dict[str, torch.Tensor] = {}
    size = 0
    tmp_files, weight_map = [], {}

    def flush():
        f = folder / f"model-{len(tmp_files) + 1:05d}.safetensors.part"
        try:
            save_file(current, str(f), metadata={"format": "pt"})
        except Exception as e:
            raise _WriteError(f) from e
        tmp_files.append((f, list(current)))
        current.clear()

    refuse = _Refuse(source.arch, names, cfg, dtype)
    for name in tqdm(names, desc=f"export {source.label}", leave=False, disable=not progress):
        for stored, t in refuse.add(name, source.get(name, dtype)):
            t = t.contiguous()
            if size and size + t.numel() * t.element_size() > shard_bytes:
                flush()
                size = 0
            current[stored] = t
            size += t.numel() * t.element_size()
        source.release()
    flush()
    n = len(tmp_files)
    for k, (f, keys) in enumerate(tmp_files, 1):
        final = folder / ("model.safetensors" if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors")
        f.rename(final)
        weight_map.update({key: final.name for key in keys})
    if n > 1:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
