"""Training and evaluating one demo model (single-threaded, deterministic)."""
from __future__ import annotations

import math
import os
import pathlib

from ..errors import TracingError
from .paths import SLICE_FILES
from .recipes import BATCH_SIZE, BOS_ID, EOS_ID, MODEL_CONFIG, PAD_ID
from .tokenizer import _pack


def _model_config(vocab_size: int):
    import torch
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=vocab_size, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        **MODEL_CONFIG,
    )
    cfg.dtype = torch.float32
    return cfg


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _train(model, blocks, steps: int, lr: float, warmup: int, seed: int, on_step=None) -> list[float]:
    """AdamW on random batches of ``blocks`` (epochs of a seeded permutation); returns the step losses."""
    import torch

    model.train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    order = torch.empty(0, dtype=torch.long)
    losses = []
    for step in range(steps):
        if order.numel() < BATCH_SIZE:  # next epoch (the tail of the previous one is used first)
            order = torch.cat([order, torch.randperm(blocks.shape[0], generator=gen)])
        idx, order = order[:BATCH_SIZE], order[BATCH_SIZE:]
        batch = blocks[idx]
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_step is not None and ((step + 1) % 5 == 0 or step + 1 == steps):
            on_step(step + 1, losses[-1])
    model.eval()
    return losses


def eval_loss(model, blocks, batch_size: int = 32) -> float:
    """Mean token cross-entropy (nats) of ``model`` on token ``blocks`` [N, T] (equal-length blocks)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, blocks.shape[0], batch_size):
            batch = blocks[i : i + batch_size]
            logits = model(input_ids=batch).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += batch[:, 1:].numel()
    return total / count


def eval_blocks(root=None, tokenizer=None):
    """The held-out evaluation text of a built zoo as token blocks [N, BLOCK_SIZE] (the ``final_eval_loss`` data)."""
    from tokenizers import Tokenizer

    from .build import ensure_built

    root = ensure_built(root)
    raw = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json")) if tokenizer is None else tokenizer
    docs = (root / "corpus" / SLICE_FILES["eval"]).read_text(encoding="utf-8").splitlines()
    return _pack(raw, docs)


def _relative_change(parent, child) -> float:
    import torch

    num = den = 0.0
    p = dict(parent.named_parameters())
    for k, v in child.named_parameters():
        num += float(torch.sum((v.detach() - p[k].detach()) ** 2))
        den += float(torch.sum(p[k].detach() ** 2))
    return math.sqrt(num / den)


def _save_model(model, folder: pathlib.Path) -> None:
    import inspect

    import torch

    model = model.to(torch.float32)
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:  # transformers 4.x
        kwargs["safe_serialization"] = True
    model.save_pretrained(folder, **kwargs)
    if not (folder / "model.safetensors").exists():
        raise TracingError(f"saving demo model to {folder} did not write model.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    for f in folder.iterdir():  # some writers create 0600 files; a shared cache should follow the umask
        f.chmod(0o666 & ~mask)


