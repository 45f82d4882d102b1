"""Qwen3.5 and Qwen3.5-MoE as published: the vision-language wrapper (``qwen3_5`` / ``qwen3_5_moe`` with a
``text_config``, the language model under ``model.language_model.``, a vision tower beside it), saved by
transformers' own ``Qwen3_5ForConditionalGeneration`` / ``Qwen3_5MoeForConditionalGeneration``. Its language
model reads as the same weights saved as a text model; cos finds a noisy copy and not an independent model;
a planted permutation is recovered; its GGUF conversion (as llama.cpp's converter treats the wrapper: the
language model alone, the wrapper's config.json beside the file) tests as the text model's GGUF does."""
import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from family_models import family_config, family_model, noisy
from test_frontier_families import main, run_stat
from test_gguf_families import REWRITTEN, write_converted
from tracing.align import align
from tracing.models import Checkpoint
from tracing.transforms import permute

#: wrapper -> its language model's family
WRAPPERS = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}
VISION = dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64)
LM = "model.language_model."


def save_wrapped(wrapper: str, text, folder):
    """``text``'s weights as the language model of a tiny ``wrapper`` model, saved by transformers."""
    cfg = AutoConfig.for_model(wrapper, text_config=text.config.to_dict(), vision_config=VISION,
                               tie_word_embeddings=text.config.tie_word_embeddings)
    vlm = AutoModelForImageTextToText.from_config(cfg)
    sd = vlm.state_dict()
    for k, v in text.state_dict().items():
        key = LM + k[len("model."):] if k.startswith("model.") else k
        assert key in sd, key
        sd[key] = v
    vlm.load_state_dict(sd)
    vlm.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(WRAPPERS))
def pair(request, tmp_path_factory):
    """``(wrapper, {tag: wrapper folder}, {tag: text folder})`` for a base, a noisy copy and an independent
    model (d = 64, 2 blocks: a linear-attention block, then a full-attention block; 4 experts)."""
    wrapper = request.param
    root = tmp_path_factory.mktemp(wrapper)
    cfg = family_config(WRAPPERS[wrapper], d=64, h=64, E=4)
    base = family_model(cfg, seed=1)
    wrapped, text = {}, {}
    for tag, model in (("base", base), ("ft", noisy(base, seed=2)), ("indep", family_model(cfg, seed=3))):
        model.save_pretrained(root / f"text-{tag}")
        text[tag] = root / f"text-{tag}"
        wrapped[tag] = save_wrapped(wrapper, model, root / f"vlm-{tag}")
    return wrapper, wrapped, text


def test_language_model_reads_as_the_text_model(pair):
    """Every language-model tensor (whole and by rows) read from the wrapper equals the text folder's read;
    the vision tower is not among them."""
    wrapper, wrapped, text = pair
    w, t = Checkpoint(wrapped["base"]), Checkpoint(text["base"])
    assert w.arch.wrapper == wrapper and w.arch.model_type == WRAPPERS[wrapper] and t.arch.wrapper is None
    assert w.arch.names() == t.arch.names() and len(w.arch.names()) > 20
    from safetensors import safe_open
    with safe_open(str(wrapped["base"] / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert any(k.startswith("model.visual.") for k in stored) and not any(k.startswith("model.layers.") for k in stored)
    for n in t.arch.names():
        a, b = w.get(n), t.get(n)
        assert torch.equal(a, b), n
        if a.dim() == 2:
            rows = sorted({0, a.shape[0] // 2, a.shape[0] - 1})
            assert torch.equal(w.get_rows(n, rows), b[rows]), n


def test_cos_finds_the_copy_not_the_independent_model(pair):
    """Wrapper against wrapper: the same per-block result as the text folders give, significant for the
    noisy copy and not for the independent model."""
    _, wrapped, text = pair
    w, t = {k: Checkpoint(v) for k, v in wrapped.items()}, {k: Checkpoint(v) for k, v in text.items()}
    ft, indep = run_stat("cos", w["base"], w["ft"]), run_stat("cos", w["base"], w["indep"])
    assert ft.log10_pvalue < -6 and indep.log10_pvalue > math.log10(0.01)
    assert ft.per_layer == run_stat("cos", t["base"], t["ft"]).per_layer
    assert indep.per_layer == run_stat("cos", t["base"], t["indep"]).per_layer


def test_planted_permutation_is_recovered(pair):
    """A --permute draw (residual stream, every MLP's units, each block's expert order) of the wrapped
    noisy copy is undone exactly by aligning it to the wrapped base; cos is significant after it."""
    _, wrapped, _ = pair
    base, ft = Checkpoint(wrapped["base"]), Checkpoint(wrapped["ft"])
    hidden = permute(ft, seed=11)
    al = align(base, hidden, progress=False)
    inv = lambda p: torch.argsort(p).numpy()
    assert np.array_equal(al.pi_e, inv(hidden.pi_e))
    for i, p in hidden.pi_x.items():
        assert np.array_equal(al.pi_x[i], inv(p)), i
    for key, p in al.pi_i.items():
        i, e = key if isinstance(key, tuple) else (key, None)
        hidden_key = key if e is None or e == "shared" else (i, int(inv(hidden.pi_x[i])[e]))
        assert np.array_equal(p, inv(hidden.pi_i[hidden_key])), key
    assert run_stat("cos", base, hidden).log10_pvalue > -2
    assert run_stat("cos", base, al.apply(hidden)).log10_pvalue < -6


def test_wrapper_against_gguf_as_text_model(pair, tmp_path):
    """The wrapper's GGUF (Q8_0, the wrapper's config.json beside it) holds what the text model's GGUF holds;
    cos of the wrapper against it gives, block by block, what the text model against its GGUF gives."""
    wrapper, wrapped, text = pair
    arch = REWRITTEN[WRAPPERS[wrapper]]
    g_w = Checkpoint(write_converted(wrapped["ft"], tmp_path / "gw", arch, "Q8_0"))
    g_t = Checkpoint(write_converted(text["ft"], tmp_path / "gt", arch, "Q8_0"))
    assert g_w.backend.format == "gguf" and g_w.arch.wrapper == wrapper and g_t.arch.wrapper is None
    for n in g_t.arch.names():
        assert torch.equal(g_w.get(n), g_t.get(n)), n
    for tag in ("ft", "base"):  # the wrapper against its own GGUF, and its base against it
        got = run_stat("cos", Checkpoint(wrapped[tag]), g_w)
        want = run_stat("cos", Checkpoint(text[tag]), g_t)
        assert got.per_layer == want.per_layer and got.log10_pvalue == want.log10_pvalue, tag
        assert got.log10_pvalue < -6


@pytest.mark.parametrize("pair", ["qwen3_5_moe"], indirect=True)  # one run of the command line: the MoE wrapper
def test_cli_wrapper_against_text_gguf(pair, tmp_path):
    """From the command line: the wrapper against the text model's GGUF of the noisy copy, permuted, is
    significant once aligned (not before), and the record says the vision tower was ignored."""
    import pickle
    wrapper, wrapped, text = pair
    g = write_converted(text["ft"], tmp_path / "g", REWRITTEN[WRAPPERS[wrapper]], "Q8_0")
    rec = tmp_path / "r.p"
    r = main("--base_model_id", wrapped["base"], "--ft_model_id", g, "--stat", "cos", "--permute", "--align",
             "--save", rec, "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    res = pickle.loads(rec.read_bytes())
    assert res["log10_pvalue"] > -2 and res["aligned"]["log10_pvalue"] < -6
    assert any(wrapper in n and "vision tower is ignored" in n for n in res["notes"]), res["notes"]



@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_tied_wrapper_rotated_or_folded(wrapper, tmp_path):
    """A wrapper with tied embeddings (its own tie_word_embeddings), rotated or its norms folded: the view is
    untied and still a wrapper; its logits (transformers' module, and the block engine as match and csh run
    it) are the language model's (d = 32: at d = 64 float32 rounding of the linear attention alone reaches
    1e-5 for some rotations, wrapped or not)."""
    from family_models import logits, random_ids, rel_diff
    from tracing.engine import Engine
    from tracing.models import load_module
    from tracing.transforms import NormsFolded, rotate
    cfg = family_config(WRAPPERS[wrapper], d=32, h=64, E=4, tie_word_embeddings=True)
    text = family_model(cfg, seed=5)
    text.tie_weights()
    ck = Checkpoint(save_wrapped(wrapper, text, tmp_path / "vlm"))
    assert ck.arch.tied and "lm_head.weight" not in ck.names()
    ids = random_ids(cfg.vocab_size)
    ref = logits(text, ids)
    views = [rotate(ck, seed=6), NormsFolded(ck)]
    for view in views:
        assert not view.arch.tied and view.arch.wrapper == wrapper and not view.config.tie_word_embeddings
        assert rel_diff(logits(load_module(view), ids), ref) <= 1e-5
    out = []
    Engine(progress=False).run(views, ids, on_logits=lambda _b, lg, _i: out.append(lg))
    for k in range(len(views)):
        assert rel_diff(torch.cat([o[k] for o in out]), ref) <= 1e-5
