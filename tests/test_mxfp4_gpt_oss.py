"""gpt-oss in MXFP4 as openai/gpt-oss-* ships it: each block's stacked experts stored transposed as
``mlp.experts.gate_up_proj_blocks`` [E, 2h, d/32, 16] / ``…_scales`` [E, 2h, d/32] (and ``down_proj``
likewise), everything else in bfloat16.

A tiny gpt-oss (non-square expert matrices, so that a transposition cannot pass unnoticed) is
written in that layout: every tensor is within MXFP4's rounding of its bfloat16 source and equal to
what transformers' own MXFP4 loader dequantizes; the dequantized model computes what transformers'
dequantized model computes; planted permutations are recovered; ``cos`` and ``match`` are significant on a
quantized fine-tune against its float base, not against an independent model, and uniform over 30
independent pairs; a sampled row of an expert reads only that expert's rows of codes and scales."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from family_models import random_ids, save_trio
from quant_writers import write_mxfp4_gpt_oss
from test_formats import SIG, ReadLog, _mxfp4_bound
from test_frontier_families import run_stat
from test_quantized_families import calibration_ks, cos
from tracing.align import align
from tracing.models import Checkpoint
from tracing.transforms import Permuted, random_permutations

SHAPE = dict(d=32, h=128)  # experts of width 64: gate_up [E, 32, 128], down [E, 64, 32]


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    """``{"base" | "ft" | "indep": bfloat16 folder}`` and the same models in MXFP4 (``"mx-<tag>"``)."""
    root = tmp_path_factory.mktemp("gpt-oss-mxfp4")
    _, paths = save_trio(root, "gpt_oss", **SHAPE)
    for tag in ("base", "ft", "indep"):
        paths[f"mx-{tag}"] = write_mxfp4_gpt_oss(paths[tag], root / f"mx-{tag}")
    return paths


def _expert_matrix(name: str) -> bool:
    return "#expert_" in name and "_bias#" not in name


def test_every_tensor_within_mxfp4_rounding(gpt_oss):
    ref, ck = Checkpoint(str(gpt_oss["base"])), Checkpoint(str(gpt_oss["mx-base"]))
    assert ck.quantized is not None and ck.arch.names() == ref.arch.names()
    quantized = 0
    for n in ref.names():
        a, b = ref.get(n), ck.get(n)
        assert b.dtype == torch.float32 and b.shape == a.shape, n
        if not _expert_matrix(n):
            assert torch.equal(b, a.bfloat16().float()), n  # stored as it is, in bfloat16
            continue
        quantized += 1
        assert not torch.equal(a, b), n
        assert bool(((a - b).abs() <= _mxfp4_bound(a)).all()), (n, (a - b).abs().max())
    assert quantized == 3 * ck.arch.n_experts * ck.arch.L


def test_provenance_names_the_format(gpt_oss):
    from tracing.api import run_pair
    from tracing.options import Options
    rec = run_pair(str(gpt_oss["base"]), str(gpt_oss["mx-ft"]), Options(stat=["cos"]), progress=False)[0]
    assert rec["log10_pvalue"] < -6
    prov = rec["models"]["ft"]["quantization"]
    L = Checkpoint(str(gpt_oss["base"])).arch.L
    assert prov["format"] == "mxfp4" and f"mxfp4 e2m1 e8m0/32 ×{2 * L}" in prov["types"].split(", "), prov
    assert "E8M0" in prov["undone"]


def test_dequantized_model_computes_what_transformers_dequantized_model_computes(gpt_oss):
    """Function preservation of the dequantization: the model built from our dequantized tensors and
    transformers' own MXFP4 loader (dequantizing on CPU) hold the same tensors and give the same logits."""
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from tracing.models import load_module
    ck = Checkpoint(str(gpt_oss["mx-ft"]))
    ours = load_module(ck)
    theirs = AutoModelForCausalLM.from_pretrained(gpt_oss["mx-ft"], dtype=torch.float32,
                                                  quantization_config=Mxfp4Config(dequantize=True))
    mine = ours.state_dict()
    for k, v in theirs.state_dict().items():
        assert torch.equal(mine[k], v.float()), k
    ids = random_ids(ck.arch.V, T=16)
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    assert torch.allclose(a, b, rtol=0, atol=1e-6), (a - b).abs().max()


def test_planted_permutation_recovered_and_power(gpt_oss):
    base_q, ft_q = Checkpoint(str(gpt_oss["mx-base"])), Checkpoint(str(gpt_oss["mx-ft"]))
    pi_e, pi_i = random_permutations(ft_q.arch, seed=11)
    al = align(base_q, Permuted(ft_q, pi_e, pi_i), progress=False)
    assert np.array_equal(al.pi_e, torch.argsort(pi_e).numpy())
    for key, p in pi_i.items():
        assert np.array_equal(al.pi_i[key], torch.argsort(p).numpy()), key
    base, indep_q = Checkpoint(str(gpt_oss["base"])), Checkpoint(str(gpt_oss["mx-indep"]))
    assert cos(base, ft_q).log10_pvalue < -6
    assert cos(base, indep_q).log10_pvalue > SIG
    tokens = lambda: random_ids(base.arch.V, n=4, T=32, seed=9)  # noqa: E731
    assert run_stat("match", base, ft_q, tokens=tokens).log10_pvalue < -6  # the forward pass of the dequantized model
    assert run_stat("match", base, indep_q, tokens=tokens).log10_pvalue > SIG


def test_cos_calibrated_on_independent_pairs(tmp_path):
    """30 independent pairs (a bfloat16 gpt-oss against an independent one in MXFP4): uniform p-values."""
    assert calibration_ks(tmp_path, "gpt_oss", 1100,
                          lambda f, k: str(write_mxfp4_gpt_oss(f, tmp_path / f"q{k}"))) > 0.01


def test_expert_rows_read_alone(gpt_oss, monkeypatch):
    """A sampled row of one expert reads that expert's rows of codes and scales, nothing whole."""
    ck = Checkpoint(str(gpt_oss["mx-ft"]))
    names = [n for n in ck.names() if _expert_matrix(n)]
    idx = {n: np.sort(np.random.default_rng(3).choice(ck.arch.ref(n).shape[0], 7, replace=False)) for n in names}
    whole = {n: ck.get(n)[torch.from_numpy(idx[n])] for n in names}
    ck.quantized._last = None
    log = ReadLog(monkeypatch)
    for n in names:
        assert torch.equal(ck.get_rows(n, idx[n]), whole[n]), n
    assert log.whole == []
    assert len(log.rows) == 2 * len(names)  # codes and scales, each its rows only
    assert all(n == 7 for _, n in log.rows), log.rows
    assert all(k.endswith(("_blocks", "_scales")) for k, _ in log.rows)
    assert math.prod(ck.quantized.meta(log.rows[0][0]).shape[:2]) > 7


def test_an_expert_read_whole_decodes_that_expert_only(gpt_oss, monkeypatch):
    """Reading every expert's gate, up and down in turn decodes each expert's rows of blocks once
    (gate and up share them), never a whole stack."""
    ck = Checkpoint(str(gpt_oss["mx-ft"]))
    E, h, d = ck.arch.n_experts, ck.arch.h_expert, ck.arch.d
    log = ReadLog(monkeypatch)
    for u in ck.arch.units(0):
        for n in (u.gate, u.up, u.down):
            ck.get(n)
    assert log.whole == []
    spans = [n for k, n in log.rows if k.endswith("_blocks")]
    assert spans == [2 * h, d] * E, spans
