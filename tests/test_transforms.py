"""Every transform leaves the function unchanged: logits before and after, float32."""
import pytest
import torch

from helpers import KINDS, logits, random_ids, rel_diff, tiny_config, tiny_model
from tracing.models import from_module
from tracing.transforms import Interpolated, Permuted, permute, random_permutations, rotate, transform_module

TOL = 1e-5


@pytest.fixture(scope="module", params=KINDS)
def model(request):
    return tiny_model(tiny_config(request.param), seed=3)


@pytest.mark.parametrize("which", ["mlp", "residual", "both", "rotation", "both_then_rotation"])
def test_function_preserved(model, which):
    ids = random_ids(model.config.vocab_size)
    ref = logits(model, ids)

    def make(src):
        if which == "mlp":
            return permute(src, seed=5, residual=False)
        if which == "residual":
            return permute(src, seed=5, mlp=False)
        if which == "both":
            return permute(src, seed=5)
        if which == "rotation":
            return rotate(src, seed=5)
        return rotate(permute(src, seed=5), seed=6)

    out = transform_module(model, make)
    assert rel_diff(ref, logits(out, ids)) <= TOL
    # the weights really changed (a no-op transform would pass the logits check too)
    changed = max((a - b).abs().max().item() for a, b in
                  zip(model.model.layers[0].mlp.up_proj.weight, out.model.layers[0].mlp.up_proj.weight))
    assert changed > 1e-3


def test_permutation_indices_change_rows(model):
    src = from_module(model)
    pi_e, pi_i = random_permutations(src.arch, seed=1)
    view = Permuted(src, pi_e, pi_i)
    up = src.arch.block_name(0, "up")
    assert torch.equal(view.get(up), src.get(up)[pi_i[0]][:, pi_e])


def test_rotation_unties_tied_model():
    model = tiny_model(tiny_config("tied"), seed=4)
    src = from_module(model)
    assert src.arch.tied
    rot = rotate(src, seed=2)
    assert not rot.arch.tied and "lm_head.weight" in rot.names()
    out = transform_module(model, lambda s: rotate(s, seed=2))
    assert out.config.tie_word_embeddings is False
    assert out.lm_head.weight.data_ptr() != out.model.embed_tokens.weight.data_ptr()
    ids = random_ids(model.config.vocab_size)
    assert rel_diff(logits(model, ids), logits(out, ids)) <= TOL


def test_tied_permutation_keeps_one_tensor():
    model = tiny_model(tiny_config("tied"), seed=4)
    out = transform_module(model, lambda s: permute(s, seed=9))
    assert out.lm_head.weight.data_ptr() == out.model.embed_tokens.weight.data_ptr()
    ids = random_ids(model.config.vocab_size)
    assert rel_diff(logits(model, ids), logits(out, ids)) <= TOL


def test_transform_module_leaves_input_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    transform_module(model, lambda s: rotate(permute(s, seed=1), seed=2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_interpolation_endpoints_and_midpoint():
    cfg = tiny_config("llama")
    a, b = tiny_model(cfg, seed=1), tiny_model(cfg, seed=2)
    sa, sb = from_module(a), from_module(b)
    up = sa.arch.block_name(1, "up")
    q = sa.arch.block_name(1, "q")
    emb = "model.embed_tokens.weight"
    mid = Interpolated(sa, sb, 0.5)
    assert torch.allclose(mid.get(up), (sa.get(up) + sb.get(up)) / 2)
    assert torch.equal(mid.get(q), sa.get(q))  # attention stays θ₁ without --attn
    assert torch.equal(mid.get(emb), sa.get(emb))
    full = Interpolated(sa, sb, 0.5, attn=True, emb=True)
    assert torch.allclose(full.get(q), (sa.get(q) + sb.get(q)) / 2)
    assert torch.allclose(full.get(emb), (sa.get(emb) + sb.get(emb)) / 2)
    one = transform_module(a, lambda s: Interpolated(s, sb, 1.0, attn=True, emb=True))
    ids = random_ids(cfg.vocab_size)
    assert rel_diff(logits(b, ids), logits(one, ids)) <= TOL


def test_interpolation_shared_vocabulary():
    a = tiny_model(tiny_config("llama", V=128), seed=1)
    b = tiny_model(tiny_config("llama", V=136), seed=2)
    path = Interpolated(from_module(a), from_module(b), 0.25, emb=True)
    e = path.get("model.embed_tokens.weight")
    ea, eb = a.model.embed_tokens.weight.detach(), b.model.embed_tokens.weight.detach()
    assert e.shape == ea.shape
    assert torch.allclose(e, torch.lerp(ea, eb[:128], 0.25))
