"""The block map's correspondence is a claim: made only for a significant pair, from cells that
survive Holm over the grid at the verdict level ("no block correspondence (pair not significant)"
otherwise, in the summary, the record and the report)."""
import math

import numpy as np
from scipy import stats as sps

from tests.helpers import tiny_config, tiny_model
from tracing import compare_models
from tracing import correspondence as claims

# independent 24 × 32-block pairs (tiny_model seeds 100 + k and 500 + k); k = 26 and 46 have a
# cell with p < 1e-4 while the pair's Bonferroni p-value is above 0.01
LOW_CELL = (26, 46)


def _pair(k: int, L1: int = 24, L2: int = 32):
    a = tiny_model(tiny_config(L=L1, d=32, h=32, V=64), seed=100 + k)
    b = tiny_model(tiny_config(L=L2, d=32, h=32, V=64), seed=500 + k)
    return a, b


def test_independent_pair_with_a_low_cell_claims_no_correspondence(tmp_path):
    for k in LOW_CELL:
        res = compare_models(*_pair(k), stat="cos", save=tmp_path / f"pair{k}.p")
        grid = np.array(res["per_pair"])
        assert np.nanmin(grid) < -4 and res.log10_pvalue > -2  # the situation: a low cell, pair not significant
        assert res.verdict == "not significant"
        assert res["correspondence"] == [] and res["matched"] == 0
        assert res["correspondence_note"] == claims.NOT_SIGNIFICANT == "no block correspondence (pair not significant)"
        assert "correspondence (θ₁ block → θ₂ block): no block correspondence (pair not significant)" in res.summary()
        assert "→" not in res.summary().split("correspondence (θ₁ block → θ₂ block):")[1]


def test_report_figure_says_no_correspondence(tmp_path):
    from tracing.report import write_report
    from tracing.report.figures import blockmap_data
    folder = tmp_path / "results"
    folder.mkdir()
    compare_models(*_pair(LOW_CELL[0]), stat="cos", save=folder / "indep_cos.p")
    report = write_report(folder)
    text = report.read_text()
    assert (report.parent / "blockmap.png").stat().st_size > 0
    assert "(24×32 blocks, 0 matched): no block correspondence (pair not significant)" in text
    import pickle
    rec = pickle.load(open(folder / "indep_cos.p", "rb"))
    rec["correspondence"] = [[0, 0, -4.5]]  # a record written before the rule: the report re-derives the claim
    [(_v, _a, _b, _grid, corr, why, matched)] = blockmap_data({"x": rec})
    assert corr == [] and matched == 0 and why == claims.NOT_SIGNIFICANT


def test_claims_only_from_cells_surviving_holm():
    rng = np.random.default_rng(0)
    grid = np.log10(rng.uniform(0.01, 1, size=(6, 5)))
    grid[1, 0] = -12.0  # survives: 30 · 1e-12
    grid[2, 1] = -4.5   # Holm's second step: 29 · 10^-4.5 = 9.2e-4 ≤ 0.01 → survives
    grid[3, 2] = -2.8   # Holm's third step: 28 · 10^-2.8 = 0.044 > 0.01 → not claimed
    grid[4, 3] = np.nan
    corr = claims.correspondence(grid, 0.01)
    assert [(i, j) for i, j, _ in corr] == [(1, 0), (2, 1)]
    # at a stricter level the −4.5 cell no longer survives the correction
    assert [(i, j) for i, j, _ in claims.correspondence(grid, 1e-4)] == [(1, 0)]
    # a non-significant grid: nothing, whatever its smallest cell
    flat = np.full((24, 32), -0.5)
    flat[3, 7] = -4.5
    assert claims.overall_log10(flat) > -2 and claims.correspondence(flat, 0.01) == []
    assert claims.note(flat, 0.01, []) == claims.NOT_SIGNIFICANT
    # NaN cells count as tests (p = 1), as in the overall Bonferroni bound
    gap = np.full((10, 10), np.nan)
    gap[0, 0] = -3.5  # 100 · 10^-3.5 > 0.01: not significant although it is the only p-value
    assert math.isclose(claims.overall_log10(gap), -1.5) and claims.correspondence(gap, 0.01) == []


def test_independent_pairs_rarely_claim_and_claims_are_significant():
    """30 independent pairs of different depth (12 × 16 blocks): a correspondence appears only for a
    significant pair, so no more often than the level (0.01) explains."""
    claimed = 0
    for k in range(20, 50):
        res = compare_models(*_pair(k, 12, 16), stat="cos")
        if res["correspondence"]:
            claimed += 1
            assert res.verdict == "dependent" and res["correspondence_note"] is None
        else:
            assert res["correspondence_note"] == claims.NOT_SIGNIFICANT
    assert sps.binomtest(claimed, 30, 0.01, alternative="greater").pvalue > 0.01
