"""Opening checkpoints: real transformers files on disk, lazy per-tensor access, clear errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import tiny_config, tiny_model
from tracing.arch import arch_from_config
from tracing.errors import TracingError
from tracing.models import Checkpoint, load_module


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model(tiny_config("llama_bias", L=4), seed=7)
    root = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(root / "st", safe_serialization=True)
    model.save_pretrained(root / "sharded", safe_serialization=True, max_shard_size="60KB")
    # the same weights as pytorch_model*.bin shards (as several published checkpoints ship them)
    (root / "bin").mkdir()
    (root / "bin" / "config.json").write_text((root / "st" / "config.json").read_text())
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"pytorch_model-00001-of-00002.bin": keys[:half], "pytorch_model-00002-of-00002.bin": keys[half:]}
    weight_map = {}
    for fname, ks in shards.items():
        torch.save({k: sd[k] for k in ks}, root / "bin" / fname)
        weight_map.update({k: fname for k in ks})
    (root / "bin" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return model, root


def test_safetensors_and_bin_give_same_tensors(saved):
    model, root = saved
    st, sh, bn = Checkpoint(root / "st"), Checkpoint(root / "sharded"), Checkpoint(root / "bin")
    assert len(sh.weight_files()) > 2, "the sharded checkpoint should really be sharded"
    for name in st.names():
        ref = model.state_dict()[name].float()
        assert torch.equal(st.get(name), ref)
        assert torch.equal(sh.get(name), ref)
        assert torch.equal(bn.get(name), ref)


def test_arch_from_saved_config(saved):
    model, root = saved
    a = Checkpoint(root / "sharded").arch
    assert (a.L, a.d, a.h, a.V) == (4, 64, 128, 128)
    assert a.qkv_bias and a.o_bias and a.mlp_bias
    assert a.num_params() == sum(p.numel() for p in model.parameters())


def test_load_module_from_lazy_source(saved):
    model, root = saved
    loaded = load_module(Checkpoint(root / "sharded"))
    ids = torch.randint(0, 128, (1, 16))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)


def test_streaming_peak_rss_is_bounded(tmp_path):
    """A real measurement in a child process: reading every tensor of a ~100 MB sharded checkpoint
    one at a time raises peak RSS by far less than the checkpoint's size."""
    cfg = tiny_config("llama", d=256, h=1024, L=24, V=512)
    model = tiny_model(cfg, seed=0)
    model.save_pretrained(tmp_path / "big", safe_serialization=True, max_shard_size="10MB")
    size = sum(f.stat().st_size for f in (tmp_path / "big").glob("*.safetensors"))
    del model
    code = f"""
import resource, torch
from tracing.models import Checkpoint
ck = Checkpoint({str(tmp_path / 'big')!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = 0.0
for n in ck.names():
    s += float(ck.get(n).sum())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    grew = float(out.stdout.strip().splitlines()[-1])
    assert size > 90e6
    assert grew < size / 3, (grew, size)


def test_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TracingError, match="no config.json"):
        Checkpoint(tmp_path / "empty")
    (tmp_path / "noweights").mkdir()
    tiny_config("llama").save_pretrained(tmp_path / "noweights")
    with pytest.raises(TracingError, match="no weights"):
        Checkpoint(tmp_path / "noweights")
    with pytest.raises(TracingError, match="does not exist"):
        Checkpoint(str(tmp_path / "missing"))
    with pytest.raises(TracingError, match="supports"):
        arch_from_config({"model_type": "gpt2"})


def test_unreachable_hub_id_is_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TracingError) as e:
        Checkpoint("no-such-org/no-such-model")
    assert "cannot fetch" in str(e.value) and "\n" not in str(e.value)


def test_provenance_hashes_weight_files(saved, tmp_path, monkeypatch):
    import hashlib
    monkeypatch.setenv("TRACING_CACHE_DIR", str(tmp_path / "cache"))
    _, root = saved
    prov = Checkpoint(root / "sharded").provenance()
    assert prov["path"] == str((root / "sharded").resolve())
    files = {f["file"]: f for f in prov["files"]}
    assert len(files) == len(list((root / "sharded").glob("*.safetensors")))
    for name, entry in files.items():
        data = (root / "sharded" / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    assert (tmp_path / "cache" / "sha256.json").is_file()  # remembered for the next run
    again = Checkpoint(root / "sharded").provenance()
    assert again["files"] == prov["files"]
