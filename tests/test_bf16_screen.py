"""The bf16 screen of MATCH (:func:`tracing.cosine.screened_argmax`): a row-wise argmax read from a
bf16 product is used only when its margin certifies it, and then the matching is the one the
float32 product gives. Error bound, planted permutations, refusals, and the statistics unchanged
(calibration, power, identical p-values) with the screen on and off."""
import numpy as np
import pytest
import torch
from scipy import stats as sps

from helpers import finetuned, random_like, tiny_config, tiny_model

import tracing
from tracing import align, cosine
from tracing.align import _shortcut_pairs, match, match_layers
from tracing.cosine import bf16_cosines, cosine_matrix, screen_margin, screened_argmax
from tracing.models import DictSource, from_module


@pytest.fixture
def screen(monkeypatch):
    """The screen tried on every product (tiny ones too, whatever this CPU); returns a list that gets
    True for each product the screen settled and False for each it left to float32."""
    monkeypatch.setattr(cosine, "SCREEN_MIN_WORK", 0)
    monkeypatch.setattr(cosine, "native_bf16", lambda: True)
    settled = []
    real = align.screened_argmax

    def spy(*a, **k):
        got = real(*a, **k)
        settled.append(got is not None)
        return got
    monkeypatch.setattr(align, "screened_argmax", spy)
    return settled


@pytest.fixture
def no_screen(monkeypatch):
    monkeypatch.setattr(cosine, "SCREEN_MIN_WORK", float("inf"))


def _related(n, m, d, seed, noise=0.05, dtype=torch.bfloat16):
    """W₁ [n, d] and W₂ [m, d]: W₂'s rows are W₁'s (plus noise, in a random order) and m - n new rows;
    ``perm[i]``: the row of W₂ that row i of W₁ became."""
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(n, d, generator=g)
    rows = torch.cat([W1 + noise * torch.randn(n, d, generator=g), torch.randn(m - n, d, generator=g)])
    order = torch.randperm(m, generator=g)
    perm = torch.argsort(order)[:n]
    return W1.to(dtype), rows[order].to(dtype), perm.numpy()


@pytest.mark.parametrize("d", [8, 64, 300, 2048])
@pytest.mark.parametrize("kind", ["bf16", "float32", "float16"])
def test_bf16_cosines_within_a_quarter_of_the_margin(d, kind):
    """Every cosine of the bf16 product is within screen_margin/4 of the exact (float64) cosine of
    the rows as given: related rows (cosines near 1), independent ones, and rows of mixed scales."""
    g = torch.Generator().manual_seed(d)
    dtype = {"bf16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[kind]
    A = torch.randn(96, d, generator=g) * torch.logspace(-3, 3, 96)[:, None]
    A[::7, : d // 2] *= 1e-4  # rows with a few large and many small values
    scale = A[:48].norm(dim=1, keepdim=True) / d ** 0.5
    B = torch.cat([A[:48] + 0.01 * scale * torch.randn(48, d, generator=g), torch.randn(48, d, generator=g) * 1e-2])
    A, B = A.to(dtype), B.to(dtype)
    exact_in = 2 if kind == "bf16" else 0
    ra = A.to(torch.float32).norm(dim=1).reciprocal()
    rb = B.to(torch.float32).norm(dim=1).reciprocal()
    got = bf16_cosines(A.to(torch.bfloat16), B.to(torch.bfloat16), ra, rb).double()
    A64, B64 = A.double(), B.double()
    exact = (A64 @ B64.T) / A64.norm(dim=1)[:, None] / B64.norm(dim=1)[None, :]
    assert (got - exact).abs().max().item() <= screen_margin(d, exact_in) / 4
    assert exact.diagonal()[:48].min() > 0.9  # the related rows are there


@pytest.mark.parametrize("n,m", [(64, 64), (40, 70), (70, 40)])
@pytest.mark.parametrize("absolute", [False, True])
def test_planted_permutation_recovered_as_the_float32_argmax(screen, n, m, absolute):
    """Screened pairs = the float32 argmax shortcut's pairs (rows, columns), cosines within float32
    rounding of that matrix's entries; the planted permutation is recovered."""
    k = min(n, m)
    if n <= m:
        W1, W2, perm = _related(n, m, 256, seed=n + m)
    else:
        W2, W1, back = _related(m, n, 256, seed=n + m)  # W₁ has the extra rows
    if absolute:
        W2 = W2 * torch.where(torch.arange(W2.shape[0]) % 3 == 0, -1.0, 1.0)[:, None].to(W2.dtype)
    res = align._screened_pairs(W1, W2, (None, None), absolute)
    assert res is not None and screen == [True]
    C = cosine_matrix(W1, W2)
    ref = _shortcut_pairs(C.abs() if absolute else C)
    assert np.array_equal(res.rows, ref.rows) and np.array_equal(res.cols, ref.cols)
    assert np.abs(res.cos - ref.cos).max() < 1e-6 and res.shape == ref.shape == (n, m) and res.n_pairs == k
    if n <= m:
        assert np.array_equal(res.cols, perm)
    else:
        assert np.array_equal(res.rows, back[np.argsort(back)]) and np.array_equal(res.rows[res.cols.argsort()], back)


def test_unsettled_rows_are_left_to_float32(screen):
    """A row whose two best columns lie within the margin, two rows with one best column, rows of
    a norm outside the guarded range, a zero row, a NaN: no screened answer."""
    W1, W2, _ = _related(64, 64, 128, seed=1)
    tau = screen_margin(128)
    near = W2.clone()
    near[1] = (W2[0].float() + 0.5 * tau * W2[0].float().norm() / 128 ** 0.5).to(torch.bfloat16)  # twin of row 0
    assert screened_argmax(W1, near) is None
    same = W1.clone()
    same[5] = same[4]  # two rows, one best column
    assert screened_argmax(same, W2) is None
    for bad in (1e-20, 1e20, 0.0, float("nan")):
        X = W1.clone()
        X[3] = X[3] * bad if bad == bad else bad
        assert screened_argmax(X, W2) is None
    assert screened_argmax(W1, W2) is not None


def test_the_probe_stops_early_on_independent_rows(screen, monkeypatch):
    """Independent rows: the first SCREEN_PROBE rows decide, the rest is never multiplied."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(512, 4096, generator=g).bfloat16(), torch.randn(512, 4096, generator=g).bfloat16()
    shapes = []
    real = cosine.bf16_cosines
    monkeypatch.setattr(cosine, "bf16_cosines", lambda a, *r: (shapes.append(tuple(a.shape)), real(a, *r))[1])
    assert screened_argmax(A, B) is None
    assert shapes == [(cosine.SCREEN_PROBE, 4096)]


def test_match_and_match_layers_give_the_same_matchings_with_and_without_the_screen(monkeypatch):
    """Related layers settled by the screen, independent ones by float32: matchings identical to
    the run without the screen, cosines within float32 rounding."""
    layers = {i: _related(48, 48, 200, seed=10 + i) for i in range(3)}
    g = torch.Generator().manual_seed(5)
    layers[3] = (torch.randn(48, 200, generator=g).bfloat16(), torch.randn(48, 200, generator=g).bfloat16(), None)

    def run():
        got = match_layers(range(4), lambda i: layers[i][:2], pairs=True)
        return got, {i: match(*layers[i][:2]) for i in range(4)}

    monkeypatch.setattr(cosine, "SCREEN_MIN_WORK", float("inf"))
    off, off_pi = run()
    monkeypatch.setattr(cosine, "SCREEN_MIN_WORK", 0)
    monkeypatch.setattr(cosine, "native_bf16", lambda: True)
    settled = []
    real = align.screened_argmax
    monkeypatch.setattr(align, "screened_argmax", lambda *a, **k: (lambda r: (settled.append(r is not None), r)[1])(real(*a, **k)))
    on, on_pi = run()
    assert settled == [True, True, True, False] * 2
    for i in range(4):
        assert np.array_equal(on[i].rows, off[i].rows) and np.array_equal(on[i].cols, off[i].cols)
        assert np.abs(on[i].cos - off[i].cos).max() < 1e-6
        assert np.array_equal(on_pi[i], off_pi[i])
    assert all(np.array_equal(on_pi[i], layers[i][2]) for i in range(3))


def _bf16(src):
    """The same weights rounded to bfloat16 (as published checkpoints store them)."""
    return DictSource({k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}, src.config, src.label)


def _independent(n):
    template = from_module(tiny_model(tiny_config(L=2, d=64, h=128, V=96), seed=0))
    for k in range(n):
        yield _bf16(random_like(template, 3000 + 2 * k)), _bf16(random_like(template, 3001 + 2 * k))


def test_sampled_cos_calibrated_and_identical_with_the_screen(screen, monkeypatch):
    """30 independent bf16 pairs, cos --rows 64 with the screen tried on every block: p-values
    uniform (KS), and bit-identical to the runs without the screen."""
    on, off = [], []
    for a, b in _independent(30):
        on.append(tracing.compare_models(a, b, stat="cos", rows=64).log10_pvalue)
    assert len(screen) == 60
    monkeypatch.setattr(cosine, "SCREEN_MIN_WORK", float("inf"))
    for a, b in _independent(30):
        off.append(tracing.compare_models(a, b, stat="cos", rows=64).log10_pvalue)
    assert on == off
    assert sps.kstest([10 ** p for p in on], "uniform").pvalue > 0.01


@pytest.mark.parametrize("stat", ["cos", "match"])
def test_dependent_pairs_settled_by_the_screen_with_the_same_pvalue(screen, monkeypatch, stat):
    """A fine-tune of a bf16 model: every block settled by the screen, the p-value significant and
    equal to the one without the screen."""
    base = tiny_model(tiny_config(L=3, d=64, h=128, V=96), seed=4)
    a, b = _bf16(from_module(base)), _bf16(from_module(finetuned(base, seed=2, noise=0.05)))
    kw = {"rows": 96} if stat == "cos" else {"dataset": "random"}
    on = tracing.compare_models(a, b, stat=stat, **kw)
    assert screen and all(screen)
    monkeypatch.setattr(cosine, "SCREEN_MIN_WORK", float("inf"))
    off = tracing.compare_models(a, b, stat=stat, **kw)
    assert on.log10_pvalue == off.log10_pvalue < -10
    assert on.extra.get("median_cos") == pytest.approx(off.extra.get("median_cos"), abs=1e-6)


def test_checkpoint_rows_stay_bf16_into_the_screen(tmp_path, screen, monkeypatch):
    """A saved bf16 model's sampled rows reach MATCH as bfloat16 (no float32 round trip), and the
    saved pair's result is the same as without the screen."""
    base = tiny_model(tiny_config(L=2, d=64, h=128, V=96), seed=8)
    for name, m in (("base", base), ("ft", finetuned(base, seed=3, noise=0.05))):
        m.to(torch.bfloat16).save_pretrained(tmp_path / name)
    seen = []
    real = cosine._bf16_exact
    monkeypatch.setattr(cosine, "_bf16_exact", lambda X: (seen.append(X.dtype), real(X))[1])
    on = tracing.compare(str(tmp_path / "base"), str(tmp_path / "ft"), stat="cos", rows=96)
    assert seen and set(seen) == {torch.bfloat16} and all(screen)
    monkeypatch.setattr(cosine, "SCREEN_MIN_WORK", float("inf"))
    off = tracing.compare(str(tmp_path / "base"), str(tmp_path / "ft"), stat="cos", rows=96)
    assert on.log10_pvalue == off.log10_pvalue < -10


def test_a_torch_without_the_cpu_probes_is_not_screened(monkeypatch):
    """An older torch without ``torch.cpu``'s bf16 probes: the screen is never tried (no error)."""
    import torch.cpu as tc
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(tc, name, raising=False)
    assert cosine.native_bf16() is False
    monkeypatch.setattr(cosine, "SCREEN_MIN_WORK", 0)
    W1, W2, _ = _related(64, 64, 128, seed=2)
    assert screened_argmax(W1, W2) is None
