"""Write any weight source (a quantized checkpoint, a transformed view, …) as a float Hugging Face
folder: config.json, safetensors shards and an index, and the tokenizer when given.  Tensors are
read and written one at a time, so a quantized model is dequantized without holding it whole."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import TracingError


def save_source(source, folder, dtype: torch.dtype = torch.float32, shard_bytes: int = 2 << 30,
                tokenizer=None, progress: bool = True) -> Path:
    """Write ``source`` to ``folder`` (which must not exist or be empty); returns the folder."""
    from safetensors.torch import save_file

    from ..models import config_for
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise TracingError(f"{folder} exists and is not empty; give a new folder to export into")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config_for(source.config, source.arch)
    cfg.dtype = str(dtype).removeprefix("torch.")
    cfg.save_pretrained(folder)
    names = source.names()
    current: dict[str, torch.Tensor] = {}
    size = 0
    tmp_files, weight_map = [], {}

    def flush():
        f = folder / f"model-{len(tmp_files) + 1:05d}.safetensors.part"
        save_file(current, str(f), metadata={"format": "pt"})
        tmp_files.append((f, list(current)))
        current.clear()

    for name in tqdm(names, desc=f"export {source.label}", leave=False, disable=not progress):
        t = source.get(name, dtype).contiguous()
        if size and size + t.numel() * t.element_size() > shard_bytes:
            flush()
            size = 0
        current[name] = t
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
    return folder
