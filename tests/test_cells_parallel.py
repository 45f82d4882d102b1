"""The sampled block map of two mixtures of experts of different depth (``cos --rows K``) with several
rows of cells matched at once (``--workers``): the same record as one cell after the other (every
cell's log10 p and statistic, the pairings, the correspondence, the overall p) for a derived and an
independent pair, whatever order the rows finish in, with θ₂'s blocks kept or read by every cell
(``--mem_budget_gb``); an error in one cell is the one-line error with no result file; the rows live
in one buffer per model and block, all given back."""
import functools
import gc
import json
import threading

import pytest
import torch

from family_models import family_config, family_model, noisy
from helpers import buffer_spy, copy_with_nan, finish_last_to_first
from test_blockmap_sampled import blocks_of
from test_experts_sampled import _experts_moved
from test_frontier_families import main, run_stat
from tracing.models import Checkpoint
from tracing.errors import TracingError
from tracing.stats import experts_sampled

L, D, E, K = 4, 64, 8, 16  # a dense first block, then 3 MoE blocks of 8 routed experts and a shared one
KEPT = [0, 3, 1]  # θ₂: θ₁'s blocks 0, 3 and 1 (block 2 dropped, two MoE blocks swapped)
TINY = 1e-6  # GB: too little to keep θ₂'s blocks, so each cell reads its own
BUDGETS = {"kept": None, "per-cell": TINY}


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """Folders: a base, a noisy copy of its blocks ``KEPT`` with reordered experts in bfloat16 (rows kept
    as read), an independent model of that shape in float32 (rows compacted)."""
    root = tmp_path_factory.mktemp("cells-parallel")
    c = family_config("deepseek_v3", d=D, h=D, E=E, L=L)
    base = family_model(c, seed=71)
    moved, _ = _experts_moved(noisy(base, seed=72, noise=0.3), seed=73)
    base.to(torch.bfloat16).save_pretrained(root / "base")
    blocks_of(moved, KEPT).to(torch.bfloat16).save_pretrained(root / "ft")
    blocks_of(family_model(c, seed=74), KEPT).save_pretrained(root / "indep")
    return root


def _record(res) -> str:
    """Everything the block map records, bit for bit (NaN cells included)."""
    return json.dumps({"log10_pvalue": res.log10_pvalue, "statistic": res.statistic, "extra": res.extra},
                      sort_keys=True)


@pytest.fixture()
def out_of_order(monkeypatch):
    """Rows run in parallel finish last to first (row 0 waits for the last row), and the threads that
    ran them are recorded."""
    return finish_last_to_first(monkeypatch, experts_sampled, "_cell_row", "row")


@pytest.mark.parametrize("other", ["ft", "indep"])
def test_parallel_cells_equal_the_serial_cells(trio, other, out_of_order):
    a, b = Checkpoint(trio / "base"), Checkpoint(trio / other)
    threads = torch.get_num_threads()
    serial = None
    for budget in BUDGETS.values():
        out_of_order.clear()
        one = _record(run_stat("cos", a, b, rows=K, workers=1, mem_budget_gb=budget))
        assert out_of_order == {threading.main_thread().name}
        serial = serial or one
        assert one == serial  # θ₂'s blocks kept or read by every cell: the same record
        for workers in (2, 3):
            out_of_order.clear()
            assert _record(run_stat("cos", a, b, rows=K, workers=workers, mem_budget_gb=budget)) == serial
            assert len(out_of_order) > 1 and threading.main_thread().name not in out_of_order
    assert torch.get_num_threads() == threads  # torch's threads are given back
    rec = json.loads(serial)["extra"]
    assert rec["shape"] == [L, len(KEPT)]
    # one dense cell and every pair of MoE blocks; a MoE cell pairs the 8 experts and the shared one
    assert sum(n > 0 for row in rec["per_pair_n"] for n in row) == 1 + (L - 1) * (len(KEPT) - 1)
    assert rec["per_pair_n"][0][0] == 1 and rec["per_pair_n"][3][1] == E + 1
    if other == "ft":  # the noisy copy: its blocks found, the experts' order recovered in its MoE cells
        assert [(i, j) for i, j, _ in rec["correspondence"]] == [(0, 0), (3, 1), (1, 2)]
        assert json.loads(serial)["log10_pvalue"] < -20
        assert set(rec["expert_matching"]) == {"3,1", "1,2"}
    else:
        assert rec["correspondence"] == [] and json.loads(serial)["log10_pvalue"] > -2


@pytest.fixture()
def reads(monkeypatch) -> list:
    """Every read of sampled rows from a weight file: ``(folder name, tensor, indices)``."""
    out = []
    read = Checkpoint.get_rows_stored

    def counting(self, name, index, dtype=torch.float32):
        out.append((self.path.name, name, tuple(int(i) for i in index)))
        return read(self, name, index, dtype)

    monkeypatch.setattr(Checkpoint, "get_rows_stored", counting)
    return out


def test_theta2_blocks_read_once_when_kept(trio, reads):
    """Kept: every sampled tensor of θ₂ read once, whatever the workers; per cell: once per row of θ₁'s
    blocks of its kind. θ₁'s rows are read once either way."""
    a, b = Checkpoint(trio / "base"), Checkpoint(trio / "ft")
    for workers in (1, 2):
        for mode, budget in BUDGETS.items():
            reads.clear()
            run_stat("cos", a, b, rows=K, workers=workers, mem_budget_gb=budget)
            base = [r for r in reads if r[0] == "base"]
            ft = [r for r in reads if r[0] == "ft"]
            assert len(base) == len(set(base)) == 1 + (L - 1) * (E + 1)
            counts = {r: ft.count(r) for r in ft}
            assert len(counts) == len(KEPT) * (E + 1) - E
            if mode == "kept":
                assert set(counts.values()) == {1}, (workers, counts)
            else:  # the dense block by the one dense row, each MoE block's by the 3 MoE rows
                assert sorted(set(counts.values())) == [1, L - 1], (workers, counts)


def test_buffers_hold_a_block_and_are_given_back(trio, monkeypatch):
    """Each block's rows live in one buffer per model: θ₂'s kept blocks and a block of θ₁ per worker,
    or two buffers per worker when each cell reads its own; none is left once the map is done."""
    seen = buffer_spy(monkeypatch)
    a, b = Checkpoint(trio / "base"), Checkpoint(trio / "ft")
    for workers in (1, 2):
        for mode, budget in BUDGETS.items():
            seen.clear()
            run_stat("cos", a, b, rows=K, workers=workers, mem_budget_gb=budget)
            gc.collect()
            assert experts_sampled.live_buffers() == 0
            assert all(in_buffer for _, in_buffer in seen)  # every MLP's rows a slot of its block's buffer
            most = max(n for n, _ in seen)
            assert 2 <= most <= (len(KEPT) + workers if mode == "kept" else 2 * workers), (mode, workers, most)


def test_workers_and_keeping_follow_the_budget(trio):
    """Default workers: as many rows as the budget holds (one block of each model per row), at most the
    cores; θ₂'s blocks kept only when they fit beside the rows in flight."""
    from tracing.machine import cores
    from tracing.options import Options
    from tracing.stats.base import Context
    a, b = Checkpoint(trio / "base").arch, Checkpoint(trio / "ft").arch
    row = 2 * (E + 1) * K * D * 4  # the widest block of each model (8 experts, a shared one), float32
    theta2 = (1 + 2 * (E + 1)) * K * D * 4  # θ₂'s dense block and two MoE blocks

    def decide(gb, workers=None):
        return experts_sampled.cell_workers(Context(Options(stat=["cos"], rows=K, workers=workers,
                                                            mem_budget_gb=gb), progress=False), a, b)

    assert decide(row / 2 ** 30) == (1, False)
    assert decide((row / 2 + theta2) / 2 ** 30) == (1, True)
    assert decide(TINY, workers=3) == (3, False)
    assert decide(100.0) == (cores(), True)


@pytest.mark.parametrize("mode", list(BUDGETS))
def test_error_in_one_cell_is_one_line(trio, tmp_path, mode):
    """A NaN in an expert of θ₂'s last block: the rows run at once stop, the error names the tensor,
    every buffer is given back, and the command line gives one line, exit 2 and no result file."""
    name = f"model.layers.{len(KEPT) - 1}.mlp.experts.5.up_proj.weight"
    bad = copy_with_nan(trio / "ft", tmp_path / "bad", name)
    before = threading.active_count()
    with pytest.raises(TracingError, match=name.replace(".", r"\.") + " holds non-finite values"):
        run_stat("cos", Checkpoint(trio / "base"), Checkpoint(bad), rows=K, workers=2, mem_budget_gb=BUDGETS[mode])
    assert threading.active_count() == before
    gc.collect()
    assert experts_sampled.live_buffers() == 0
    out = tmp_path / "never.p"
    args = ["--mem_budget_gb", TINY] if BUDGETS[mode] else []
    r = main("--base_model_id", trio / "base", "--ft_model_id", bad, "--stat", "cos", "--rows", K, "--workers", 2,
             *args, "--save", out, "--quiet")
    assert r.returncode == 2 and r.stderr.startswith("error:") and name in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_range_reads_stay_within_the_dry_run_plan(trio, tmp_path, monkeypatch, workers):
    """Both models on the loopback hub, read by range requests, with too little memory to keep θ₂'s
    blocks: every row of θ₂ is fetched once (later cells read the local copy), so the bytes sent are
    the dry run's plan for each model, and the record is the local read's bit for bit."""
    from hub_server import serving
    from test_remote_experts import planned, sent
    from tracing.api import run_pair
    server = serving({"org/base": trio / "base", "org/ft": trio / "ft"}, tmp_path, monkeypatch)
    try:
        plan = planned("org/base", "org/ft", rows=K)
        before = {repo: sum(sent(server, repo).values()) for repo in plan}
        opts = dict(stat="cos", rows=K, workers=workers, mem_budget_gb=TINY, progress=False)
        rec = run_pair("org/base", "org/ft", **opts)[0]
        for repo, n in plan.items():
            assert sum(sent(server, repo).values()) - before[repo] == n, repo
    finally:
        server.close()
    loc = run_pair(str(trio / "base"), str(trio / "ft"), **opts)[0]
    assert rec["extra"]["shape"] == [L, len(KEPT)] and rec["log10_pvalue"] < -20
    for key in ("log10_pvalue", "statistic", "per_layer", "per_pair", "correspondence", "extra"):
        assert json.dumps(rec[key], sort_keys=True) == json.dumps(loc[key], sort_keys=True), key  # bit for bit


def _cost(a, b, rows=K, **opts):
    """Launch's estimate of ``cos --rows K`` for two models of these shapes (bfloat16, a 2-core job)."""
    from types import SimpleNamespace

    from tracing.options import Options
    from tracing.stats import get
    from tracing.stats.cost import Sizing
    a, b = (SimpleNamespace(arch=x, params=10 ** 6, bytes_per_param=2) for x in (a, b))
    return get("cos").estimate(Sizing.from_infos(a, b, Options(stat=["cos"], rows=rows, **opts), cpus=2))


@pytest.mark.parametrize("mode", list(BUDGETS))
def test_cost_counts_the_cells_read_and_matched(trio, reads, mode):
    """The work launch sizes a block map's job for is the work done: the rows read of each model (θ₂'s
    once per block when kept, else once per cell) and the unit pairs matched in every cell; the job keeps
    θ₂'s blocks when the run does, and holds them."""
    from tracing.options import Options
    from tracing.stats.base import Context
    a, b = Checkpoint(trio / "base"), Checkpoint(trio / "ft")
    res = run_stat("cos", a, b, rows=K, workers=1, mem_budget_gb=BUDGETS[mode])
    work = experts_sampled.cells_work(a.arch, b.arch, keep=mode == "kept")
    assert work.reads_a == sum(r[0] == "base" for r in reads) == 1 + (L - 1) * (E + 1)
    assert work.reads_b == sum(r[0] == "ft" for r in reads)
    assert work.pairs == sum(map(sum, res.extra["per_pair_n"])) == 1 + (L - 1) * (len(KEPT) - 1) * (E + 1)
    assert (work.similarity, work.centroids) == ((L - 1) * (len(KEPT) - 1) * E * E, (L - 1) * (len(KEPT) - 1) * 2 * E)
    budget = BUDGETS[mode] or 100.0
    ctx = Context(Options(stat=["cos"], rows=K, workers=1, mem_budget_gb=budget), progress=False)
    assert experts_sampled.cell_workers(ctx, a.arch, b.arch)[1] == (mode == "kept")
    theta2 = (1 + 2 * (E + 1)) * K * D * 4  # θ₂'s dense block and two MoE blocks, float32
    per_cell = _cost(a.arch, b.arch, workers=1, mem_budget_gb=TINY)
    kept = _cost(a.arch, b.arch, workers=1, mem_budget_gb=100.0)
    assert kept.mem_bytes == per_cell.mem_bytes + theta2 and kept.seconds < per_cell.seconds


def test_cost_grows_with_the_cells():
    """Shapes where matching is most of the work (K = 1024 rows of experts 1024 wide): depths 4 against 3
    make 7 cells (a dense one, 3 × 2 of MoE blocks), more than the 4 blocks of the grid of 4 against 4 and
    fewer than the 10 cells of a block map of 4 against 4 (``--localized``); doubling both depths makes
    36 cells, and the estimate follows, whether θ₂'s blocks are kept or read by every cell."""
    from tracing.arch import arch_from_config

    def arch(depth):
        return arch_from_config(family_config("deepseek_v3", d=D, h=2048, E=E, L=depth).to_dict())

    a, b, a2, b2 = arch(4), arch(3), arch(8), arch(6)
    assert [experts_sampled.cells_work(x, y, True).pairs // (E + 1) for x, y in ((a, b), (a, a), (a2, b2))] == [6, 9, 35]
    for budget in BUDGETS.values():
        cost = functools.partial(_cost, rows=1024, mem_budget_gb=budget)
        grid, cells, square = cost(a, a), cost(a, b), cost(a, a, localized=True)
        assert grid.seconds < cells.seconds < square.seconds, budget
        assert cells.seconds * 4 < cost(a2, b2).seconds < cells.seconds * 6, budget
