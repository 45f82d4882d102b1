"""Quantized hub models read by HTTP range requests (FP8, compressed-tensors, bitsandbytes, MXFP4,
GPTQ): the real loopback hub (tests/hub_server.py), the real huggingface_hub client, folders written
by the formats' writers (tests/quant_writers.py); every read equal to the local folder's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from quant_writers import write_bnb, write_compressed, write_fp8, write_gptq, write_mxfp4
from test_remote import K, folders, hub, sample, weight_bytes  # noqa: F401 (fixtures)

from tracing.models import Checkpoint
from tracing.rows import DTYPES, header

INT4_GROUP = dict(num_bits=4, type="int", symmetric=False, strategy="group", group_size=16)
WRITERS = {
    "fp8": lambda src, out: write_fp8(src, out, block=(16, 16)),
    "ct-pack": lambda src, out: write_compressed(src, out, "pack-quantized", **INT4_GROUP),
    "bnb-nf4": lambda src, out: write_bnb(src, out, "nf4"),
    "bnb-int8": lambda src, out: write_bnb(src, out, "int8"),
    "mxfp4": write_mxfp4,
    "gptq": lambda src, out: write_gptq(src, out, act_order=False),
}
#: formats whose rows lie alone in the file: a sampled row reads its row and its scale rows only
ROWS_ALONE = ("fp8", "ct-pack", "bnb-nf4", "bnb-int8", "mxfp4")
UP = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(2)]


@pytest.fixture(scope="module")
def quantized(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized-hub")
    return {fmt: write(folders["base"], root / fmt) for fmt, write in WRITERS.items()}


def _nbytes(meta: dict) -> int:
    return int(meta["data_offsets"][1]) - int(meta["data_offsets"][0])


def budget(folder, rows: int) -> int:
    """Headers, ``rows`` rows (merged runs at most doubling them) of the codes of every up_proj
    layer, every other part of those layers (scales, zero points) and tensors under 4 kB (a
    format's small metadata tensors) whole: an upper bound that does not use the reader's plan."""
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        start, head = header(f)
        total += start
        for key, m in head.items():
            if key == "__metadata__":
                continue
            n = _nbytes(m)
            if ".mlp.up_proj." in key and m["dtype"] in DTYPES and m["shape"][0] == 512:  # the codes
                total += min(n, 2 * rows * n // m["shape"][0])
            elif ".mlp.up_proj" in key or n < 4096:
                total += n
    return total


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_sampled_rows_by_ranges_equal_local_within_budget(hub, quantized, fmt):
    q = quantized[fmt]
    hub.add(f"org/q-{fmt}", q)
    remote, local = Checkpoint(f"org/q-{fmt}", remote=True), Checkpoint(q)
    assert remote.resolved.remote and not any(remote.path.glob("*.safetensors"))
    assert remote.backend.format == local.backend.format and remote.backend.quantized
    assert remote.backend.tensor_types() == local.backend.tensor_types()
    idx = sample()
    planned = remote.backend.header_bytes() + sum(remote.backend.planned_bytes(t, idx) for t in UP)
    for t in UP:
        a, b = remote.get_rows(t, idx), local.get_rows(t, idx)
        assert a.dtype == b.dtype and torch.equal(a, b), t
    served = sum(weight_bytes(hub, f"org/q-{fmt}").values())
    assert served == planned  # the dry run's computation is what was sent
    size = sum(f.stat().st_size for f in q.glob("*.safetensors"))
    if fmt in ROWS_ALONE:
        assert served <= budget(q, K), (served, budget(q, K))
        assert served < 0.1 * size
    else:  # GPTQ packs a weight row across qweight's columns: the up layers' parts, nothing else
        assert served <= budget(q, 512) < 0.5 * size


@pytest.mark.parametrize("fmt", ["fp8", "ct-pack", "gptq"])
def test_named_tensors_by_ranges_equal_local(hub, quantized, fmt):
    hub.add(f"org/q-{fmt}", quantized[fmt])
    remote, local = Checkpoint(f"org/q-{fmt}", remote=True), Checkpoint(quantized[fmt])
    for t in ("model.norm.weight", "model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert torch.equal(remote.get(t), local.get(t)), t
    before = sum(weight_bytes(hub, f"org/q-{fmt}").values())
    want = remote.backend.planned_bytes("model.layers.1.input_layernorm.weight")
    remote.get("model.layers.1.input_layernorm.weight")
    assert sum(weight_bytes(hub, f"org/q-{fmt}").values()) - before == want == 64 * 2  # d bf16 values


def test_fp8_pair_record_equals_local_and_says_range_read(hub, folders, quantized, tmp_path):
    from tracing.api import run_pair
    from tracing.sources.cost import _size, dry_run_lines
    fp8ft = write_fp8(folders["ft"], tmp_path / "ft-fp8")
    hub.add("org/q-fp8", quantized["fp8"])
    hub.add("org/ft-fp8", fp8ft)
    from tracing.options import Options
    o = Options(stat=["cos"], rows=K)
    lines = dry_run_lines("org/q-fp8", "org/ft-fp8", o)
    rec = run_pair("org/q-fp8", "org/ft-fp8", o, progress=False)[0]
    loc = run_pair(str(quantized["fp8"]), str(fp8ft), o, progress=False)[0]
    assert rec["log10_pvalue"] == loc["log10_pvalue"] < -5 and rec["per_layer"] == loc["per_layer"]
    for side, line in zip(("base", "ft"), lines):
        m = rec["models"][side]
        assert m["quantization"]["format"] == "fp8"
        read = sum(f["bytes_read"] for f in m["files"])
        assert all(f["read"] == "range-read; digest from the hub, not re-hashed" for f in m["files"])
        assert f"range reads of {_size(read)}" in line, (line, read)


def test_unknown_quantization_is_one_line(hub, folders, tmp_path):
    import json
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(quantized_dir := folders["base"], bad)
    cfg = json.loads((quantized_dir / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "hqq"}
    (bad / "config.json").write_text(json.dumps(cfg))
    hub.add("org/bad", bad)
    from tracing.errors import TracingError
    with pytest.raises(TracingError, match="quant_method 'hqq' is not supported") as e:
        Checkpoint("org/bad", remote=True)
    assert "\n" not in str(e.value)
    assert not weight_bytes(hub, "org/bad")  # refused from the config, before any weight byte


def test_sampled_indices_are_sorted_distinct(hub, quantized):
    """FP8 rows of one scale block and of neighbouring blocks, the first and the last row."""
    hub.add("org/q-fp8", quantized["fp8"])
    remote, local = Checkpoint("org/q-fp8", remote=True), Checkpoint(quantized["fp8"])
    idx = np.array([0, 1, 15, 16, 17, 40, 255, 256, 511])
    assert torch.equal(remote.get_rows(UP[1], idx), local.get_rows(UP[1], idx))


def test_gpt_oss_stacked_mxfp4_expert_rows_by_ranges(hub, tmp_path):
    """gpt-oss's release layout (every expert of a block stacked in one MXFP4 tensor): a sampled row of one
    expert is read from the hub as that expert's rows of blocks and scales, equal to the local read."""
    from family_models import save_trio
    from quant_writers import write_mxfp4_gpt_oss
    _, paths = save_trio(tmp_path, "gpt_oss", d=32, h=128)
    local = write_mxfp4_gpt_oss(paths["ft"], tmp_path / "mx-ft")
    hub.add("org/gpt-oss-mx", local)
    remote, here = Checkpoint("org/gpt-oss-mx", remote=True), Checkpoint(str(local))
    assert remote.resolved.remote and not any(remote.path.glob("*.safetensors"))
    names = [n for n in here.names() if "#expert_" in n and "_bias#" not in n]
    assert names
    hub.served.clear()
    for n in names:
        idx = np.sort(np.random.default_rng(3).choice(here.arch.ref(n).shape[0], 5, replace=False))
        assert torch.equal(remote.get_rows(n, idx), here.get_rows(n, idx)), n
    sent = sum(weight_bytes(hub, "org/gpt-oss-mx").values())
    stacked = sum(_nbytes(m) for f in local.glob("*.safetensors") for k, m in header(f)[1].items()
                  if k.endswith(("_blocks", "_scales")))
    assert 0 < sent < stacked / 4, (sent, stacked)
