"""The bytes of a GGUF file on the hub that the header parse already fetched are not asked for again: the
parse reads the file's first bytes in requests of growing size (the whole of a file smaller than its first
request), and a tensor lying in them — wholly or in part — is served from them. The dry run's plan is what
is then sent, no byte is sent twice, and the results are those of the same files read locally. Real GGUF
files, served by the real loopback hub (tests/hub_server.py) to the real huggingface_hub client, the bytes
and ranges sent counted by the server."""
from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
import torch
from helpers import finetuned, tiny_config, tiny_model
from hub_server import serving
from quant_writers import write_gguf
from test_remote import _main

from tracing.models import Checkpoint
from tracing.stats.base import sampled_rows

FIRST_READ = 1 << 16  # the header parse's first request
K = 8  # sampled rows


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """``{repo name: GGUF file}``, Q8_0, no tokenizer (config from the metadata), each alone in a folder: a tiny
    base and its fine-tune smaller than the header parse's first request, and a larger model whose tensor data
    that first request ends inside."""
    root = tmp_path_factory.mktemp("gguf-prefix")
    base = tiny_model(tiny_config(d=32, h=64, L=2, V=64), seed=0)
    out = {}
    for name, model in (("tiny", base), ("tiny-ft", finetuned(base, seed=1)),
                        ("large", tiny_model(tiny_config(d=64, h=128, L=2, V=128), seed=2))):
        model.save_pretrained(root / "hf" / name)
        out[name] = write_gguf(root / "hf" / name, root / name / f"{name}.Q8_0.gguf", "Q8_0", with_tokenizer=False)
    assert all(out[n].stat().st_size < FIRST_READ for n in ("tiny", "tiny-ft"))
    assert out["large"].stat().st_size > FIRST_READ
    return out


@pytest.fixture
def hub(ggufs, tmp_path, monkeypatch):
    server = serving({f"org/{name}": f.parent for name, f in ggufs.items()}, tmp_path, monkeypatch)
    yield server
    server.close()


def _key(ggufs, name: str) -> str:
    return f"org/{name}/{ggufs[name].name}"


def _ranges(hub, ggufs, name: str) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` of the file the server was asked for, in order."""
    out = []
    for method, path, headers in hub.requests:
        m = re.fullmatch(r"/org/([^/]+)/resolve/[^/]+/(.+)", unquote(path.split("?")[0]))
        if method == "GET" and m and (m.group(1), m.group(2)) == (name, ggufs[name].name):
            a, b = re.fullmatch(r"bytes=(\d+)-(\d+)", {k.lower(): v for k, v in headers.items()}["range"]).groups()
            out.append((int(a), int(b) + 1))
    return out


def _sent_twice(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges that overlap one asked for before them."""
    seen, out = [], []
    for a, b in ranges:
        if any(a < d and c < b for c, d in seen):
            out.append((a, b))
        seen.append((a, b))
    return out


def test_tiny_file_is_sent_once_as_the_dry_run_plans(hub, ggufs, tmp_path):
    """``main.py --dry-run --rows K`` of ``cos`` and ``emb`` on two GGUF files smaller than the header parse's first
    request: each file's plan is the file's size, and the run in a new process then sends exactly that, once."""
    names = ("tiny", "tiny-ft")
    args = ("--base_model_id", "org/tiny", "--ft_model_id", "org/tiny-ft", "--stat", "cos,emb", "--rows", str(K))
    from tracing.options import Options
    from tracing.sources.cost import _size, planned_reads
    ca, cb = Checkpoint("org/tiny", remote=True), Checkpoint("org/tiny-ft", remote=True)
    options = Options(stat=["cos", "emb"], rows=K)
    plan = {"tiny": ca.backend.header_bytes() + planned_reads(ca, cb, options),
            "tiny-ft": cb.backend.header_bytes() + planned_reads(cb, ca, options)}
    assert plan == {n: ggufs[n].stat().st_size for n in names}
    r = _main(hub, tmp_path, *args, "--dry-run")
    assert r.returncode == 0, r.stderr
    said = dict(line.split(": range reads of ", 1) for line in r.stdout.splitlines())
    assert {spec: words.split(" of ")[0] for spec, words in said.items()} == {f"org/{n}": _size(plan[n]) for n in names}
    before = {n: hub.served.get(_key(ggufs, n), 0) for n in names}
    asked = {n: len(_ranges(hub, ggufs, n)) for n in names}
    r = _main(hub, tmp_path, *args, "--save", str(tmp_path / "out/"))
    assert r.returncode == 0, r.stderr
    assert {n: hub.served[_key(ggufs, n)] - before[n] for n in names} == plan
    assert {n: _sent_twice(_ranges(hub, ggufs, n)[asked[n]:]) for n in names} == {n: [] for n in names}


def test_tiny_file_results_equal_local(hub, ggufs):
    """Sampled ``cos`` and ``emb`` of the tiny pair read from the hub equal the same files read locally, every
    tensor read whole or by rows is bit-identical, and nothing is asked for after the header parse."""
    from tracing.api import run_pair
    from tracing.options import Options
    opts = Options(stat=["cos", "emb"], rows=K)
    remote = run_pair("org/tiny", "org/tiny-ft", opts, progress=False)
    local = run_pair(str(ggufs["tiny"]), str(ggufs["tiny-ft"]), opts, progress=False)
    assert [(x["log10_pvalue"], x["per_layer"]) for x in remote] == [(x["log10_pvalue"], x["per_layer"]) for x in local]
    assert {n: hub.served[_key(ggufs, n)] for n in ("tiny", "tiny-ft")} == \
           {n: ggufs[n].stat().st_size for n in ("tiny", "tiny-ft")}
    r, l = Checkpoint("org/tiny", remote=True), Checkpoint(str(ggufs["tiny"]))
    asked = len(_ranges(hub, ggufs, "tiny"))
    for name in r.arch.names():
        assert torch.equal(r.get(name), l.get(name)), name
        if len(r.arch.ref(name).shape) == 2:
            idx = sampled_rows(r.arch.ref(name).shape[0], 4, 0)
            assert torch.equal(r.get_rows(name, idx), l.get_rows(name, idx)), name
    assert len(_ranges(hub, ggufs, "tiny")) == asked


def test_tensors_the_first_request_ends_inside_are_read_past_it_only(hub, ggufs):
    """A file larger than the header parse's first request: each tensor read whole costs what ``planned_bytes``
    says (only its bytes past what the parse fetched), no byte is asked for twice, every tensor equals the local
    read; by rows too."""
    r, l = Checkpoint("org/large", remote=True), Checkpoint(str(ggufs["large"]))
    b, key = r.backend, _key(ggufs, "large")
    fetched = b.header_bytes()
    assert fetched == FIRST_READ
    assert any(t.data_offset < fetched < t.data_offset + t.n_bytes for t in b.reader.tensors)  # one straddles it
    assert any(t.data_offset + t.n_bytes <= fetched for t in b.reader.tensors)  # one lies inside it
    plans = {}
    for name in r.arch.names():
        before = hub.served[key]
        assert torch.equal(r.get(name), l.get(name)), name
        plans[name] = hub.served[key] - before
        assert plans[name] == b.planned_bytes(name), name
    assert _sent_twice(_ranges(hub, ggufs, "large")) == []
    assert hub.served[key] == fetched + sum(plans.values()) <= ggufs["large"].stat().st_size
    for name in r.arch.names():
        shape = r.arch.ref(name).shape
        if len(shape) == 2:
            idx = sampled_rows(shape[0], 4, 0)
            before = hub.served[key]
            assert torch.equal(r.get_rows(name, idx), l.get_rows(name, idx)), name
            assert hub.served[key] - before == b.planned_bytes(name, idx), name
