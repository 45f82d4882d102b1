"""A vision-language wrapper on the hub (the loopback server of tests/hub_server.py, the real
huggingface_hub client) whose vision tower is in a shard of its own: a download fetches only the
shards holding tensors the language model reads, and reads as the local folder does; a plain sharded
model is downloaded whole, as before."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from family_models import family_config, family_model, noisy
from test_remote import hub  # noqa: F401  (the server holding this module's folders)
from test_remote import weight_bytes as served
from test_qwen35_wrapper import save_wrapped
from tracing.models import Checkpoint

LANGUAGE, VISION = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def reshard(folder):
    """The wrapper saved by transformers, rewritten as two shards: the language model (and lm_head),
    then the vision tower alone, with the index that lists both."""
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    parts = {LANGUAGE: {}, VISION: {}}
    for k, v in sd.items():
        parts[VISION if k.startswith("model.visual.") else LANGUAGE][k] = v
    assert parts[VISION] and parts[LANGUAGE]
    for f, tensors in parts.items():
        save_file(tensors, folder / f, metadata={"format": "pt"})
    weight_map = {k: f for f, tensors in parts.items() for k in tensors}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A sharded Qwen3.5 wrapper, a noisy copy of its language model saved as a text model, and a plain
    model saved by transformers in several shards."""
    root = tmp_path_factory.mktemp("hubwrapper")
    cfg = family_config("qwen3_5_text", d=32, h=64)
    text = family_model(cfg, seed=1)
    out = {"vlm": reshard(save_wrapped("qwen3_5", text, root / "vlm"))}
    noisy(text, seed=2).save_pretrained(root / "ft")
    out["ft"] = root / "ft"
    text.save_pretrained(root / "plain", max_shard_size="20KB")
    out["plain"] = root / "plain"
    assert len(list(out["plain"].glob("*.safetensors"))) > 2
    return out


def test_download_leaves_out_the_vision_only_shard(hub, folders):
    from test_frontier_families import run_stat
    local = Checkpoint(folders["vlm"])
    ck = Checkpoint("org/vlm")
    assert not ck.resolved.remote and ck.arch.wrapper == "qwen3_5"
    assert served(hub, "org/vlm") == {LANGUAGE: (folders["vlm"] / LANGUAGE).stat().st_size}
    assert (ck.path / LANGUAGE).is_file() and not (ck.path / VISION).exists()
    assert [f.name for f in ck.weight_files()] == [LANGUAGE]
    for name in ck.arch.names():
        assert torch.equal(ck.get(name), local.get(name)), name
    ft = Checkpoint(folders["ft"])
    for stat in ("cos", "l2"):
        a, b = run_stat(stat, ck, ft), run_stat(stat, local, ft)
        assert (a.statistic, a.log10_pvalue) == (b.statistic, b.log10_pvalue) and a.log10_pvalue <= -2, stat
    # the cache now holds every file the model reads: a sampled test reads it there, not by range requests
    n = len(hub.requests)
    again = Checkpoint("org/vlm", remote=True)
    assert not again.resolved.remote
    again.get_rows(again.arch.units(0)[0].up, [0, 5])
    assert not any(".safetensors" in p for _, p, _ in hub.requests[n:])


def test_range_reads_and_dry_run_leave_out_the_vision_only_shard(hub, folders):
    from tracing.options import Options
    from tracing.sources.cost import _size, dry_run_lines
    ck = Checkpoint("org/vlm", remote=True)
    assert ck.resolved.remote and ck.backend.total_bytes() == (folders["vlm"] / LANGUAGE).stat().st_size
    local = Checkpoint(folders["vlm"])
    up = ck.arch.units(1)[0].up
    assert torch.equal(ck.get_rows(up, [1, 7, 9]), local.get_rows(up, [1, 7, 9]))
    assert set(served(hub, "org/vlm")) == {LANGUAGE}
    size = (folders["vlm"] / LANGUAGE).stat().st_size
    line = dry_run_lines("org/vlm", str(folders["ft"]), Options(stat=["cos"]))[0]
    assert line.startswith(f"org/vlm: download {_size(size)} ("), line


def test_plain_sharded_model_is_downloaded_whole(hub, folders):
    files = {f.name: f.stat().st_size for f in folders["plain"].glob("*.safetensors")}
    ck = Checkpoint("org/plain")
    assert not ck.resolved.remote
    assert served(hub, "org/plain") == files
    assert sorted(f.name for f in ck.path.glob("*.safetensors")) == sorted(files)
    local = Checkpoint(folders["plain"])
    for name in ck.arch.names():
        assert torch.equal(ck.get(name), local.get(name)), name
