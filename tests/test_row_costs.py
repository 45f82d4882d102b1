"""Small costs of sampled row reads: a safetensors header is parsed once per version of its file, and
rows read are checked for NaN / inf on their own (one-line error naming the tensor)."""
import os

import pytest
import torch
from safetensors.torch import save_file

from helpers import tiny_config, tiny_model

import tracing.models
import tracing.rows
from tracing.errors import TracingError
from tracing.models import Checkpoint, from_module
from tracing.rows import header, read_rows


@pytest.fixture
def parses(monkeypatch):
    """The number of headers parsed (a list of paths), with an empty header cache."""
    seen = []
    parse = tracing.rows._parse

    def counting(f, path):
        seen.append(path)
        return parse(f, path)

    monkeypatch.setattr(tracing.rows, "_parse", counting)
    monkeypatch.setattr(tracing.rows, "_HEADERS", type(tracing.rows._HEADERS)())
    return seen


def _save(path, **tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def test_repeated_reads_parse_the_header_once(tmp_path, parses, monkeypatch):
    monkeypatch.setattr(tracing.rows, "SETTLED_NS", 0)
    f = tmp_path / "w.safetensors"
    _save(f, a=torch.arange(12.0).reshape(4, 3), b=torch.ones(5, 2))
    for _ in range(3):
        assert torch.equal(read_rows(f, "a", [1, 3]), torch.tensor([[3.0, 4, 5], [9, 10, 11]]))
        assert header(f)[1]["b"]["shape"] == [5, 2]
    assert len(parses) == 1


def test_a_rewritten_file_gives_the_new_header(tmp_path, parses, monkeypatch):
    monkeypatch.setattr(tracing.rows, "SETTLED_NS", 0)
    f = tmp_path / "w.safetensors"
    _save(f, a=torch.zeros(4, 3))
    assert header(f)[1]["a"]["shape"] == [4, 3]
    _save(f, a=torch.ones(6, 3))  # in place: the same inode, another size
    assert header(f)[1]["a"]["shape"] == [6, 3]
    assert torch.equal(read_rows(f, "a", [5]), torch.ones(1, 3))
    g = tmp_path / "g.safetensors"
    _save(g, a=torch.full((2, 2), 7.0))
    os.replace(g, f)  # replaced: another inode
    assert header(f)[1]["a"]["shape"] == [2, 2]
    assert len(parses) == 3


def test_a_file_rewritten_within_the_clock_tick_is_not_kept(tmp_path, parses):
    """The same size, written at once: its times may not have moved, so a fresh file is parsed each time."""
    f = tmp_path / "w.safetensors"
    _save(f, a=torch.zeros(4, 3))
    assert "a" in header(f)[1]
    _save(f, b=torch.zeros(4, 3))
    assert "b" in header(f)[1] and "a" not in header(f)[1]


def test_the_cache_is_bounded(tmp_path, parses, monkeypatch):
    monkeypatch.setattr(tracing.rows, "SETTLED_NS", 0)
    monkeypatch.setattr(tracing.rows, "HEADERS_KEPT", 2)
    files = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for i, f in enumerate(files):
        _save(f, a=torch.zeros(i + 1, 2))
    for f in files + files[1:]:  # the last two are kept
        header(f)
    assert len(parses) == 3 and len(tracing.rows._HEADERS) == 2
    header(files[0])
    assert len(parses) == 4


# --------------------------------------------------------------------------------------------
# NaN / inf: rows read alone are checked alone
# --------------------------------------------------------------------------------------------
UP = "model.layers.0.mlp.up_proj.weight"
BAD_ROW = 5


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """A tiny Llama with a NaN in row 5 of block 0's up projection, saved, and its state in memory."""
    m = tiny_model(tiny_config("llama", L=2, d=32, h=64, V=64), seed=1)
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[BAD_ROW, 3] = float("nan")
    folder = tmp_path_factory.mktemp("nan") / "m"
    m.save_pretrained(folder)
    return folder, m


def _sources(nan_model):
    folder, m = nan_model
    return [Checkpoint(str(folder)), from_module(m, label="mem")]


def test_a_nan_in_a_sampled_row_is_a_one_line_error_naming_the_tensor(nan_model):
    for src in _sources(nan_model):
        with pytest.raises(TracingError) as e:
            src.get_rows(UP, [0, BAD_ROW, 9])
        msg = str(e.value)
        assert "\n" not in msg and UP in msg and "non-finite" in msg and "1 NaN" in msg


def test_a_nan_outside_the_sampled_rows_is_not_seen_by_them_but_by_the_whole_tensor(nan_model):
    for src in _sources(nan_model):
        rows = src.get_rows(UP, [0, BAD_ROW + 1, 9])
        assert rows.shape == (3, 32) and bool(torch.isfinite(rows).all())
        with pytest.raises(TracingError, match="non-finite"):
            src.get(UP)


def test_rows_are_checked_alone_and_not_again_once_the_whole_tensor_was(nan_model, monkeypatch):
    checked = []
    check = tracing.models.require_finite

    def counting(label, name, t):
        checked.append((name, tuple(t.shape)))
        return check(label, name, t)

    monkeypatch.setattr(tracing.models, "require_finite", counting)
    name = "model.layers.1.mlp.gate_proj.weight"
    for src in _sources(nan_model):
        checked.clear()
        src.get_rows(name, [1, 2])
        assert checked == [(name, (2, 32))]  # only the rows read
        src.get(name)
        src.get(name)
        src.get_rows(name, [1, 2])
        assert checked == [(name, (2, 32)), (name, (64, 32))]  # the whole tensor once, then nothing
