"""Tiny random Llama-family models for tests (built in the tests, saved with save_pretrained)."""
from __future__ import annotations

import contextlib

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

KINDS = ("llama", "llama_bias", "mistral", "qwen2", "tied")


def tiny_config(kind: str = "llama", d: int = 64, h: int = 128, L: int = 3, V: int = 128, **kw):
    common = dict(vocab_size=V, hidden_size=d, intermediate_size=h, num_hidden_layers=L,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                  rms_norm_eps=1e-6)
    common.update(kw)
    if kind == "llama":
        return LlamaConfig(**common)
    if kind == "llama_bias":
        return LlamaConfig(attention_bias=True, mlp_bias=True, **common)
    if kind == "tied":
        return LlamaConfig(**{**common, "tie_word_embeddings": True})
    if kind == "mistral":
        return MistralConfig(**{**common, "num_key_value_heads": 2, "sliding_window": 16})
    if kind == "qwen2":
        return Qwen2Config(**{**common, "num_key_value_heads": 2})
    raise ValueError(kind)


def tiny_model(config, seed: int = 0, std: float = 0.05, norm_center: float = 1.0):
    """A random model whose norm gains (around ``norm_center``) and biases are non-trivial (so
    folding is really tested)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(norm_center + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def random_like(template, seed: int):
    """An independent random model shaped like the weight source ``template`` (same recipe as
    ``tiny_model``), held in memory: cheap enough for calibration loops over hundreds of pairs."""
    from tracing.models import DictSource
    g = torch.Generator().manual_seed(seed)
    sd = {n: (1 + 0.3 * torch.randn(t.shape, generator=g)) if n.endswith("norm.weight")
          else 0.05 * torch.randn(t.shape, generator=g) for n, t in template.state_dict().items()}
    return DictSource(sd, template.config, f"random{seed}")


@contextlib.contextmanager
def one_torch_thread():
    """Tiny matrices: one thread is far faster than several on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def finetuned(model, seed: int = 1, noise: float = 0.01):
    """A fine-tune-like copy: same weights plus small noise."""
    import copy
    ft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(noise * p.abs().mean() * torch.randn(p.shape, generator=g))
    return ft


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def rel_diff(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def random_ids(V, n=2, T=24, seed=0):
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(seed))


def save_trio(root) -> dict[str, str]:
    """Three tiny saved Llama models: a base, a fine-tune of it, and an independent one."""
    base = tiny_model(tiny_config(), seed=0)
    paths = {}
    for name, model in (("base", base), ("ft", finetuned(base, seed=1)), ("indep", tiny_model(tiny_config(), seed=7))):
        model.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def finish_last_to_first(monkeypatch, module, name: str, what: str = "block") -> set:
    """``module.name(ctx, a, b, ..., i, solvers)``, the work on block (or row of cells) ``i`` of ``a``,
    made to finish last to first when run in parallel (i = 0 waits until the last one is done); the
    names of the threads that ran it are recorded in the set returned."""
    import threading
    ran, last_done = set(), threading.Event()
    work = getattr(module, name)

    def wrapped(*args):
        a, i = args[1], args[-2]
        ran.add(threading.current_thread().name)
        if i == 0 and threading.current_thread() is not threading.main_thread():
            assert last_done.wait(60), f"the last {what} never ran while the first waited"
        out = work(*args)
        if i == a.L - 1:
            last_done.set()
        return out

    monkeypatch.setattr(module, name, wrapped)
    return ran


def buffer_spy(monkeypatch) -> list:
    """Each time the sampled experts grid keeps a block's rows (``SampledUnits._keep``): the number of
    live row buffers then, and whether the rows kept are a view of a shared buffer, appended to the
    list returned."""
    from tracing.stats import experts_sampled
    seen = []
    keep = experts_sampled.SampledUnits._keep

    def counting(self, t):
        out = keep(self, t)
        seen.append((experts_sampled.live_buffers(), out._base is not None))
        return out

    monkeypatch.setattr(experts_sampled.SampledUnits, "_keep", counting)
    return seen


def copy_with_nan(src, dst, name: str):
    """A copy of the model folder ``src`` at ``dst`` whose tensor ``name`` (in model.safetensors)
    holds one NaN."""
    from safetensors.torch import load_file, save_file
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    state = load_file(dst / "model.safetensors")
    state[name][3, 7] = float("nan")
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst
