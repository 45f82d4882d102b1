"""Rows of a transformed view read as rows of the source: ``view.get_rows(name, idx)`` equals
``view.get(name)[idx]`` for every tensor (bit for bit, except a rotation's products, which the matrix
kernel may sum in another order for a few rows: equal to float32 rounding), and the source is asked for
whole tensors only where the transform mixes rows (a rotated writer of the residual stream) and for the
norm gains folded in."""
import numpy as np
import pytest
import torch

from family_models import family_config, family_model
from helpers import tiny_config, tiny_model
from tracing.arch import NORM_ROLES, WRITE_RESIDUAL
from tracing.models import DictSource
from tracing.transforms import NormsFolded, VocabOrder, permute, rotate

MIXED_ROWS = WRITE_RESIDUAL | {"o_bias", "down_bias", "expert_down_bias"}  # a rotation mixes their rows


class Reads(DictSource):
    """A state dict that records the tensors read whole and by rows."""

    def __init__(self, model):
        super().__init__({k: v.detach() for k, v in model.state_dict().items()}, model.config, "m")
        self.whole, self.rows = [], []

    def get(self, name, dtype=torch.float32):
        self.whole.append(name)
        return super().get(name, dtype)

    def get_rows(self, name, index, dtype=torch.float32):
        index = np.asarray(index)
        assert np.all(np.diff(index) > 0), "rows are asked for in file order"
        self.rows.append(name)
        return DictSource.get(self, name, dtype)[torch.as_tensor(index, dtype=torch.long)]


MODELS = {
    "llama": lambda: tiny_model(tiny_config(d=64, h=128, L=2, V=64), seed=1),
    "gemma4_text": lambda: family_model(family_config("gemma4_text", hidden_size_per_layer_input=8, V=64), seed=3),
    "qwen3_moe": lambda: family_model(family_config("qwen3_moe", V=64), seed=2),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return request.param, MODELS[request.param]()


def _views(source):
    views = {"permute": permute(source, seed=4), "fold": NormsFolded(source),
             "vocab": VocabOrder(source, torch.randperm(source.arch.V, generator=torch.Generator().manual_seed(0)))}
    if source.arch.rotation_problem() is None:
        views["rotate"] = rotate(source, seed=4)
    return views


@pytest.mark.parametrize("kind", ["permute", "rotate", "fold", "vocab"])
def test_rows_of_a_view_equal_its_whole_tensor_rows_and_read_rows(model, kind):
    family, m = model
    src = Reads(m)
    views = _views(src)
    if kind not in views:  # a family that cannot be rotated says why (and --rotate refuses it in one line)
        assert kind == "rotate" and src.arch.rotation_problem(), family
        return
    view = views[kind]
    g = np.random.default_rng(0)
    for name in view.names():
        n = view.arch.shape(name)[0]
        idx = np.sort(g.choice(n, size=max(1, n // 3), replace=False))
        src.whole.clear()
        rows = view.get_rows(name, idx)
        read_whole = [w for w in src.whole if src.arch.ref(w).role not in NORM_ROLES | {"final_norm"}]
        whole = view.get(name)[torch.as_tensor(idx)]
        assert rows.dtype == whole.dtype and rows.shape == whole.shape, (family, kind, name)
        if kind == "rotate":
            torch.testing.assert_close(rows, whole, rtol=1e-6, atol=1e-6 * float(whole.abs().max()), msg=(family, name))
        else:
            assert torch.equal(rows, whole), (family, kind, name)
        role = view.arch.ref(name).role
        if kind == "rotate" and role in MIXED_ROWS:
            continue
        assert not read_whole, (family, kind, name, read_whole)



def test_rows_of_a_transformed_checkpoint_equal_its_whole_tensor_rows(tmp_path):
    """The same from bfloat16 safetensors files (rows read alone; vectors over the stream as rows of one
    value), on the Llama model."""
    from tracing.models import Checkpoint
    family = "llama"
    MODELS[family]().to(torch.bfloat16).save_pretrained(tmp_path / "m")
    ckpt = Checkpoint(str(tmp_path / "m"))
    g = np.random.default_rng(1)
    for kind, view in (("permute", permute(ckpt, seed=2)), ("rotate", rotate(ckpt, seed=2))):
        for name in view.names():
            n = view.arch.shape(name)[0]
            idx = np.sort(g.choice(n, size=max(1, n // 3), replace=False))
            rows, whole = view.get_rows(name, idx), view.get(name)[torch.as_tensor(idx)]
            if kind == "rotate":
                torch.testing.assert_close(rows, whole, rtol=1e-6, atol=1e-6 * float(whole.abs().max()), msg=name)
            else:
                assert torch.equal(rows, whole), name
