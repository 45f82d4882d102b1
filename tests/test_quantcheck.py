"""Quantization faithfulness: faithful GGUF / AWQ / FP8 quantizations pass, a quantized fine-tune
checked against its base is "altered" (naming the tensors), one changed weight is found; K-quants
get the cell check under their stored scales, GPTQ a stated wider cell for its error feedback; the
model-card relation follows the check."""
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from helpers import save_trio
from quant_writers import write_awq, write_fp8, write_gguf, write_gptq
from tracing import quantcheck as quantcheck_cli
from tracing.cli_util import run_cli
from tracing.evidence.quant import GGUF_RTN, quantcheck, rtn_check

RTN_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantcheck")
    return {"root": root, **save_trio(root)}


def test_rtn_check_exact_cells():
    rng = np.random.default_rng(0)
    x = rng.normal(size=4096)
    d = np.full_like(x, np.abs(x).max() / 127)
    code = np.rint(x / d)
    assert rtn_check(x, code * d, d, 0 * d, -128, 127) == (1.0, 1.0)
    code[17] += 1  # one code off by one step
    eq, cell = rtn_check(x, code * d, d, 0 * d, -128, 127)
    assert cell == 1 - 1 / 4096 and eq == cell


@pytest.mark.parametrize("qtype", RTN_TYPES)
def test_rtn_never_flags_gguf_pys_quantizer_and_finds_small_changes(qtype):
    """Over 30 seeds of heavy-tailed tensors: gguf-py's own quantization is always faithful (the cell
    check is exact, not statistical), and noise of a tenth of a quantization step is always found."""
    import gguf
    from gguf.quants import quantize
    from tracing.evidence.quant import gguf_planes
    t = gguf.GGMLQuantizationType[qtype]
    for seed in range(30):
        rng = np.random.default_rng(seed)
        x = (rng.standard_t(3, size=(8, 256)) * 10.0 ** rng.uniform(-4, 1)).astype(np.float32)
        x[0, :32] = 0.0  # an all-zero block
        x[1, :32] = 0.5  # a constant block
        deq, d, m = gguf_planes(quantize(x, t), t)
        lo, hi, _ = GGUF_RTN[qtype]
        assert rtn_check(x, deq, d, m, lo, hi)[1] == 1.0, seed
        step = np.abs(d).mean()
        y = x + (0.1 * step * rng.standard_normal(x.shape)).astype(np.float32)
        assert rtn_check(y, deq, d, m, lo, hi)[1] < 1.0, seed


@pytest.mark.parametrize("qtype", RTN_TYPES + ("F16",))
def test_gguf_faithful_and_quantized_finetune_altered(models, qtype):
    root = models["root"]
    good = write_gguf(models["base"], root / f"base-{qtype}.gguf", qtype)
    res = quantcheck(models["base"], str(good))
    assert res["verdict"] == "faithful", res["summary"]
    assert all(t["in_cell"] == 1.0 for t in res["tensors"])
    bad = write_gguf(models["ft"], root / f"ft-{qtype}.gguf", qtype)
    res = quantcheck(models["base"], str(bad))
    assert res["verdict"] == "altered"
    assert "model.layers.0.mlp.up_proj.weight" in res["altered"]


def test_one_changed_weight_is_found(models, tmp_path):
    state = load_file(f"{models['base']}/model.safetensors")
    name = "model.layers.1.self_attn.k_proj.weight"  # llama.cpp reorders K's rows: the layout is undone
    state[name] = state[name].clone()
    state[name][5, 7] += 0.5 * state[name].abs().max()
    f = write_gguf(models["base"], tmp_path / "one.gguf", "Q8_0", state=state)
    res = quantcheck(models["base"], str(f))
    assert res["verdict"] == "altered" and res["altered"] == [name]


def test_awq_with_scale_migration_and_gptq(models):
    root = models["root"]
    res = quantcheck(models["base"], str(write_awq(models["base"], root / "base-awq")))
    assert res["verdict"] == "faithful", [t for t in res["tensors"] if t["status"] != "faithful"][:2]
    res = quantcheck(models["base"], str(write_awq(models["ft"], root / "ft-awq")))
    assert res["verdict"] == "altered" and "model.layers.0.mlp.down_proj.weight" in res["altered"]
    res = quantcheck(models["base"], str(write_gptq(models["base"], root / "base-gptq")))
    assert res["verdict"] == "faithful" and res["altered"] == []


def test_gptq_with_error_feedback_stated_tolerance(models):
    """Real GPTQ error feedback moves some codes beyond one step of the source: its stated cell
    (every code within 4 steps, at least 90 % within one step) passes it; a GPTQ file of another
    model is altered; a fine-tune's quantized layers stay within the tolerance (a change smaller
    than a step is not seen), its unquantized tensors show the change."""
    root = models["root"]
    res = quantcheck(models["base"], str(write_gptq(models["base"], root / "base-gptq-fb", feedback=True)))
    layers = [t for t in res["tensors"] if t["qtype"] == "GPTQ int4"]
    assert res["verdict"] == "faithful" and layers
    assert min(t["in_cell"] for t in layers) < 1.0  # error feedback: not every code in the half-step cell
    assert all("at most 4 allowed" in t["note"] and "at least 0.9 required" in t["note"] for t in layers)
    res = quantcheck(models["base"], str(write_gptq(models["indep"], root / "indep-gptq-fb", feedback=True)))
    assert res["verdict"] == "altered" and all(t["status"] == "altered" for t in res["tensors"] if "GPTQ" in t["qtype"])
    res = quantcheck(models["base"], str(write_gptq(models["ft"], root / "ft-gptq-fb", feedback=True)))
    assert res["verdict"] == "altered"
    assert all(t["status"] == "faithful" for t in res["tensors"] if "GPTQ" in t["qtype"])
    assert "model.layers.0.input_layernorm.weight" in res["altered"]


KQUANT_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


@pytest.mark.parametrize("qtype", KQUANT_TYPES)
def test_kquant_cells_never_flag_faithful_codes_and_find_small_changes(qtype):
    """K-quant codes nearest-rounded under the stored scales (as llama.cpp derives them once its
    scales are chosen), over 30 seeds of heavy-tailed tensors with zero and constant sub-blocks: every
    code in its cell; a tenth of a step of noise on the source is always found."""
    import gguf
    from quant_writers import kquantize
    from tracing.evidence.quant_kquant import LAYOUT, kquant_check, kquant_planes
    t, bits = gguf.GGMLQuantizationType[qtype], LAYOUT[qtype][0]
    for seed in range(30):
        rng = np.random.default_rng(seed)
        x = (rng.standard_t(3, size=(4, 512)) * 10.0 ** rng.uniform(-4, 1)).astype(np.float32)
        x[0, :32], x[1, :32] = 0.0, 0.5
        deq, offset, step = kquant_planes(kquantize(x, qtype), t)
        assert np.array_equal(deq, gguf.dequantize(kquantize(x, qtype), t).ravel())
        eq, cell, within, _ = kquant_check(x, deq, offset, step, bits)
        assert cell == 1.0 and within == 1.0 and eq > 0.99, (seed, eq, cell)
        y = x + (0.1 * np.abs(step).mean() * rng.standard_normal(x.shape)).astype(np.float32)
        assert kquant_check(y, deq, offset, step, bits)[1] < 1.0, seed


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A base and its fine-tune whose every matrix has rows of a multiple of 256 (K-quant blocks)."""
    from helpers import finetuned, tiny_config, tiny_model
    root = tmp_path_factory.mktemp("kquant")
    base = tiny_model(tiny_config(d=256, h=512, L=2, V=256), seed=0)
    base.save_pretrained(root / "base")
    finetuned(base, seed=1).save_pretrained(root / "ft")
    return root


@pytest.mark.parametrize("qtype", ("Q2_K", "Q4_K", "Q6_K"))
def test_gguf_kquant_faithful_and_quantized_finetune_altered(wide, qtype):
    good = write_gguf(wide / "base", wide / f"base-{qtype}.gguf", qtype)
    res = quantcheck(str(wide / "base"), str(good))
    assert res["verdict"] == "faithful", res["summary"]
    kq = [t for t in res["tensors"] if t["qtype"] == qtype]
    assert len(kq) == 16 and all(t["in_cell"] == 1.0 and "within one step" in t["note"] for t in kq)
    res = quantcheck(str(wide / "base"), str(write_gguf(wide / "ft", wide / f"ft-{qtype}.gguf", qtype)))
    assert res["verdict"] == "altered"
    assert "model.layers.0.mlp.up_proj.weight" in res["altered"]


def test_cli_exit_codes_and_bad_input(models, tmp_path, capsys):
    root = models["root"]
    good = write_gguf(models["base"], root / "cli.gguf", "Q4_0")
    out = tmp_path / "q.json"
    assert run_cli(quantcheck_cli.main, [models["base"], str(good), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["verdict"] == "faithful"
    assert "faithful" in capsys.readouterr().out
    bad = write_gguf(models["ft"], root / "cli-ft.gguf", "Q4_0")
    assert run_cli(quantcheck_cli.main, [models["base"], str(bad)]) == 1
    assert "altered" in capsys.readouterr().out
    for args in ([models["base"], models["ft"]], [str(good), str(good)], [models["base"], str(tmp_path / "none")]):
        assert run_cli(quantcheck_cli.main, args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:")


def test_fp8_block_scaled(models):
    root = models["root"]
    res = quantcheck(models["base"], str(write_fp8(models["base"], root / "base-fp8")))
    assert res["verdict"] == "faithful" and res["format"] == "fp8"
    assert {t["qtype"] for t in res["tensors"]} == {"FP8_E4M3", "F32"}  # the writer keeps non-linear tensors as they are
    res = quantcheck(models["base"], str(write_fp8(models["ft"], root / "ft-fp8")))
    assert res["verdict"] == "altered" and "model.layers.1.mlp.gate_proj.weight" in res["altered"]


@pytest.mark.parametrize("which, relation", [("base", "quantized"), ("ft", "finetune")])
def test_model_card_relation_follows_the_check(models, tmp_path, which, relation):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from tracing import attest as attest_cli
    from tracing.api import run_pair
    from tracing.evidence.check import verify
    key, pub, private = tmp_path / "k.pem", tmp_path / "k.pub", ec.generate_private_key(ec.SECP256R1())
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    gguf = write_gguf(models[which], tmp_path / f"{which}.gguf", "Q8_0")
    run_pair(models["base"], str(gguf), stat=["cos"], save=tmp_path / "r.p", progress=False)
    card = tmp_path / "card.yaml"
    assert run_cli(attest_cli.main, [str(tmp_path / "r.p"), "--key", str(key), "--out", str(tmp_path / "s.json"),
                                     "--model-card", str(card)]) == 0
    text = card.read_text()
    assert f"base_model_relation: {relation}" in text
    stmt, fails = verify(tmp_path / "s.json", pub)  # a GGUF subject is its one file, recomputed from it
    assert fails == [] and stmt["subject"][1]["annotations"]["files"][0]["name"] == "."
    assert ("is not a faithful quantization" in text) == (relation == "finetune")
