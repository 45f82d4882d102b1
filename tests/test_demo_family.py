"""The offline demo model family (tracing/demo).

The full family is the one every other test and the README use: built once (~2 min on two idle
cores) into the default cache, or $TRACING_DEMO_DIR when set. Machinery tests (locking, caching,
partial builds) use the ``tiny=True`` recipe, which trains 3 steps per model.
"""

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tracing import demo
from tracing.demo.build import _ensure_built
from tracing.demo.recipes import _MARKER
from tracing.errors import TracingError

REPO = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop(demo.ENV_DIR, None)
    return env


@pytest.fixture(scope="session")
def zoo_root():
    # the family every other test and the README use (default cache, or $TRACING_DEMO_DIR): built once
    return demo.ensure_built(demo.default_root(), progress=False)


@pytest.fixture(scope="session")
def info(zoo_root):
    return demo.lineage(zoo_root)


def _packed_eval(zoo_root, tokenizer):
    """Independent re-implementation of the documented eval packing, via the saved HF tokenizer."""
    ids = []
    for line in (zoo_root / "corpus" / "eval.txt").read_text(encoding="utf-8").splitlines():
        ids.extend(tokenizer(line, verbose=False)["input_ids"])  # <s> is prepended by the tokenizer
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // demo.BLOCK_SIZE
    return torch.tensor(ids[: n * demo.BLOCK_SIZE]).view(n, demo.BLOCK_SIZE)


def _loss(model, blocks, batch=32):
    total = count = 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch):
            b = blocks[i : i + batch]
            out = model(input_ids=b, labels=b)  # HF shifts the labels itself
            n = b[:, 1:].numel()
            total += float(out.loss) * n
            count += n
    return total / count


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


# --- the full family ---------------------------------------------------------------------------


def test_every_model_loads_with_auto_classes(zoo_root):
    from transformers import AutoTokenizer

    for name in demo.MODEL_NAMES:
        folder = zoo_root / name
        assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
        model = _load(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        cfg = model.config
        assert cfg.model_type == "llama"
        assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 128, 4, 4)
        assert cfg.max_position_embeddings == 256 and cfg.tie_word_embeddings is False
        assert cfg.vocab_size == len(tok) == demo.VOCAB_SIZE
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
        assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
        ids = tok("def f(x): return x")["input_ids"]
        assert ids[0] == tok.bos_token_id and max(ids) < len(tok)
        assert tok.decode(ids, skip_special_tokens=True) == "def f(x): return x"
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits
        assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()


def test_all_models_share_one_tokenizer(zoo_root):
    ref = (zoo_root / "tokenizer" / "tokenizer.json").read_bytes()
    for name in demo.MODEL_NAMES:
        assert (zoo_root / name / "tokenizer.json").read_bytes() == ref


def test_lineage_file_and_helpers(zoo_root, info):
    assert info["version"] == demo.VERSION
    assert tuple(info["models"]) == demo.MODEL_NAMES
    expected_parent = {"base-a": None, "base-b": None, "base-c": None, "a-docs": "base-a",
                       "a-docs-v2": "a-docs", "a-sys": "base-a", "b-docs": "base-b"}
    expected_seed = {"base-a": 1, "base-b": 2, "base-c": 3}
    for name, rec in info["models"].items():
        assert rec["parent"] == expected_parent[name]
        assert rec["root"] == demo.root_of(name)
        assert rec["init_seed"] == expected_seed[rec["root"]]
        assert rec["data"] in ("pretrain", "docs", "sys")
        assert isinstance(rec["steps"], int) and rec["steps"] == demo.RECIPES[name].steps
        assert math.isfinite(rec["final_eval_loss"])
    assert {info["models"][n]["data"] for n in ("a-docs", "a-docs-v2")} == {"docs", "sys"}
    assert demo.root_of("a-docs-v2") == "base-a" and demo.root_of("demo:b-docs") == "base-b"
    assert demo.are_dependent("a-docs-v2", "base-a")
    assert demo.are_dependent("a-docs", "a-sys")
    assert demo.are_dependent("demo:b-docs", "base-b")
    assert not demo.are_dependent("a-docs", "b-docs")
    assert not demo.are_dependent("base-a", "base-b")
    assert not demo.are_dependent("base-c", "a-docs-v2")
    with pytest.raises(TracingError):
        demo.root_of("base-z")


def test_bases_learned_and_recorded_losses_reproduce(zoo_root, info):
    from transformers import AutoTokenizer

    ln_v = math.log(info["vocab_size"])
    for name in demo.MODEL_NAMES:
        rec = info["models"][name]
        assert rec["final_eval_loss"] < 0.7 * ln_v, (name, rec["final_eval_loss"], ln_v)
    tok = AutoTokenizer.from_pretrained(zoo_root / "base-a")
    blocks = _packed_eval(zoo_root, tok)
    assert torch.equal(blocks, demo.eval_blocks(zoo_root))
    for name in ("base-a", "a-docs-v2"):  # a base and a fine-tune of a fine-tune
        loss = _loss(_load(zoo_root / name), blocks)
        assert loss == pytest.approx(info["models"][name]["final_eval_loss"], abs=1e-4), name


def test_fine_tunes_move_the_weights_but_stay_related(zoo_root, info):
    def flat(name):
        return torch.cat([p.detach().flatten() for p in _load(zoo_root / name).parameters()])

    w = {n: flat(n) for n in ("base-a", "a-docs", "a-docs-v2", "base-b")}
    for child, parent in (("a-docs", "base-a"), ("a-docs-v2", "a-docs")):
        rel = float((w[child] - w[parent]).norm() / w[parent].norm())
        assert 0.02 < rel < 0.5, (child, rel)
        assert rel == pytest.approx(info["models"][child]["relative_change_from_parent"], rel=1e-3)
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(w["base-a"], w["a-docs-v2"], dim=0)) > 0.95
    assert float(cos(w["base-a"], w["base-b"], dim=0)) < 0.5


def test_halfway_interpolation_separates_dependent_from_independent(zoo_root):
    blocks = demo.eval_blocks(zoo_root)[:64]
    models = {n: _load(zoo_root / n) for n in ("base-a", "a-docs", "base-b")}

    def midpoint_loss(a, b):
        sa, sb = models[a].state_dict(), models[b].state_dict()
        mid = _load(zoo_root / a)
        mid.load_state_dict({k: 0.5 * sa[k] + 0.5 * sb[k] for k in sa})
        return _loss(mid, blocks)

    ends = {n: _loss(m, blocks) for n, m in models.items()}
    dep = midpoint_loss("base-a", "a-docs")
    ind = midpoint_loss("base-a", "base-b")
    print(f"\nendpoints {ends}; midpoint(base-a, a-docs) = {dep:.3f}; midpoint(base-a, base-b) = {ind:.3f}")
    assert dep < max(ends["base-a"], ends["a-docs"]) + 0.1  # no barrier along a fine-tune
    assert ind > max(ends["base-a"], ends["base-b"]) + 0.75  # a clear barrier between independent bases
    assert ind > dep + 0.75


def test_corpus_slices(zoo_root, info):
    corpus = zoo_root / "corpus"
    lines = {n: (corpus / f).read_text(encoding="utf-8").splitlines() for n, f in demo.SLICE_FILES.items()}
    assert set(lines) == {"pretrain", "docs", "sys", "eval"}
    assert demo.demo_eval_text_path(zoo_root) == corpus / "eval.txt"
    assert (corpus / "train.txt").exists()
    for name, docs in lines.items():
        assert docs and all(d and d == " ".join(d.split()) for d in docs), name
        assert info["corpus"][name]["documents"] == len(docs)
    sets = {n: set(d) for n, d in lines.items()}
    for a in sets:
        for b in sets:
            if a < b:
                assert not sets[a] & sets[b], (a, b)  # held out and disjoint
    total = sum(info["corpus"][n]["chars"] for n in sets)
    assert 500_000 < total < 4_000_000


def test_second_call_returns_immediately(zoo_root):
    before = {p: p.stat().st_mtime_ns for p in zoo_root.rglob("*")}
    t0 = time.perf_counter()
    root, built = _ensure_built(zoo_root, progress=True)
    assert time.perf_counter() - t0 < 1.0
    assert (root, built) == (zoo_root, False)
    assert demo.ensure_built(zoo_root) == zoo_root
    assert {p: p.stat().st_mtime_ns for p in zoo_root.rglob("*")} == before


def test_specs(zoo_root):
    assert demo.is_demo_spec("demo:base-a")
    assert not demo.is_demo_spec("meta-llama/Llama-2-7b-hf")
    assert not demo.is_demo_spec("/tmp/demo:x") and not demo.is_demo_spec("base-a")
    assert demo.resolve_demo("demo:a-docs-v2", root=zoo_root) == zoo_root / "a-docs-v2"
    with pytest.raises(TracingError) as err:
        demo.resolve_demo("demo:base-z", root=zoo_root)
    msg = str(err.value)
    assert "base-z" in msg and "\n" not in msg
    assert all(name in msg for name in demo.MODEL_NAMES)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv(demo.ENV_DIR, str(tmp_path / "shared"))
    assert demo.default_root() == tmp_path / "shared"
    monkeypatch.delenv(demo.ENV_DIR)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert demo.default_root() == Path.home() / ".cache" / "model-tracing" / f"demo-{demo.VERSION}"


def test_cli(zoo_root):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "tracing.demo", *args], capture_output=True, text=True,
                              env=_env(), cwd=REPO, timeout=300)

    r = run("path", "a-sys", "--root", str(zoo_root))
    assert r.returncode == 0 and r.stdout.strip() == str(zoo_root / "a-sys")
    r = run("path", "demo:base-c", "--root", str(zoo_root))
    assert r.returncode == 0 and r.stdout.strip() == str(zoo_root / "base-c")
    r = run("list", "--root", str(zoo_root))
    assert r.returncode == 0
    for name in demo.MODEL_NAMES:
        assert str(zoo_root / name) in r.stdout
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
    assert rows["a-docs-v2"][:3] == ["a-docs-v2", "a-docs", "base-a"]
    assert rows["base-b"][:3] == ["base-b", "-", "base-b"]
    r = run("build", str(zoo_root))  # already built: shows the table, builds nothing
    assert r.returncode == 0 and "base-a" in r.stdout and "eval loss" in r.stdout
    r = run("path", "nope", "--root", str(zoo_root))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "base-a" in r.stderr
    r = run("frobnicate")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


# --- build machinery (tiny recipe) ----------------------------------------------------------------

_BUILDER = (
    "import json, sys\n"
    "from tracing.demo.build import _ensure_built\n"
    "root, built = _ensure_built(sys.argv[1], progress=False, tiny=True)\n"
    "print(json.dumps({'root': str(root), 'built': built}))\n"
)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_concurrent(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "zoo"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(root)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    return root, results


def test_concurrent_builders_make_one_build(tiny_concurrent):
    root, results = tiny_concurrent
    for out, err, code in results:
        assert code == 0, err
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _, _ in results]
    assert all(r["root"] == str(root) for r in reports)
    assert sorted(r["built"] for r in reports) == [False, True]
    assert demo.is_built(root, tiny=True)
    assert not demo.is_built(root)  # a tiny build never passes for the real family
    info = json.loads((root / "lineage.json").read_text())
    assert tuple(info["models"]) == demo.MODEL_NAMES and info["recipe"] == "tiny"
    for name in demo.MODEL_NAMES:
        assert (root / name / "model.safetensors").exists()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert not (root / ".work").exists()


def test_a_build_writes_nothing_beside_its_folder(tiny_concurrent):
    """The folder named ($TRACING_DEMO_DIR or the root given) holds everything: no lock file or
    temp folder next to it, and no temp folder left inside it."""
    root, _ = tiny_concurrent
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]
    assert not [p.name for p in root.iterdir() if "building" in p.name or p.name.endswith(".old")]


def test_partial_build_is_replaced_and_rebuild_is_deterministic(tiny_concurrent, tmp_path, monkeypatch):
    """Also across worker counts: the reference build's two workers hand models to each other through
    their saved weights; this one trains every model in one process, parents kept in memory."""
    monkeypatch.setenv("TRACING_DEMO_WORKERS", "1")
    ref_root, _ = tiny_concurrent
    root = tmp_path / "zoo"
    root.mkdir()
    (root / _MARKER).write_text("crashed build\n")
    (root / "junk").write_text("x")
    (root / "base-a").mkdir()
    got, built = _ensure_built(root, progress=False, tiny=True)
    assert (got, built) == (root, True)
    assert not (root / "junk").exists() and demo.is_built(root, tiny=True)
    for name in demo.MODEL_NAMES:  # same tensors, byte for byte, as the other tiny build
        assert _sha(root / name / "model.safetensors") == _sha(ref_root / name / "model.safetensors"), name
    ref = json.loads((ref_root / "lineage.json").read_text())["models"]
    new = json.loads((root / "lineage.json").read_text())["models"]
    assert {n: r["final_eval_loss"] for n, r in new.items()} == {n: r["final_eval_loss"] for n, r in ref.items()}


def test_a_crashed_first_build_is_ours_to_replace(tmp_path):
    """What a first build killed midway leaves (its lock, its temp folder) does not make the folder
    foreign; anything else without the demo marker does."""
    from tracing.demo.build import BUILDING, LOCK_NAME, _check_replaceable
    root = tmp_path / "zoo"
    (root / f"{BUILDING}123" / "corpus").mkdir(parents=True)
    (root / LOCK_NAME).write_text("")
    _check_replaceable(root)
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(TracingError):
        _check_replaceable(root)


def test_foreign_directory_is_never_replaced(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(TracingError) as err:
        demo.ensure_built(root, progress=False, tiny=True)
    assert "not a demo model directory" in str(err.value)
    assert (root / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in root.iterdir()) == ["precious.txt"]
