"""Degenerate inputs: zero-padded or non-finite rows, matched cosines, and what the record shows."""
import math

import numpy as np
import pytest
import torch

from helpers import finetuned, tiny_config, tiny_model

from tracing.align import match_pairs
from tracing.models import from_module
from tracing.options import Options
from tracing.stats import Context, get


def ctx(stat, ids=None, **kw):
    return Context(Options(stat=[stat], **kw), progress=False, tokens=(lambda: ids) if ids is not None else None)


def run(stat, base, ft, ids=None, **kw):
    return get(stat).fn(ctx(stat, ids, **kw), base, ft)


def test_cos_records_median_matched_cosine_per_layer():
    cfg = tiny_config("llama", L=2, d=32, h=64, V=96)
    base = from_module(tiny_model(cfg, seed=1))
    ft = from_module(finetuned(tiny_model(cfg, seed=1), seed=2, noise=0.2))
    res = run("cos", base, ft)
    for row in res.per_layer:
        U1 = base.get(base.arch.block_name(row["layer"], "up"))
        U2 = ft.get(ft.arch.block_name(row["layer"], "up"))
        m = match_pairs(U1, U2)
        direct = torch.nn.functional.cosine_similarity(U1[m.rows], U2[m.cols], dim=1)
        assert row["median_cos"] == pytest.approx(float(np.median(direct.numpy())), abs=1e-5)
        assert 0.5 < row["median_cos"] <= 1.0
    assert res.extra["median_cos"] == pytest.approx(np.mean([r["median_cos"] for r in res.per_layer]))
    indep = run("cos", base, from_module(tiny_model(cfg, seed=5)))
    assert indep.extra["median_cos"] < 0.5


def test_match_pairs_cosines_on_solver_and_shortcut_paths():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    for W2 in (B, A[torch.randperm(40, generator=g)]):  # solver path, then the argmax shortcut
        m = match_pairs(A, W2)
        assert np.array_equal(m.rows, np.arange(40)) and sorted(m.cols.tolist()) == list(range(40))
        direct = torch.nn.functional.cosine_similarity(A[m.rows], W2[m.cols], dim=1).numpy()
        assert np.allclose(m.cos, direct, atol=1e-5)
