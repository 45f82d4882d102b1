"""The byte plan of a GGUF file on the hub (``planned_bytes``, the dry run) is what the reads then
transfer, for every tensor — whole and by rows — including the tensors llama.cpp's converter split in
two (DeepSeek's MLA ``kv_b_proj`` as ``attn_k_b`` + ``attn_v_b``, Qwen3-Next's ``in_proj_qkvz`` as
``attn_qkv`` + ``attn_gate``): Q8_0 files as the converter lays them out, served by the real loopback
hub (tests/hub_server.py) to the real huggingface_hub client, the bytes sent counted by the server."""
from __future__ import annotations

import pytest
from family_models import family_config, family_model, save_trio
from hub_server import serving
from test_gguf_families import write_converted
from test_remote import _main

from tracing.models import Checkpoint
from tracing.stats.base import sampled_rows

#: model_type -> the GGUF architecture the converter writes (each splits a tensor in two)
SPLIT = {"deepseek_v3": "deepseek2", "qwen3_next": "qwen3next"}
FILE = "model.gguf"
K = 8  # sampled rows


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """``{family: {tag: GGUF folder}}``: a base and its noisy copy of each family, in Q8_0 where rows allow."""
    root = tmp_path_factory.mktemp("gguf-splits")
    out = {}
    for family, arch in SPLIT.items():
        _, paths = save_trio(root / family / "hf", family)
        out[family] = {tag: write_converted(paths[tag], root / family / tag, arch, "Q8_0") for tag in ("base", "ft")}
    return out


@pytest.fixture
def hub(ggufs, tmp_path, monkeypatch):
    server = serving({f"org/{family}-{tag}": folder for family, tags in ggufs.items() for tag, folder in tags.items()},
                     tmp_path, monkeypatch)
    yield server
    server.close()


def _sent(hub, repo: str) -> int:
    return hub.served.get(f"{repo}/{FILE}", 0)


def _transfer(hub, repo: str, read) -> int:
    """Bytes of the GGUF file sent while ``read(backend)`` runs on a freshly opened model (its header is
    parsed once per process, so opening it again sends none of the file)."""
    backend = Checkpoint(repo, remote=True).backend
    before = _sent(hub, repo)
    read(backend)
    return _sent(hub, repo) - before


@pytest.mark.parametrize("family", list(SPLIT))
def test_plan_of_every_tensor_is_what_is_sent(hub, family):
    """``planned_bytes`` of every tensor, read whole and by rows, is the bytes the reads transfer; the split
    tensors among them (read whole: the converter moved their rows) cost both their parts."""
    repo = f"org/{family}-base"
    ckpt = Checkpoint(repo, remote=True)
    b = ckpt.backend
    assert type(b).__name__ == "RemoteGGUFBackend"
    split = [n for n in ckpt.arch.names() if n.endswith(("kv_b_proj.weight", "in_proj_qkvz.weight"))]
    assert split, "the model has a tensor the converter splits"
    assert any(t.name.endswith(("attn_v_b.weight", "attn_gate.weight")) for t in b.reader.tensors)
    for name in ckpt.arch.names():
        assert _transfer(hub, repo, lambda m: m.get(name)) == b.planned_bytes(name), name
        shape = ckpt.arch.ref(name).shape
        if len(shape) == 2:
            idx = sampled_rows(shape[0], min(4, shape[0]), 0)
            assert _transfer(hub, repo, lambda m: m.get_rows(name, idx)) == b.planned_bytes(name, idx), name


@pytest.mark.parametrize("family", list(SPLIT))
def test_dry_run_is_what_the_run_sends(hub, family, tmp_path):
    """``main.py --dry-run --rows K`` of ``cos`` and ``emb`` (the sampled experts grid, the embedding whole): each
    model's bytes, headers included, are what the run in a new process then sends."""
    from tracing.options import Options
    from tracing.sources.cost import _size, planned_reads
    a, b = (f"org/{family}-{tag}" for tag in ("base", "ft"))
    args = ("--base_model_id", a, "--ft_model_id", b, "--stat", "cos,emb", "--rows", str(K))
    ca, cb = Checkpoint(a, remote=True), Checkpoint(b, remote=True)
    options = Options(stat=["cos", "emb"], rows=K)
    plan = {a: ca.backend.header_bytes() + planned_reads(ca, cb, options),
            b: cb.backend.header_bytes() + planned_reads(cb, ca, options)}
    r = _main(hub, tmp_path, *args, "--dry-run")
    assert r.returncode == 0, r.stderr
    said = dict(line.split(": range reads of ", 1) for line in r.stdout.splitlines())
    assert {spec: words.startswith(f"{_size(plan[spec])} of ") for spec, words in said.items()} == {a: True, b: True}, said
    before = {repo: _sent(hub, repo) for repo in plan}
    r = _main(hub, tmp_path, *args, "--save", str(tmp_path / "out/"))
    assert r.returncode == 0, r.stderr
    assert {repo: _sent(hub, repo) - before[repo] for repo in plan} == plan


def test_split_tensor_without_its_second_part_is_one_line(tmp_path):
    """A DeepSeek GGUF file whose ``attn_k_b`` has no ``attn_v_b`` beside it: one line naming both when it opens."""
    from tracing.errors import TracingError
    family_model(family_config("deepseek_v3"), seed=3).save_pretrained(tmp_path / "hf")
    folder = write_converted(tmp_path / "hf", tmp_path / "damaged", "deepseek2", drop=("blk.1.attn_v_b.weight",))
    with pytest.raises(TracingError, match=r"blk\.1\.attn_k_b\.weight has no blk\.1\.attn_v_b\.weight beside it") as e:
        Checkpoint(folder)
    assert "\n" not in str(e.value)
