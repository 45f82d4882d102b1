"""The sampled experts grid (``cos --rows K``) with several blocks matched at once (``--workers``):
the same record as one block after the other (per-pair p-values, pairings, grid, overall p) for a
derived and an independent pair, whatever order the blocks finish in; an error in one block is
the one-line error with no result file."""
import gc
import threading

import pytest
import torch

from family_models import family_config, family_model, noisy
from helpers import buffer_spy, copy_with_nan, finish_last_to_first
from test_experts_sampled import _experts_moved
from test_frontier_families import main, run_stat
from tracing.errors import TracingError
from tracing.models import Checkpoint
from tracing.options import Options
from tracing.stats import experts_sampled

L, D, E, K = 4, 64, 8, 16  # a dense first block, then 3 MoE blocks of 8 routed experts and a shared one


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """Folders: a base and its noisy copy with reordered experts in bfloat16 (rows kept as read), an
    independent model in float32 (rows compacted)."""
    root = tmp_path_factory.mktemp("experts-parallel")
    c = family_config("deepseek_v3", d=D, h=D, E=E, L=L)
    base = family_model(c, seed=61)
    moved, _ = _experts_moved(noisy(base, seed=62, noise=0.3), seed=63)
    base.to(torch.bfloat16).save_pretrained(root / "base")
    moved.to(torch.bfloat16).save_pretrained(root / "ft")
    family_model(c, seed=64).save_pretrained(root / "indep")
    return root


def _record(res) -> dict:
    return {"log10_pvalue": res.log10_pvalue, "per_layer": res.per_layer,
            **{k: res.extra[k] for k in ("experts", "expert_matching", "num_pairs", "skipped_pairs", "rows_of_units")}}


@pytest.fixture()
def out_of_order(monkeypatch):
    """Blocks run in parallel finish last to first (block 0 waits for the last block), and the
    threads that ran them are recorded."""
    return finish_last_to_first(monkeypatch, experts_sampled, "_grid_block", "block")


@pytest.mark.parametrize("other", ["ft", "indep"])
def test_parallel_grid_equals_the_serial_grid(trio, other, out_of_order):
    a, b = Checkpoint(trio / "base"), Checkpoint(trio / other)
    threads = torch.get_num_threads()
    serial = _record(run_stat("cos", a, b, rows=K, workers=1))
    assert out_of_order == {threading.main_thread().name}
    for workers in (2, 3):
        out_of_order.clear()
        assert _record(run_stat("cos", a, b, rows=K, workers=workers)) == serial
        assert len(out_of_order) > 1 and threading.main_thread().name not in out_of_order
    assert torch.get_num_threads() == threads  # torch's threads are given back
    assert serial["num_pairs"] == (L - 1) * (E + 1) + 1
    if other == "ft":  # the noisy copy: significant, its experts' order recovered in every MoE block
        assert serial["log10_pvalue"] < -20 and len(serial["expert_matching"]) == L - 1
    else:
        assert serial["log10_pvalue"] > -2


def test_error_in_one_block_is_one_line(trio, tmp_path):
    """A NaN in the last block's expert: the blocks run at once stop, the error names the tensor, and
    the command line gives one line, exit 2 and no result file."""
    name = f"model.layers.{L - 1}.mlp.experts.5.up_proj.weight"
    bad = copy_with_nan(trio / "ft", tmp_path / "bad", name)
    before = threading.active_count()
    with pytest.raises(TracingError, match=name.replace(".", r"\.") + " holds non-finite values"):
        run_stat("cos", Checkpoint(trio / "base"), Checkpoint(bad), rows=K, workers=2)
    assert threading.active_count() == before
    gc.collect()
    assert experts_sampled.live_buffers() == 0  # the failed blocks' buffers are given back too
    out = tmp_path / "never.p"
    r = main("--base_model_id", trio / "base", "--ft_model_id", bad, "--stat", "cos", "--rows", K, "--workers", 2,
             "--save", out, "--quiet")
    assert r.returncode == 2 and r.stderr.startswith("error:") and name in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_workers_must_be_positive():
    with pytest.raises(TracingError, match="--workers must be a positive number"):
        Options(stat=["cos"], rows=K, workers=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_centroid_is_the_float64_mean_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(5)
    for K, d in ((16, 64), (256, 7168), (7, 33)):
        rows = (torch.randn(K, d, generator=g) * 0.02 + 0.001).to(dtype)
        assert torch.equal(experts_sampled.centroid(rows), rows.double().mean(0))
        out = torch.empty((2, d), dtype=torch.float64)
        experts_sampled.centroid(rows, out=out[1])
        assert torch.equal(out[1], rows.double().mean(0))


def test_block_buffers_hold_a_block_and_are_given_back(trio, monkeypatch):
    """Each block's rows live in one buffer per model, at most two per block in flight, and every
    buffer is gone once the grid is done (rows kept in per-expert copies fragment the heap)."""
    seen = buffer_spy(monkeypatch)
    a, b = Checkpoint(trio / "base"), Checkpoint(trio / "ft")
    for workers in (1, 2):
        seen.clear()
        run_stat("cos", a, b, rows=K, workers=workers)
        gc.collect()
        assert experts_sampled.live_buffers() == 0
        assert all(in_buffer for _, in_buffer in seen)  # every MLP's rows a slot of its block's buffer
        assert 2 <= max(n for n, _ in seen) <= 2 * workers


def test_sampled_cost_holds_the_blocks_of_every_worker(trio):
    """Launch's sizing: memory for the rows of one block pair per worker (``--workers``, else the
    job's cores, at most the blocks); time unchanged."""
    from types import SimpleNamespace

    from tracing.stats import get
    from tracing.stats.cost import Sizing
    info = SimpleNamespace(arch=Checkpoint(trio / "base").arch, params=10 ** 6, bytes_per_param=2)

    def cost(cpus, **kw):
        return get("cos").estimate(Sizing.from_infos(info, info, Options(stat=["cos"], rows=K, **kw), cpus=cpus))

    one, two = cost(4, workers=1), cost(4, workers=2)
    per_block = 2 * (E + 1) * K * D * 4 + K * K * 12
    assert (one.mem_bytes, two.mem_bytes) == (per_block, 2 * per_block)
    assert one.seconds == two.seconds
    assert cost(2).mem_bytes == two.mem_bytes and cost(1).mem_bytes == one.mem_bytes  # the job's cores
    assert cost(64).mem_bytes == L * per_block  # no more workers than blocks
