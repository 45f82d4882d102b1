"""Alignment recovers a planted permutation exactly on a fine-tune-like pair."""
import numpy as np
import pytest
import torch

from helpers import KINDS, finetuned, logits, random_ids, rel_diff, tiny_config, tiny_model
from tracing.align import align, argmax_shortcut, match, match_layers, solve, negated_cost
from tracing.models import from_module, load_module
from tracing.transforms import Permuted, random_permutations


@pytest.mark.parametrize("kind", KINDS)
def test_planted_permutation_recovered_exactly(kind):
    cfg = tiny_config(kind, L=3)
    base = tiny_model(cfg, seed=1)
    ft = finetuned(base, seed=2, noise=0.05)
    src = from_module(ft)
    pi_e, pi_i = random_permutations(src.arch, seed=11)
    hidden = Permuted(src, pi_e, pi_i)
    al = align(from_module(base), hidden, progress=False)
    inv = lambda p: torch.argsort(p).numpy()
    assert np.array_equal(al.pi_e, inv(pi_e))
    for i in range(cfg.num_hidden_layers):
        assert np.array_equal(al.pi_i[i], inv(pi_i[i]))
    aligned = load_module(al.apply(hidden))
    ids = random_ids(cfg.vocab_size)
    assert rel_diff(logits(ft, ids), logits(aligned, ids)) <= 1e-5


def test_match_agrees_with_scipy_maximize():
    from scipy.optimize import linear_sum_assignment
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(50, 16, generator=g), torch.randn(50, 16, generator=g)
    ours = match(A, B)
    C = (A / A.norm(dim=1, keepdim=True)) @ (B / B.norm(dim=1, keepdim=True)).T
    _, ref = linear_sum_assignment(C.numpy().astype(np.float64), maximize=True)
    assert C[np.arange(50), ours].sum().item() == pytest.approx(C[np.arange(50), ref].sum().item(), abs=1e-5)


def test_argmax_shortcut_only_when_injective():
    C = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    assert argmax_shortcut(C) is None
    assert list(solve(negated_cost(C))) == [1, 0] or list(solve(negated_cost(C))) == [0, 1]
    C2 = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert list(argmax_shortcut(C2)) == [1, 0]


def test_rectangular_match_assigns_every_row_of_narrower_side():
    g = torch.Generator().manual_seed(1)
    B = torch.randn(40, 8, generator=g)
    A = B[torch.randperm(40, generator=g)[:25]] + 0.01 * torch.randn(25, 8, generator=g)
    p = match(A, B)
    assert len(set(p.tolist())) == 25
    assert torch.allclose(A, B[p], atol=0.1)


def test_match_layers_parallel_equals_serial():
    g = torch.Generator().manual_seed(2)
    mats = {i: (torch.randn(60, 10, generator=g), torch.randn(60, 10, generator=g)) for i in range(6)}
    par = match_layers(range(6), lambda i: mats[i], workers=2)
    ser = {i: match(*mats[i]) for i in range(6)}
    assert all(np.array_equal(par[i], ser[i]) for i in range(6))


def test_device_option_reaches_alignment_and_weight_statistics(monkeypatch):
    """``--device cpu`` on a machine with a GPU: the cosine products of alignment and of the weight
    statistics run where the options say, not on a device they pick themselves. (No GPU exists
    here: one is announced, so any product sent to it fails.)"""
    import tracing

    cfg = tiny_config(L=2)
    base = tiny_model(cfg, seed=0)
    ft = finetuned(base, seed=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for stat in ("cos", "emb"):
        res = tracing.compare_models(base, ft, stat=stat, device="cpu", align=True)
        assert res.verdict == "dependent"


def test_one_device_policy_in_force_within_its_scope(monkeypatch):
    from tracing import machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine.compute_device() == machine.default_device() == "cpu"
    with machine.use_device("cuda:1"):
        assert machine.compute_device() == "cuda:1"
        with machine.use_device(None):
            assert machine.compute_device() == "cpu"
        assert machine.compute_device() == "cuda:1"
    assert machine.compute_device() == "cpu"
    assert machine.cores() >= 1 and machine.available_bytes() > 0 and machine.total_memory_gb() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_norms_computed_once_give_the_same_cosines(dtype):
    """The matching reuses the row norms it judged the rows by: the cosine matrix is bit for bit
    the one computed from scratch (with and without dropped rows)."""
    from tracing.align import _prepare
    from tracing.cosine import cosine_matrix
    g = torch.Generator().manual_seed(3)
    W1, W2 = torch.randn(48, 64, generator=g).to(dtype), torch.randn(48, 64, generator=g).to(dtype) * 3
    _, C, _, index = _prepare(W1, W2, True)
    assert index[0] is None and index[1] is None
    assert torch.equal(C, cosine_matrix(W1, W2))
    W2[5] = 0  # dropped: the kept rows' norms are computed for the matrix
    _, C, _, index = _prepare(W1, W2, True)
    assert index[3:] == (0, 1) and torch.equal(C, cosine_matrix(W1, W2[torch.from_numpy(index[1])]))
