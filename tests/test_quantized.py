"""Quantized checkpoints as weight sources: GGUF files written like llama.cpp's converter, and GPTQ
and AWQ folders packed in their own layouts, all from the trained demo family."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import logits, random_ids, rel_diff, tiny_config, tiny_model
from quant_writers import write_gguf
from tracing import demo as demo_family
from tracing.api import run_pair
from tracing.errors import TracingError
from tracing.models import Checkpoint, from_module, load_module
from tracing.options import Options

ROOT = Path(__file__).resolve().parent.parent
SIG = math.log10(0.01)
DATA = dict(dataset="demo", num_samples=4, block_size=128)
QTYPES = ("F16", "Q8_0", "Q4_0")


@pytest.fixture(scope="module")
def demo():
    demo_family.ensure_built(progress=False)
    return {n: demo_family.resolve_demo(f"demo:{n}") for n in ("base-a", "a-docs", "base-b")}


@pytest.fixture(scope="module")
def ggufs(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return {(n, q): write_gguf(demo[n], root / f"{n}-{q}" / f"{n}.{q}.gguf", q)
            for n in demo for q in QTYPES}


def _block_bound(ref: torch.Tensor, qtype: str) -> torch.Tensor:
    """Largest rounding error the format allows per element (blocks of 32 along rows)."""
    if qtype == "F16" or ref.ndim == 1:
        return ref.abs() * 1e-3 + 1e-7
    amax = ref.reshape(ref.shape[0], -1, 32).abs().amax(-1, keepdim=True)
    # Q8_0: d = amax/127, error ≤ d/2; Q4_0: d = amax/8, error ≤ d (the far end is clipped at +7);
    # plus d's own rounding to float16 (relative 2^-11, times at most 127 or 8 steps)
    d = amax / 127 * 0.57 if qtype == "Q8_0" else amax / 8 * 1.01
    return (d + 1e-6).expand(-1, -1, 32).reshape(ref.shape)


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantized_tensors_match_within_the_format_error(demo, ggufs, qtype):
    ref, ck = Checkpoint(demo["base-a"]), Checkpoint(ggufs["base-a", qtype])
    assert ck.quantized is not None and ck.arch == ref.arch
    for name in ref.names():
        a, b = ref.get(name), ck.get(name)
        assert b.dtype == torch.float32 and b.shape == a.shape, name
        assert bool(((a - b).abs() <= _block_bound(a, qtype)).all()), name


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_rotary_permutation_is_undone_exactly(tmp_path, kind):
    """An F32 GGUF of a GQA model computes exactly the original function (llama: Q and K rows
    restored; qwen2: not permuted, with q/k/v biases)."""
    model = tiny_model(tiny_config(kind, L=2, num_key_value_heads=2), seed=3)
    model.save_pretrained(tmp_path / "hf")
    f = write_gguf(tmp_path / "hf", tmp_path / "g" / "m.gguf", "F32")
    ck = Checkpoint(f)
    assert (ck.arch.model_type, ck.arch.n_heads, ck.arch.n_kv_heads) == (kind, 4, 2)
    ids = random_ids(128)
    assert rel_diff(logits(model, ids), logits(load_module(ck), ids)) <= 1e-5


def test_tied_model_without_output_tensor(tmp_path):
    model = tiny_model(tiny_config("tied", L=2), seed=4)
    model.save_pretrained(tmp_path / "hf")
    ck = Checkpoint(write_gguf(tmp_path / "hf", tmp_path / "g" / "m.gguf", "F32"))
    assert ck.arch.tied
    ids = random_ids(128)
    assert rel_diff(logits(model, ids), logits(load_module(ck), ids)) <= 1e-5


def test_config_tokenizer_and_provenance_from_metadata(demo, ggufs):
    ck = Checkpoint(ggufs["base-a", "Q4_0"])
    assert ck.config.hidden_size == 64 and ck.config.num_hidden_layers == 4 and not ck.config.tie_word_embeddings
    text = "def parse(text):\n    return text.split()  # words"
    ours, ref = ck.tokenizer(), Checkpoint(demo["base-a"]).tokenizer()
    assert ours(text).input_ids == ref(text).input_ids
    assert ours.decode(ours(text).input_ids, skip_special_tokens=True) == text
    prov = ck.provenance()
    assert prov["quantization"] == {"format": "gguf", "types": "Q4_0 ×30, F32 ×9"}
    assert prov["files"][0]["file"] == "base-a.Q4_0.gguf" and len(prov["files"][0]["sha256"]) == 64


def test_spec_picks_one_of_several_files(ggufs, tmp_path):
    import shutil
    folder = tmp_path / "several"
    folder.mkdir()
    for q in ("Q8_0", "Q4_0"):
        shutil.copy(ggufs["a-docs", q], folder)
    with pytest.raises(TracingError, match="several GGUF files.*:<file>.gguf"):
        Checkpoint(folder)
    ck = Checkpoint(f"{folder}:a-docs.Q8_0.gguf")
    assert ck.weight_files() == [folder / "a-docs.Q8_0.gguf"]
    with pytest.raises(TracingError, match="no file nope.gguf"):
        Checkpoint(f"{folder}:nope.gguf")


@pytest.mark.parametrize("stat", ["cos", "emb", "match"])
def test_statistics_on_gguf(ggufs, demo, stat):
    """Quantization is a derivation: (model, its GGUF) and (base, GGUF of its fine-tune) are
    dependent; (base, GGUF of an independent model) is not."""
    opts = Options(stat=[stat], **DATA)
    own = run_pair(str(demo["a-docs"]), str(ggufs["a-docs", "Q4_0"]), opts, progress=False)[0]
    ft = run_pair(str(demo["base-a"]), str(ggufs["a-docs", "Q4_0"]), opts, progress=False)[0]
    ind = run_pair(str(demo["base-a"]), str(ggufs["base-b", "Q8_0"]), opts, progress=False)[0]
    assert own["log10_pvalue"] < -6 and ft["log10_pvalue"] < -6
    assert ind["log10_pvalue"] > SIG
    assert ft["models"]["ft"]["quantization"]["types"] == "Q4_0 ×30, F32 ×9"


def test_eval_of_q8_gguf_is_within_two_percent(ggufs, demo):
    rec = run_pair(str(demo["a-docs"]), str(ggufs["a-docs", "Q8_0"]), Options(stat=["cos"], eval=True, **DATA),
                   progress=False)[0]
    e = rec["eval"]
    assert abs(e["ft loss"] - e["base loss"]) / e["base loss"] < 0.02
    assert e["ft ppl"] < 0.5 * 1024  # a trained model, far below the vocabulary size


def _main(tmp_path, ft) -> subprocess.CompletedProcess:
    out = tmp_path / "r.p"
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--base_model_id", "demo:base-a",
                        "--ft_model_id", str(ft), "--stat", "cos", "--save", str(out), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert not out.exists()
    return r


def test_truncated_gguf_is_a_one_line_error(ggufs, tmp_path):
    data = Path(ggufs["a-docs", "Q8_0"]).read_bytes()
    for name, blob in (("cut.gguf", data[: len(data) // 2]), ("head.gguf", data[:40]), ("junk.gguf", b"x" * 4096)):
        bad = tmp_path / name
        bad.write_bytes(blob)
        with pytest.raises(TracingError, match=name) as e:
            Checkpoint(bad)
        assert "\n" not in str(e.value)
    r = _main(tmp_path, tmp_path / "cut.gguf")
    assert r.returncode == 2, r.stderr[-1500:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "cut.gguf" in lines[0], r.stderr[-1500:]


def test_unsupported_quantization_type_is_a_one_line_error(demo, tmp_path):
    """Q8_1 has no dequantizer in the gguf package: the error names the file and the type."""
    import gguf
    f = write_gguf(demo["a-docs"], tmp_path / "q81" / "m.gguf", "F32", with_tokenizer=False)
    r = gguf.GGUFReader(f)
    w = gguf.GGUFWriter(str(tmp_path / "q81.gguf"), "llama")
    for key, field in r.fields.items():
        if key.startswith(("llama.", "general.architecture")) and key != "general.architecture":
            w.add_key_value(key, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for t in r.tensors:
        a = np.asarray(t.data)
        if t.name == "blk.1.ffn_up.weight":  # 32 values per 40-byte Q8_1 block
            rows, cols = a.shape
            w.add_tensor(t.name, np.zeros((rows, cols // 32 * 40), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_1)
        else:
            w.add_tensor(t.name, a)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    res = _main(tmp_path, tmp_path / "q81.gguf")
    assert res.returncode == 2
    line = res.stderr.strip()
    assert "\n" not in line and "q81.gguf" in line and "Q8_1" in line, line


# ------------------------------------------------------------------------------------------
# GPTQ and AWQ
# ------------------------------------------------------------------------------------------
AWQ_SPREAD = 2.0  # log-normal spread of the migrated per-channel scales (e^±4 at the extremes)


@pytest.fixture(scope="module")
def packed(demo, tmp_path_factory):
    from quant_writers import write_awq, write_gptq
    root = tmp_path_factory.mktemp("packed")
    out = {}
    for n in ("a-docs", "base-b"):
        out["gptq", n] = write_gptq(demo[n], root / f"gptq-{n}")
        out["awq", n] = write_awq(demo[n], root / f"awq-{n}", spread=AWQ_SPREAD)
    return out


def test_gptq_dequantizes_with_its_group_index(demo, packed):
    """Every layer within int4's rounding of its group range; g_idx (act-order) really is used."""
    from safetensors import safe_open

    from tracing.sources.gptq import dequantize_gptq
    ref, ck = Checkpoint(demo["a-docs"]), Checkpoint(packed["gptq", "a-docs"])
    assert ck.provenance()["quantization"]["types"] == "GPTQ int4 g32 ×28, F16 ×11"
    for name in ref.names():
        a, b = ref.get(name), ck.get(name)
        tol = 1e-3 * a.abs().max() if a.ndim == 1 or "layers" not in name else 0.51 * a.abs().max() * 2 / 15
        assert (a - b).abs().max() <= tol + 1e-6, name
    mod = "model.layers.0.mlp.up_proj"
    with safe_open(packed["gptq", "a-docs"] / "model.safetensors", framework="pt") as h:
        qw, qz, sc = (h.get_tensor(f"{mod}.{p}") for p in ("qweight", "qzeros", "scales"))
    wrong = dequantize_gptq(qw, qz, sc, None, 4, 32)  # ignoring g_idx
    a = ref.get(f"{mod}.weight")
    assert (wrong - a).abs().max() > 5 * (ck.get(f"{mod}.weight") - a).abs().max()


def test_awq_dequantizes_the_migrated_weights_and_folding_undoes_the_migration(demo, packed):
    import json

    from quant_writers import _state, awq_migrate
    from tracing.transforms import fold_norms
    cfg = json.loads((demo["a-docs"] / "config.json").read_text())
    migrated = awq_migrate(_state(demo["a-docs"]), cfg, spread=AWQ_SPREAD)
    ref, ck = Checkpoint(demo["a-docs"]), Checkpoint(packed["awq", "a-docs"])
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.3.self_attn.k_proj.weight"):
        a = migrated[name]
        assert ((ck.get(name) - a).abs().max() / a.abs().max()) < 0.07
    # migration changes the rows' directions; folded, they are the original folded rows up to row scale
    # (exactly so before quantization)
    from tracing.models import DictSource
    cos = torch.nn.functional.cosine_similarity
    mig = DictSource(migrated, ref.config)
    for i in range(ref.arch.L):
        for role in ("q", "k", "v", "gate", "up"):
            name = ref.arch.block_name(i, role)
            assert cos(ref.get(name), mig.get(name)).median() < 0.5
            assert cos(fold_norms(ref).get(name), fold_norms(mig).get(name)).min() > 1 - 1e-5
    up = ref.arch.block_name(1, "up")
    raw, folded = cos(ref.get(up), ck.get(up)).median(), cos(fold_norms(ref).get(up), fold_norms(ck).get(up)).median()
    assert folded > raw + 0.3


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
@pytest.mark.parametrize("stat", ["cos", "emb", "match"])
def test_statistics_on_packed_int4(demo, packed, fmt, stat):
    opts = Options(stat=[stat], **DATA)
    own = run_pair(str(demo["a-docs"]), str(packed[fmt, "a-docs"]), opts, progress=False)[0]
    ft = run_pair(str(demo["base-a"]), str(packed[fmt, "a-docs"]), opts, progress=False)[0]
    ind = run_pair(str(demo["base-a"]), str(packed[fmt, "base-b"]), opts, progress=False)[0]
    assert own["log10_pvalue"] < -6 and ft["log10_pvalue"] < -6
    assert ind["log10_pvalue"] > SIG
    assert ft["transforms"]["fold_norms"] is (fmt == "awq")  # automatic for AWQ only
    assert ft["models"]["ft"]["quantization"]["format"] == fmt


def test_awq_cos_needs_folding(demo, packed):
    kw = dict(stat=["cos"])
    raw = run_pair(str(demo["base-a"]), str(packed["awq", "a-docs"]), Options(fold_norms=False, **kw), progress=False)[0]
    folded = run_pair(str(demo["base-a"]), str(packed["awq", "a-docs"]), Options(**kw), progress=False)[0]
    assert folded["transforms"]["fold_norms"] and not raw["transforms"]["fold_norms"]
    assert folded["log10_pvalue"] < -6
    assert raw["log10_pvalue"] > folded["log10_pvalue"] + 50  # weaker: migrated rows mis-match
    assert min(r["statistic"] for r in raw["per_layer"]) < min(r["statistic"] for r in folded["per_layer"])


def test_fold_norms_option_on_float_models(demo):
    rec = run_pair(str(demo["base-a"]), str(demo["a-docs"]), Options(stat=["cos"], fold_norms=True), progress=False)[0]
    assert rec["transforms"]["fold_norms"] is True and rec["log10_pvalue"] < -6
    assert Options(fold_norms=None).key() == Options().key() != Options(fold_norms=True).key()


def test_gptq_without_scales_is_a_one_line_error(demo, tmp_path):
    from quant_writers import write_gptq
    bad = write_gptq(demo["a-docs"], tmp_path / "noscales", drop="scales")
    r = _main(tmp_path, bad)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("error:") and "scales" in line and "noscales" in line, line


@pytest.mark.parametrize("kind", ["llama_bias", "tied", "qwen2"])
def test_fold_norms_preserves_the_function(kind):
    from tracing.transforms import fold_norms
    model = tiny_model(tiny_config(kind, L=2), seed=5)
    view = fold_norms(from_module(model))
    ids = random_ids(128)
    assert rel_diff(logits(model, ids), logits(load_module(view), ids)) <= 1e-5
    assert torch.equal(view.get(view.arch.block_name(0, "in_norm")), torch.ones(view.arch.d))


def test_generation_from_a_gguf_file(ggufs):
    from tracing.generation import generate_samples
    out = generate_samples(str(ggufs["a-docs", "Q8_0"]), num_samples=2, max_new_tokens=8, device="cpu", progress=False)
    assert len(out["samples"]) == 2 and all(s["text"] for s in out["samples"])


@pytest.mark.parametrize("fmt", ["gguf", "awq"])
def test_cos_is_calibrated_on_quantized_independent_pairs(tmp_path, fmt):
    """30 independent pairs (float base vs a quantized independent model, AWQ folded as in practice):
    cos p-values are uniform (KS)."""
    from scipy.stats import kstest

    from quant_writers import write_awq
    from tracing.stats import Context, get
    from tracing.transforms import fold_norms
    cos = get("cos").fn
    ctx = Context(Options(stat=["cos"]), progress=False)
    pvals = []
    for k in range(30):
        cfg = tiny_config("llama", d=32, h=64, L=2, V=64)
        a, b = tiny_model(cfg, seed=100 + k), tiny_model(cfg, seed=500 + k)
        b.save_pretrained(tmp_path / f"b{k}")
        if fmt == "gguf":
            ft = Checkpoint(write_gguf(tmp_path / f"b{k}", tmp_path / f"g{k}" / "b.gguf", "Q4_0", with_tokenizer=False))
            base = from_module(a)
        else:
            ft = fold_norms(Checkpoint(write_awq(tmp_path / f"b{k}", tmp_path / f"awq{k}", seed=k, spread=AWQ_SPREAD)))
            base = fold_norms(from_module(a))
        pvals.append(10 ** cos(ctx, base, ft).log10_pvalue)
    assert kstest(pvals, "uniform").pvalue > 0.01, sorted(pvals)


def test_hub_spec_with_a_gguf_file_suffix(ggufs, tmp_path, monkeypatch):
    """``org/name:file.gguf`` from the local hub cache (offline): only that file is used."""
    import shutil

    import huggingface_hub.constants as hc
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-GGUF"
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    for q in ("Q8_0", "Q4_0"):
        shutil.copy(ggufs["a-docs", q], snap)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ck = Checkpoint("org/tiny-GGUF:a-docs.Q4_0.gguf")
    assert ck.weight_files() == [snap / "a-docs.Q4_0.gguf"] and ck.resolved.repo_id == "org/tiny-GGUF"
    assert ck.provenance()["quantization"]["types"].startswith("Q4_0")
    with pytest.raises(TracingError, match="several GGUF files"):
        Checkpoint("org/tiny-GGUF")


def test_large_tensors_are_dequantized_in_row_chunks(ggufs, demo, monkeypatch):
    import tracing.sources.gguf as g
    ck = Checkpoint(ggufs["base-a", "Q8_0"])
    whole = ck.get("model.embed_tokens.weight")
    monkeypatch.setattr(g, "CHUNK_ELEMENTS", 1000)  # 1024 x 64: chunks of 15 rows
    assert torch.equal(ck.get("model.embed_tokens.weight"), whole)


@pytest.mark.parametrize("family", ["gemma", "gemma2", "phi3", "qwen3_moe"])
def test_fold_norms_preserves_the_function_on_other_families(family):
    """Gains of the norms that feed layers are folded (Gemma's 1 + w included); post-norms stay."""
    from family_models import family_config, family_model
    from family_models import logits as family_logits
    from family_models import random_ids as family_ids
    from family_models import rel_diff as family_diff
    from tracing.transforms import fold_norms
    model = family_model(family_config(family), seed=5)
    view = fold_norms(from_module(model))
    ids = family_ids(model.config.vocab_size)
    assert family_diff(family_logits(model, ids), family_logits(load_module(view), ids)) <= 1e-5
    gain = view.get(view.arch.block_name(0, "post_norm")) + view.arch.gain_offset
    assert torch.equal(gain, torch.ones(view.arch.d))


def test_fold_norms_refused_for_layernorm_bias():
    from family_models import family_config, family_model
    from tracing.transforms import fold_norms
    with pytest.raises(TracingError, match="not function-preserving for gpt_neox"):
        fold_norms(from_module(family_model(family_config("gpt_neox"), seed=1)))
