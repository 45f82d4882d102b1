"""Mixtures of experts on the hub read by range requests: named tensors (routers, shared experts,
norms, one expert of a stacked tensor) read alone, and merge attribution (``--merges``) restricted to
a few tensors reading only those — against the real loopback hub (tests/hub_server.py) with the real
huggingface_hub client; every value equal to the local folder's."""
from __future__ import annotations

import copy

import pytest
import torch
from family_models import family_config, family_model, noisy
from test_remote import folders, hub  # noqa: F401 (fixtures)

from tracing.models import Checkpoint
from tracing.rows import header

GROUPS = ["norms", "routers", "shared"]


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """Tiny DeepSeek-V3 models (experts one tensor each on disk; 4 experts of h 32, a shared expert,
    a dense first block): a, b independent, m = (a + b) / 2 (a linear merge), f a fine-tune of a;
    and a Llama-4 model (experts stacked on disk)."""
    root = tmp_path_factory.mktemp("moe-hub")
    cfg = family_config("deepseek_v3", d=32, h=64, L=3, E=4)
    a, b = family_model(cfg, seed=1), family_model(cfg, seed=5)
    m = copy.deepcopy(a)
    with torch.no_grad():
        for (_, pm), pb in zip(m.state_dict().items(), b.state_dict().values()):
            if pm.is_floating_point():
                pm.copy_((pm + pb) / 2)
    out = {}
    for tag, model in (("a", a), ("b", b), ("m", m), ("f", noisy(a, seed=2))):
        model.save_pretrained(root / tag)
        out[tag] = root / tag
    family_model(family_config("llama4_text", d=32, h=64, L=2, E=4), seed=1).save_pretrained(root / "stacked")
    out["stacked"] = root / "stacked"
    return out


def served(server, repo) -> int:
    return sum(v for k, v in server.served.items() if k.startswith(repo + "/") and k.endswith(".safetensors"))


def stored_bytes(folder, names) -> int:
    """Header bytes of every weight file plus the bytes of the stored tensors ``names``."""
    total = 0
    for f in folder.glob("*.safetensors"):
        start, head = header(f)
        total += start + sum(int(m["data_offsets"][1]) - int(m["data_offsets"][0])
                             for k, m in head.items() if k in names)
    return total


def weights_size(folder) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def test_named_moe_tensors_read_alone(hub, moe):
    hub.add("org/moe-a", moe["a"])
    remote, local = Checkpoint("org/moe-a", remote=True), Checkpoint(moe["a"])
    assert remote.resolved.remote
    arch = local.arch
    names = [n for n in arch.names() if arch.role_of(n)[0] in ("router", "router_bias", "shared_up", "post_norm")]
    assert {arch.role_of(n)[0] for n in names} == {"router", "router_bias", "shared_up", "post_norm"}
    names.append(next(n for n in arch.names() if arch.role_of(n)[0] == "expert_down"))
    for n in names:
        assert torch.equal(remote.get(n), local.get(n)), n
    stored = {remote.backend._find(n)[0] for n in names}
    assert served(hub, "org/moe-a") == stored_bytes(moe["a"], stored)  # headers + exactly those tensors


def test_one_expert_of_a_stacked_tensor_reads_that_expert(hub, moe):
    hub.add("org/stacked", moe["stacked"])
    remote, local = Checkpoint("org/stacked", remote=True), Checkpoint(moe["stacked"])
    arch = local.arch
    experts = [n for n in arch.names() if arch.role_of(n)[0] in ("expert_up", "expert_down")
               and arch.ref(n).unit == (1, 2)]  # expert 2 of block 1
    assert len(experts) == 2 and all(remote.backend._find(n)[1] is not None for n in experts)  # parts of stacked tensors
    before = served(hub, "org/stacked")
    for n in experts:
        assert torch.equal(remote.get(n), local.get(n)), n
    one = served(hub, "org/stacked") - before
    stacked = {remote.backend._find(n)[0] for n in experts}
    whole = stored_bytes(moe["stacked"], stacked) - stored_bytes(moe["stacked"], set())
    E = remote.config.num_local_experts
    assert one <= 2 * whole / E  # each expert's part: its expert's slab (gate_up read once per role), not all E


def test_merge_check_by_ranges_reads_only_its_tensors(hub, moe):
    from tracing.lineage.merges import attribute, fit_merge, selected_names
    for tag in ("a", "b", "m", "f"):
        hub.add(f"org/moe-{tag}", moe[tag])
    fit = fit_merge("org/moe-m", ["org/moe-a", "org/moe-b"], tensors=GROUPS)
    local = fit_merge(str(moe["m"]), [str(moe["a"]), str(moe["b"])], tensors=GROUPS)
    assert fit.weights == local.weights and fit.per_block == local.per_block  # bit-identical
    assert fit.weights == pytest.approx([0.5, 0.5], abs=1e-6) and fit.tensors == GROUPS
    arch = Checkpoint(moe["a"]).arch
    names = selected_names(arch, GROUPS)
    assert {arch.role_of(n)[0] for n in names} >= {"router", "shared_up", "in_norm", "q_a_norm"}
    ck = Checkpoint(moe["a"])
    stored = {ck.backend._find(n)[0] for n in names}
    for tag in ("a", "b", "m"):
        n = served(hub, f"org/moe-{tag}")
        assert n == stored_bytes(moe[tag], stored) < 0.2 * weights_size(moe[tag]), tag  # shared experts: 1 of 5
    v = attribute("org/moe-m", ["org/moe-a", "org/moe-b"], tensors=GROUPS)
    assert v.is_merge and sorted(v.parents) == ["org/moe-a", "org/moe-b"]
    v = attribute("org/moe-f", ["org/moe-a", "org/moe-b"], tensors=GROUPS)
    assert not v.is_merge and v.parents == ["org/moe-a"]


def test_merge_tensor_groups_bad_name_is_one_line(moe):
    from tracing.errors import TracingError
    from tracing.lineage.merges import fit_merge
    with pytest.raises(TracingError, match="'routerz' is neither a tensor group") as e:
        fit_merge(str(moe["m"]), [str(moe["a"]), str(moe["b"])], tensors=["norms", "routerz"])
    assert "\n" not in str(e.value)
