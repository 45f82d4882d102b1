"""A float export (``tracing.sources.export.save_source``) is a folder transformers loads as it is:
families whose tensors are stored fused or stacked (Phi-3 ``qkv_proj`` / ``gate_up_proj``, GPT-NeoX
``query_key_value``, gpt-oss and Llama 4 stacked experts, Gemma 4 experts) are written under their
stored names and layouts, and ``AutoModelForCausalLM.from_pretrained`` of the export computes the
logits of the source model — of its dequantized weights for a quantized source (MXFP4 gpt-oss)."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from family_models import family_config, family_model, logits, random_ids, rel_diff
from quant_writers import write_mxfp4_gpt_oss
from tracing.errors import TracingError
from tracing.models import Checkpoint, load_module
from tracing.sources.export import save_source

GEMMA4_MOE = dict(h=32, enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=16)
CASES = [("phi3", {}), ("gpt_neox", {}), ("gpt_oss", dict(h=128)), ("llama4_text", {}),
         ("gemma4_text", GEMMA4_MOE), ("qwen3_moe", {})]


def loaded(folder):
    """transformers' own load of ``folder``; every tensor it holds was read from the folder."""
    model, info = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def stored_names(folder) -> set[str]:
    from safetensors import safe_open
    out = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            out |= set(h.keys())
    return out


@pytest.mark.parametrize("family,kw", CASES, ids=[c[0] for c in CASES])
def test_export_loads_in_transformers(family, kw, tmp_path):
    model = family_model(family_config(family, **kw), seed=1)
    model.save_pretrained(tmp_path / "src")
    out = save_source(Checkpoint(str(tmp_path / "src")), tmp_path / "float", progress=False)
    assert not any("#" in n for n in stored_names(out))
    ids = random_ids(model.config.vocab_size)
    assert rel_diff(logits(model, ids), logits(loaded(out), ids)) <= 1e-5


def test_sharded_export_keeps_fused_tensors_whole(tmp_path):
    """Shards split between tensors, never inside a re-fused one; the index maps every stored name."""
    model = family_model(family_config("gpt_oss", h=128), seed=1)
    model.save_pretrained(tmp_path / "src")
    out = save_source(Checkpoint(str(tmp_path / "src")), tmp_path / "float", shard_bytes=40_000, progress=False)
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) > 2 and set(weight_map) == stored_names(out) == stored_names(tmp_path / "src")
    ids = random_ids(model.config.vocab_size)
    assert rel_diff(logits(model, ids), logits(loaded(out), ids)) <= 1e-5


def test_mxfp4_export_loads_dequantized(tmp_path):
    """An MXFP4 gpt-oss exported as float: transformers' plain load computes what the dequantized weights compute."""
    model = family_model(family_config("gpt_oss", h=128), seed=1)
    model.save_pretrained(tmp_path / "src")
    mx = Checkpoint(str(write_mxfp4_gpt_oss(tmp_path / "src", tmp_path / "mx")))
    out = save_source(mx, tmp_path / "float", progress=False)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert stored_names(out) == stored_names(tmp_path / "src")
    ids = random_ids(model.config.vocab_size)
    want = logits(load_module(mx), ids)
    assert rel_diff(want, logits(loaded(out), ids)) <= 1e-5
    assert rel_diff(logits(model, ids), want) > 1e-4  # the quantization is visible: the comparison can fail


@pytest.mark.parametrize("family", ["gpt_oss", "llama4_text"])
def test_gguf_export_restacks_split_experts(family, tmp_path):
    """A GGUF whose experts llama.cpp's converter split per projection is exported with them stacked again."""
    from test_gguf_families import CONVERTED, write_converted
    model = family_model(family_config(family, **dict(CASES)[family]), seed=1)
    model.save_pretrained(tmp_path / "src")
    g = Checkpoint(str(write_converted(tmp_path / "src", tmp_path / "gguf", CONVERTED[family])))
    assert g.backend.format == "gguf"
    out = save_source(g, tmp_path / "float", progress=False)
    ids = random_ids(model.config.vocab_size)
    assert rel_diff(logits(model, ids), logits(loaded(out), ids)) <= 1e-5


def test_vision_language_export_is_its_language_model(tmp_path):
    """A Llama 4 vision-language checkpoint (its language model under ``language_model.``) is exported as
    the language model alone, experts stacked, loading as a causal language model."""
    from test_frontier_families import _save_hub_layout, _wrapped
    vlm, text = _wrapped("llama4", seed=61)
    _save_hub_layout(vlm, "llama4", tmp_path / "vlm")
    out = save_source(Checkpoint(str(tmp_path / "vlm")), tmp_path / "float", progress=False)
    ids = random_ids(text.config.vocab_size)
    assert rel_diff(logits(text, ids), logits(loaded(out), ids)) <= 1e-5


# A failed export leaves nothing behind: no ``.part`` shard, no renamed shard, no config.json.

@pytest.fixture(scope="module")
def small_src(tmp_path_factory):
    from helpers import tiny_config, tiny_model
    folder = tmp_path_factory.mktemp("export_src") / "src"
    tiny_model(tiny_config(d=32, h=256, L=2, V=96), seed=3).save_pretrained(folder)
    return folder


class _FailsAt:
    """A source whose ``get`` fails at its ``n``-th tensor (after earlier shards were written)."""

    def __init__(self, source, n):
        self.source, self.n, self.calls = source, n, 0

    def __getattr__(self, name):
        return getattr(self.source, name)

    def get(self, name, dtype):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("read error")
        return self.source.get(name, dtype)


def test_failed_read_leaves_no_files(small_src, tmp_path):
    src = _FailsAt(Checkpoint(str(small_src)), n=len(Checkpoint(str(small_src)).names()))
    with pytest.raises(RuntimeError, match="read error"):
        save_source(src, tmp_path / "out", shard_bytes=10_000, progress=False)
    assert not (tmp_path / "out").exists()


def test_full_disk_on_a_later_shard_leaves_no_files(small_src, tmp_path):
    """A real write error (the file size limit, as a full disk gives it) while writing a later shard:
    the shards written before it are removed as well, and a folder that existed is left empty."""
    import resource
    import signal
    whole = save_source(Checkpoint(str(small_src)), tmp_path / "whole", shard_bytes=10_000, progress=False)
    sizes = [f.stat().st_size for f in sorted(whole.glob("model-*.safetensors"))]
    assert len(sizes) > 2 and sizes[0] < max(sizes)
    (tmp_path / "out").mkdir()
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes) - 1, old_limit[1]))
    try:
        with pytest.raises(Exception) as err:
            save_source(Checkpoint(str(small_src)), tmp_path / "out", shard_bytes=10_000, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert err.type is TracingError and "model-0000" in str(err.value) and "File too large" in str(err.value), err.value
    assert list((tmp_path / "out").iterdir()) == []


def test_files_that_cannot_be_removed_are_named(small_src, tmp_path, monkeypatch):
    """When the clean-up itself fails, the error line names what is left, so it can be deleted by hand."""
    from pathlib import Path
    unlink = Path.unlink

    def refuse_parts(self, *a, **k):
        if self.name.endswith(".part"):
            raise PermissionError(13, "Permission denied", str(self))
        return unlink(self, *a, **k)
    monkeypatch.setattr(Path, "unlink", refuse_parts)
    src = _FailsAt(Checkpoint(str(small_src)), n=len(Checkpoint(str(small_src)).names()))
    with pytest.raises(TracingError, match=r"could not be removed: .*model-00001\.safetensors\.part.*delete them by hand"):
        save_source(src, tmp_path / "out", shard_bytes=10_000, progress=False)
    assert {f.suffix for f in (tmp_path / "out").iterdir()} == {".part"}  # the rest was removed
