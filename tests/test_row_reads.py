"""Sampled row reads with many reads in flight, and the read-ahead of the next block: the same bytes
as one read after another, every row read once, and the same one-line error for a file that ends
too early."""
import os
import threading
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers import finetuned, tiny_config, tiny_model

import tracing
import tracing.machine
import tracing.prefetch
import tracing.rows
from tracing.prefetch import ahead
from tracing.rows import read_rows

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.int8, torch.uint8, torch.float8_e4m3fn]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A safetensors file of several dtypes: [300, 6] matrices and a stacked [4, 75, 6] tensor."""
    g = torch.Generator().manual_seed(0)
    t = {}
    for dt in DTYPES:
        x = torch.randn(300, 6, generator=g) * 20
        t[str(dt).split(".")[1]] = x.to(dt)
    t["experts"] = torch.randn(4, 75, 6, generator=g).to(torch.bfloat16)
    f = tmp_path_factory.mktemp("rows") / "w.safetensors"
    save_file(t, str(f))
    return f, t


def _index(n: int, seed: int) -> np.ndarray:
    """Sorted distinct rows: single rows, runs of consecutive rows, the first and the last row."""
    rng = np.random.default_rng(seed)
    picked = set(rng.choice(n, size=n // 4, replace=False).tolist()) | {0, n - 1}
    for start in rng.choice(n - 10, size=5, replace=False):
        picked |= set(range(int(start), int(start) + 8))
    return np.array(sorted(picked), dtype=np.int64)


@pytest.fixture
def parallel(monkeypatch):
    """Every run list split among the reader threads, and the threads' reads counted."""
    monkeypatch.setattr(tracing.rows, "RUNS_PER_THREAD", 1)
    monkeypatch.setattr(tracing.machine, "READS_IN_FLIGHT", 4)
    threads = set()
    real = tracing.rows._pread_into

    def pread_into(fd, view, at):
        threads.add(threading.get_ident())
        return real(fd, view, at)
    monkeypatch.setattr(tracing.rows, "_pread_into", pread_into)
    return threads


def _serial(monkeypatch):
    monkeypatch.setattr(tracing.machine, "READS_IN_FLIGHT", 1)


@pytest.mark.parametrize("name", [str(dt).split(".")[1] for dt in DTYPES])
def test_parallel_rows_equal_serial_rows(weights, name, parallel, monkeypatch):
    f, t = weights
    idx = _index(300, seed=len(name))
    assert len(tracing.rows.runs(idx)) > 20
    fast = read_rows(f, name, idx)
    assert parallel and threading.get_ident() not in parallel  # read by the pool's threads
    _serial(monkeypatch)
    parallel.clear()
    slow = read_rows(f, name, idx)
    assert parallel == {threading.get_ident()}  # one read after another in this thread
    assert fast.dtype == slow.dtype == t[name].dtype
    want = t[name][torch.from_numpy(idx)]
    assert torch.equal(fast.view(torch.uint8), slow.view(torch.uint8))
    assert torch.equal(fast.view(torch.uint8), want.contiguous().view(torch.uint8))


def test_parallel_rows_of_stacked_experts(weights, parallel, monkeypatch):
    """lead=2: row e·75 + r of the [4, 75, 6] stack is row r of expert e."""
    f, t = weights
    idx = _index(300, seed=7)
    fast = read_rows(f, "experts", idx, lead=2)
    _serial(monkeypatch)
    slow = read_rows(f, "experts", idx, lead=2)
    want = t["experts"].flatten(0, 1)[torch.from_numpy(idx)]
    assert torch.equal(fast, slow) and torch.equal(fast, want)


@pytest.mark.parametrize("threads", [1, 4])
def test_file_that_ends_early_is_one_line_naming_file_and_tensor(weights, tmp_path, monkeypatch, threads):
    f, _ = weights
    start, head = tracing.rows.header(f)
    last = max((k for k in head if k != "__metadata__"), key=lambda k: head[k]["data_offsets"][1])
    begin, end = head[last]["data_offsets"]
    n = head[last]["shape"][0]
    row = (end - begin) // n
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(f.read_bytes()[: start + end - 5 * row - 1])  # the last tensor loses the end of its rows n-6..n-1
    monkeypatch.setattr(tracing.rows, "RUNS_PER_THREAD", 1)
    monkeypatch.setattr(tracing.machine, "READS_IN_FLIGHT", threads)
    whole = np.arange(0, n - 6, 3)
    assert torch.equal(read_rows(cut, last, whole), read_rows(f, last, whole))
    with pytest.raises(OSError) as e:
        read_rows(cut, last, np.unique(np.concatenate([whole, [n - 1]])))
    assert str(e.value) == f"{cut}: short read of tensor {last}"


def test_ahead_loads_every_key_once_in_order_one_ahead():
    loaded, live, peak = [], [0], [0]
    lock = threading.Lock()

    def load(k):
        with lock:
            loaded.append(k)
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        return torch.full((4,), float(k))

    got = []
    for k, v in ahead(range(6), load):
        time.sleep(0.01)  # the next key is loaded meanwhile
        got.append((k, float(v[0])))
        with lock:
            live[0] -= 1
    assert got == [(k, float(k)) for k in range(6)] and loaded == list(range(6))
    assert peak[0] == 2  # the value worked on and the one read ahead, never more


def test_ahead_reads_large_values_one_at_a_time():
    events = []

    def load(k):
        events.append(("load", k))
        return torch.zeros(64)
    for k, _ in ahead(range(3), load, max_bytes=16):
        time.sleep(0.01)
        events.append(("use", k))
    assert events == [("load", 0), ("use", 0), ("load", 1), ("use", 1), ("load", 2), ("use", 2)]


def test_ahead_raises_the_error_of_its_key_in_turn_and_leaves_no_read_running():
    done = []

    def load(k):
        if k == 2:
            raise OSError("x.safetensors: short read of tensor w")
        time.sleep(0.01)
        done.append(k)
        return k
    seen = []
    with pytest.raises(OSError, match="short read of tensor w"):
        for k, _ in ahead(range(5), load):
            seen.append(k)
    assert seen == [0, 1] and done == [0, 1]
    it = ahead(range(5), load)
    next(it)
    it.close()  # stopped early: the read ahead (key 1) is cancelled or has finished when close returns
    after = list(done)
    time.sleep(0.05)
    assert done == after and after in ([0, 1, 0], [0, 1, 0, 1])
    assert not any(t.name.startswith("read-ahead") for t in threading.enumerate())


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = tiny_model(tiny_config(L=4, d=64, h=96), seed=21)
    base.save_pretrained(root / "a")
    finetuned(base, seed=2, noise=0.3).save_pretrained(root / "b")
    return str(root / "a"), str(root / "b")


def test_sampled_cos_reads_every_row_once_and_gives_the_same_result(saved_pair, monkeypatch):
    reads = []
    real = tracing.rows.read_rows

    def counted(path, name, index, lead=1):
        reads.append((os.path.basename(os.path.dirname(path)), name, len(index)))
        return real(path, name, index, lead)
    monkeypatch.setattr(tracing.rows, "read_rows", counted)
    res = tracing.compare(*saved_pair, stat="cos", rows=40)
    ups = [r for r in reads if "up_proj" in r[1]]
    assert sorted(ups) == sorted({(m, f"model.layers.{i}.mlp.up_proj.weight", 40) for m in "ab" for i in range(4)})
    assert [r[1] for r in ups] == [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4) for _ in "ab"]
    monkeypatch.setattr(tracing.prefetch, "AHEAD_MAX_BYTES", -1)  # no read-ahead: one block after another
    one_by_one = tracing.compare(*saved_pair, stat="cos", rows=40)
    assert res.log10_pvalue == one_by_one.log10_pvalue and res.log10_pvalue < -6
    assert [r["log10_pvalue"] for r in res.per_layer] == [r["log10_pvalue"] for r in one_by_one.per_layer]



@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_reads_rows_with_its_own_threads(weights, parallel):
    """The parent's reader threads do not exist in a forked child: the child makes its own."""
    f, t = weights
    idx = _index(300, seed=11)
    want = t["bfloat16"][torch.from_numpy(idx)]
    assert torch.equal(read_rows(f, "bfloat16", idx), want)  # the pool exists in the parent now
    pool = tracing.rows._pool()
    n = pool._max_workers
    barrier = threading.Barrier(n)
    list(pool.map(lambda _: barrier.wait(timeout=10), range(n)))  # all its threads started, now idle
    pid = os.fork()
    if pid == 0:  # the child: exit 0 when the rows are right
        ok = torch.equal(read_rows(f, "bfloat16", idx), want)
        os._exit(0 if ok else 1)
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's row read hung")
    assert os.waitstatus_to_exitcode(status) == 0
