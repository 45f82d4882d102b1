"""Text samples from a model (seeded sampling), saved as JSON that ``--dataset generated`` reads."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import generated_path
from .errors import TracingError
from .models import default_device, load_pretrained
from .fileio import atomic_write
from .provenance import scrub


def generate_samples(spec: str, num_samples: int = 10, max_new_tokens: int = 512, seed: int = 0,
                     temperature: float = 1.0, top_p: float = 0.95, device: str | None = None,
                     dtype: str = "auto", batch_size: int = 4, progress: bool = True) -> dict:
    """``num_samples`` unconditional samples (each starts from the BOS token)."""
    if num_samples < 1 or max_new_tokens < 1:
        raise TracingError("--num_samples and --max_new_tokens must be positive")
    device = device or default_device()
    ck, model = load_pretrained(spec, dtype=dtype, device=device)
    tok = ck.tokenizer()
    if tok is None:
        raise TracingError(f"{spec} has no tokenizer; generation needs one")
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if start is None:
        raise TracingError(f"the tokenizer of {spec} has neither a BOS nor an EOS token to start from")
    torch.manual_seed(seed)
    texts = []
    t0 = time.time()
    for b in tqdm(range(0, num_samples, batch_size), desc=f"generate {spec}", disable=not progress, leave=False):
        n = min(batch_size, num_samples - b)
        ids = torch.full((n, 1), start, dtype=torch.long, device=device)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=temperature,
                                 top_p=top_p, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else start)
        texts += tok.batch_decode(out[:, 1:], skip_special_tokens=True)
    return {"model": spec, "path": str(ck.path), "seed": seed, "max_new_tokens": max_new_tokens,
            "temperature": temperature, "top_p": top_p, "time": time.time() - t0,
            "samples": [{"text": t} for t in texts]}


def save_samples(samples: dict, out_dir: str | Path) -> Path:
    """Write the samples atomically to ``<out_dir>/<model slug>.json``."""
    p = generated_path(out_dir, samples["model"])
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TracingError(f"cannot create the folder {p.parent} for the samples ({e.strerror}); "
                           f"choose a writable --out_dir") from None
    return atomic_write(p, json.dumps(scrub(samples), indent=1))
