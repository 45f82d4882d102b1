"""Gemma 4's per-layer inputs computed block by block in the engine: logits and loss as
transformers' whole-model forward, the values as the whole computation of every block's inputs at
once, and only the rows of the tokens present read from the per-layer embedding."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from family_models import family_config, family_model, logits, random_ids, rel_diff
from tracing.arch import gemma4
from tracing.engine import Engine, _Skeleton, _forward_config
from tracing.evaluate import lm_losses
from tracing.models import DictSource, from_module
from tracing.transforms import permute

TOL = 1e-5  # the engine against transformers (tests/test_arch_families.py)


class Reads(DictSource):
    """A weight source that records which tensors were read whole and which by rows."""

    def __init__(self, model):
        super().__init__({k: v.detach() for k, v in model.state_dict().items()}, model.config, "g4")
        self.whole, self.rows = [], []

    def get(self, name, dtype=torch.float32):
        self.whole.append(name)
        return super().get(name, dtype)

    def get_rows(self, name, index, dtype=torch.float32):
        self.rows.append((name, np.asarray(list(index))))
        return super().get(name, dtype)[torch.as_tensor(np.asarray(list(index)), dtype=torch.long)]


def whole_inputs(lane, ids, x, dtype=torch.float32):
    """Every block's per-layer input at once, [N, T, L, p], as transformers computes it."""
    a, P = lane.arch, lane.arch.dim("ple")
    N, T = ids.shape
    tok = F.embedding(ids, lane.get(gemma4.PLE_EMBED, dtype)) * torch.tensor(P ** 0.5).to(dtype)
    proj = F.linear(x, lane.get(gemma4.PLE_PROJ, dtype)) * a.d ** -0.5
    g = lane.get(gemma4.PLE_NORM, dtype)
    normed = proj.reshape(N, T, a.L, P)
    normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + 1e-6) * g
    return (normed + tok.reshape(N, T, a.L, P)) * 2.0 ** -0.5


@pytest.fixture(scope="module", params=[8, 16])
def model(request):
    c = family_config("gemma4_text", hidden_size_per_layer_input=request.param, V=64)
    return family_model(c, seed=3)


def test_logits_and_loss_equal_the_whole_model(model):
    ids = random_ids(model.config.vocab_size, n=5, T=24, seed=1)
    ref = logits(model, ids)
    for lane in (from_module(model), permute(from_module(model), seed=5)):
        out = []
        Engine(progress=False, batch_size=2).run([lane], ids, on_logits=lambda _b, lg, _i: out.append(lg[0]))
        assert rel_diff(ref, torch.cat(out)) <= TOL
    with torch.no_grad():
        want = float(model(ids, labels=ids).loss)
    assert abs(lm_losses(Engine(progress=False, batch_size=2), [from_module(model)], ids)[0] - want) <= TOL * want


def test_block_inputs_equal_the_whole_computation_and_read_token_rows(model):
    """Block i's input, computed when block i runs, equals slice i of all blocks' inputs computed at
    once (the embedding rows exactly; the projection up to float32 rounding: a matrix product of
    another width may sum in another order); the per-layer embedding and projection are read by
    rows only (the tokens present; block i's p rows), never whole."""
    lane = Reads(model)
    ids = random_ids(model.config.vocab_size, n=3, T=16, seed=2)
    ids[0, :4] = 5  # repeated tokens: each row read once
    skel = _Skeleton(_forward_config(lane), "cpu", torch.float32)
    x = torch.randn(3, 16, lane.arch.d, generator=torch.Generator().manual_seed(4))
    want = whole_inputs(lane, ids, x)
    lane.whole.clear()
    kwargs = gemma4.layer_inputs(lane, skel, ids, x, torch.float32)
    x.zero_()  # the engine overwrites the hidden states in place: the inputs come from the embedded input
    P, L = lane.arch.dim("ple"), lane.arch.L
    for i in range(L):
        for b in (slice(0, 2), slice(2, 3)):
            got = kwargs(i, b)["per_layer_input"]
            assert got.shape == (b.stop - b.start, 16, P)
            assert torch.allclose(got, want[b, :, i], rtol=1e-6, atol=1e-6), i
    assert gemma4.PLE_EMBED not in lane.whole and gemma4.PLE_PROJ not in lane.whole
    embed_reads = [idx for name, idx in lane.rows if name == gemma4.PLE_EMBED]
    proj_reads = [idx for name, idx in lane.rows if name == gemma4.PLE_PROJ]
    assert len(embed_reads) == len(proj_reads) == L  # once per block, not per batch
    assert all(np.array_equal(idx, np.unique(ids.numpy())) for idx in embed_reads)
    assert [idx.tolist() for idx in proj_reads] == [list(range(i * P, (i + 1) * P)) for i in range(L)]


def test_exact_parts_bit_for_bit(model):
    """With zero projection weights (no matrix product to sum in another order) every block's input
    equals the whole computation's bit for bit: the embedding rows, their scale and the sum are exact."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd[gemma4.PLE_PROJ].zero_()
    lane = DictSource(sd, model.config, "g4")
    ids = random_ids(model.config.vocab_size, n=2, T=16, seed=3)
    skel = _Skeleton(_forward_config(lane), "cpu", torch.float32)
    x = torch.randn(2, 16, lane.arch.d, generator=torch.Generator().manual_seed(5))
    want = whole_inputs(lane, ids, x)
    kwargs = gemma4.layer_inputs(lane, skel, ids, x, torch.float32)
    for i in range(lane.arch.L):
        assert torch.equal(kwargs(i, slice(0, 2))["per_layer_input"], want[:, :, i])


def test_saved_config_with_two_digit_block_keys_is_read(tmp_path):
    """transformers writes ``per_layer_config`` keys zero-padded ("01") when one has two digits: block 1's
    global head size is read from them."""
    from tracing.models import Checkpoint
    L = 12
    c = family_config("gemma4_text", L=L, layer_types=["sliding_attention", "full_attention"] * (L // 2), V=64)
    m = family_model(c, seed=2)
    m.save_pretrained(tmp_path / "m")
    assert '"01"' in (tmp_path / "m" / "config.json").read_text()
    want = [layer.self_attn.q_proj.weight.shape[0] // c.num_attention_heads for layer in m.model.layers]
    assert len(set(want)) == 2
    assert [hd for hd, *_ in Checkpoint(tmp_path / "m").arch.dim("layers")] == want
