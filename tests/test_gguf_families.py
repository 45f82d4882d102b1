"""GGUF files of the frontier families laid out as llama.cpp's converter writes them (gguf-py's
name table, experts stacked per projection, the router's correction bias as ``exp_probs_b.bias``,
DeepSeek's MLA ``kv_b_proj`` split into ``attn_k_b`` (transposed) and ``attn_v_b``, gpt-oss's and Llama 4's
fused experts split per projection, Gemma 4's renamed scales; Qwen3-Next's and Qwen3.5's Gated DeltaNet
values rewritten, DeepSeek-V3.2's indexer), read back through the GGUF backend: every tensor as saved
(within the type's rounding), planted permutations recovered, cos finds the copy and not the independent
model; a file missing a tensor or with a tensor of the wrong shape is refused in one line."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from family_models import family_config, family_model, save_trio
from gguf.quants import quantize
from quant_writers import gguf_namer, stack_experts
from tracing.align import align
from tracing.errors import TracingError
from tracing.models import Checkpoint
from tracing.options import Options
from tracing.stats import get as get_stat
from tracing.stats.base import Context
from tracing.transforms import Permuted, random_permutations

ROOT = Path(__file__).resolve().parent.parent
#: model_type -> the GGUF architecture llama.cpp's converter writes
CONVERTED = {"deepseek_v3": "deepseek2", "qwen3_moe": "qwen3moe", "olmoe": "olmoe", "glm4_moe": "glm4moe",
             "minimax_m2": "minimax-m2", "ernie4_5_moe": "ernie4_5-moe", "gpt_oss": "gpt-oss", "llama4_text": "llama4",
             "gemma4_text": "gemma4"}
#: (family, config) pairs tested: every family above, and Gemma 4 with experts beside its dense MLPs
CASES = [(f, {}) for f in CONVERTED] + [("gemma4_text", dict(h=32, enable_moe_block=True, num_experts=4, top_k_experts=2,
                                                             moe_intermediate_size=16))]


def _split_kv_b(hf: str, t: torch.Tensor, cfg: dict) -> dict:
    """The converter's DeepseekV2Model: kv_b_proj [H·(nope + v), r] -> k_b [H, r, nope] and v_b [H, v, r]."""
    H, nope, v = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    k_b, v_b = torch.split(t.view(H, nope + v, t.shape[-1]), [nope, v], dim=1)
    return {hf.replace("kv_b_proj", "k_b_proj"): k_b.transpose(1, 2), hf.replace("kv_b_proj", "v_b_proj"): v_b}


def _split_gpt_oss(hf: str, t: torch.Tensor) -> dict:
    """The converter's GptOssModel (float experts): gate_up_proj [E, d, 2h] transposed and split into
    gate (even rows) and up (odd rows), down_proj transposed, biases split alike; sinks get .weight."""
    if hf.endswith(".sinks"):
        return {f"{hf}.weight": t}
    if hf.endswith("experts.down_proj"):
        return {f"{hf}.weight": t.transpose(-1, -2)}
    if hf.endswith("experts.down_proj_bias"):
        return {hf.replace("down_proj_bias", "down_proj.bias"): t}
    if hf.endswith("experts.gate_up_proj"):
        t = t.transpose(-1, -2)
        return {hf.replace("gate_up_proj", "gate_proj.weight"): t[:, ::2], hf.replace("gate_up_proj", "up_proj.weight"): t[:, 1::2]}
    if hf.endswith("experts.gate_up_proj_bias"):
        return {hf.replace("gate_up_proj_bias", "gate_proj.bias"): t[..., ::2],
                hf.replace("gate_up_proj_bias", "up_proj.bias"): t[..., 1::2]}
    return {hf: t}


def _split_llama4(hf: str, t: torch.Tensor) -> dict:
    """The converter's Llama4Model: gate_up_proj [E, d, 2h] transposed and split in halves (gate, up),
    down_proj transposed."""
    if hf.endswith("experts.gate_up_proj"):
        gate, up = t.transpose(-1, -2).split(t.shape[-1] // 2, dim=-2)
        return {hf.replace("gate_up_proj", "gate_proj.weight"): gate, hf.replace("gate_up_proj", "up_proj.weight"): up}
    if hf.endswith("experts.down_proj"):
        return {f"{hf}.weight": t.transpose(-1, -2)}
    return {hf: t}


def _gemma4_names(hf: str, t: torch.Tensor) -> dict:
    """The converter's Gemma4Model: .weight appended to the block scalar and the stacked experts, the
    router's gain and per-expert scale stored as ffn_gate_inp.scale and ffn_down_exps.scale."""
    if hf.endswith("router.scale"):
        return {hf.replace("router.scale", "router.proj.scale"): t}
    if hf.endswith("router.per_expert_scale"):
        return {hf.replace("router.per_expert_scale", "experts.down_proj.scale"): t}
    return {hf + ".weight" if hf.endswith(("layer_scalar", "experts.gate_up_proj", "experts.down_proj")) else hf: t}


def _reorder_v_heads(t: torch.Tensor, dim: int, n_k: int, per_k: int, head_dim: int) -> torch.Tensor:
    """The converter's _LinearAttentionVReorderBase._reorder_v_heads: value heads grouped by key head -> tiled."""
    shape = list(t.shape)
    new = shape[:dim] + [n_k, per_k, head_dim] + shape[dim + 1:]
    perm = list(range(len(new)))
    perm[dim], perm[dim + 1] = perm[dim + 1], perm[dim]
    return t.reshape(new).permute(*perm).contiguous().reshape(shape)


def _tile_v(hf: str, t: torch.Tensor, cfg: dict) -> torch.Tensor:
    """The converter's _LinearAttentionVReorderBase.modify_tensors (Qwen3.5, fewer key than value heads)."""
    nk, nv, kd, vd = (cfg[k] for k in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                                       "linear_value_head_dim"))
    if nk == nv or "linear_attn." not in hf:
        return t
    r = nv // nk
    if ".in_proj_qkv." in hf:
        return torch.cat([t[:2 * nk * kd], _reorder_v_heads(t[2 * nk * kd:], 0, nk, r, vd)])
    if ".in_proj_z." in hf:
        return _reorder_v_heads(t, 0, nk, r, vd)
    if ".in_proj_b." in hf or ".in_proj_a." in hf:
        return _reorder_v_heads(t, 0, nk, r, 1)
    if hf.endswith((".A_log", ".dt_bias")):
        return _reorder_v_heads(t.unsqueeze(-1), 0, nk, r, 1).squeeze(-1)
    if ".conv1d" in hf:
        t = t.squeeze()
        return torch.cat([t[:2 * nk * kd], _reorder_v_heads(t[2 * nk * kd:], 0, nk, r, vd)])
    if ".out_proj." in hf:
        return _reorder_v_heads(t, 1, nk, r, vd)
    return t


def _deltanet(hf: str, t: torch.Tensor, cfg: dict) -> dict:
    """The converter's Qwen3NextModel.modify_tensors: A_log -> -exp(A_log), dt_bias -> dt_proj.bias,
    conv1d squeezed, norm gains (not the gated linear_attn.norm) + 1, in_proj_qkvz [q, k, v, z] per key
    head -> attn_qkv (all q, all k, all v) and attn_gate (all z)."""
    if hf.endswith(".A_log"):
        t = -torch.exp(t)
    elif hf.endswith(".dt_bias"):
        hf = hf.rpartition(".dt_bias")[0] + ".dt_proj.bias"
    elif "conv1d" in hf:
        t = t.squeeze()
    elif hf.endswith("norm.weight") and not hf.endswith("linear_attn.norm.weight"):
        t = t + 1
    if "in_proj_qkvz.weight" in hf:
        kd, vd, nv, nk, d = (cfg[k] for k in ("linear_key_head_dim", "linear_value_head_dim", "linear_num_value_heads",
                                              "linear_num_key_heads", "hidden_size"))
        split = [kd, kd, nv // nk * vd, nv // nk * vd]
        q, k, v, z = torch.split(t.permute(1, 0).contiguous().view(-1, nk, sum(split)), split, dim=-1)
        q, k, v, z = (x.contiguous().view(d, -1) for x in (q, k, v, z))
        # named as gguf-py's table names attn_qkv and attn_gate
        return {hf.replace("in_proj_qkvz", "in_proj_qkv"): torch.cat([q, k, v], dim=-1).permute(1, 0),
                hf.replace("in_proj_qkvz", "in_proj_z"): z.permute(1, 0)}
    return {hf: t}


def _qwen35(hf: str, t: torch.Tensor, cfg: dict) -> dict:
    """Qwen3_5TextModel / Qwen3_5MoeTextModel: the value heads tiled, then Qwen3-Next's changes."""
    return _deltanet(hf, _tile_v(hf, t, cfg), cfg)


CONVERTERS = {"gpt-oss": _split_gpt_oss, "llama4": _split_llama4, "gemma4": _gemma4_names,
              "qwen3next": _deltanet, "qwen35": _qwen35, "qwen35moe": _qwen35}
NEEDS_CONFIG = {"qwen3next", "qwen35", "qwen35moe"}
#: the installed gguf package does not list DeepSeek-V3.2's ``deepseek32``; its tensors are named as GLM-5's
NAME_TABLE = {"deepseek32": "glm-dsa"}


def _encode(a: np.ndarray, qtype: str):
    """``(data, raw type)`` as the converter stores a tensor of type ``qtype``: vectors in F32, a row length
    the type's blocks do not divide in F16 (its fallback)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 1 or qtype == "F32":
        return a, None
    if qtype == "F16" or a.shape[-1] % 32:
        return a.astype(np.float16), None
    q = gguf.GGMLQuantizationType[qtype]
    return quantize(a, q), q


def _language_model(cfg: dict, state: dict) -> tuple[dict, dict]:
    """What the converter reads of a vision-language wrapper (a config with a ``text_config``, e.g. Qwen3.5's
    ``Qwen3_5ForConditionalGeneration``): the text config moved to the root of the hyperparameters, the language
    model's tensors under the text model's names (``model.language_model.`` -> ``model.``, ``lm_head`` as it is);
    the vision tower (``model.visual.``) goes to a separate mmproj file and the multi-token-prediction tensors
    (``mtp.``) are not converted. A text model is read as it is."""
    if "text_config" not in cfg:
        return cfg, state
    lm = "model.language_model."
    return ({**cfg, **cfg["text_config"]},
            {("model." + k[len(lm):] if k.startswith(lm) else k): t for k, t in state.items()
             if not k.startswith(("model.visual.", "mtp."))})


def write_converted(folder, out_dir, arch: str, qtype: str = "F32", drop: tuple = (), reshape: dict | None = None):
    """``folder`` (a saved float model) as a GGUF laid out as the converter lays out ``arch`` (tensors of
    type ``qtype``: F32, F16, Q8_0), with the model's config.json beside it. ``drop``: GGUF tensors left
    out; ``reshape``: GGUF tensor -> rows kept (a damaged file)."""
    cfg = json.loads((folder / "config.json").read_text())
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    cfg, state = _language_model(cfg, state)
    out_dir.mkdir(parents=True)
    w = gguf.GGUFWriter(str(out_dir / "model.gguf"), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_embedding_length(cfg["hidden_size"])
    name = gguf_namer(NAME_TABLE.get(arch, arch), cfg["num_hidden_layers"])
    for hf, t in stack_experts(state).items():
        hf = hf.replace("e_score_correction_bias", "e_score_correction.bias")
        parts = (_split_kv_b(hf, t, cfg) if hf.endswith("kv_b_proj.weight") else
                 CONVERTERS[arch](hf, t, cfg) if arch in NEEDS_CONFIG else
                 CONVERTERS[arch](hf, t) if arch in CONVERTERS else {hf: t})
        for key, part in parts.items():
            a = part.float().numpy()
            if a.ndim == 2 and a.shape[0] == 1:
                a = a[0]  # the converter squeezes (the shared expert's gate)
            g = name(key)
            if g in drop:
                continue
            a = a[:reshape[g]] if reshape and g in reshape else a
            data, raw = _encode(a, qtype)
            w.add_tensor(g, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shutil.copy(folder / "config.json", out_dir / "config.json")
    return out_dir


def run_cos(a, b):
    return get_stat("cos").fn(Context(Options(stat=["cos"]), progress=False), a, b)


@pytest.mark.parametrize("family, config", CASES, ids=[f + ("_moe" if c else "") for f, c in CASES])
def test_converted_gguf_reads_every_tensor(tmp_path, family, config):
    _, paths = save_trio(tmp_path / "hf", family, **config)
    ggufs = {tag: Checkpoint(write_converted(paths[tag], tmp_path / f"gguf-{tag}", CONVERTED[family]))
             for tag in ("base", "ft")}
    ref, g = Checkpoint(paths["base"]), ggufs["base"]
    assert g.backend.format == "gguf"
    names = ref.arch.names()
    assert any("kv_b_proj" in n for n in names) == (family == "deepseek_v3")
    for n in names:
        assert torch.equal(g.get(n), ref.get(n)), n
    assert run_cos(ref, ggufs["ft"]).log10_pvalue < -6
    assert run_cos(Checkpoint(paths["indep"]), g).log10_pvalue > math.log10(0.01)


# ---- Gated DeltaNet (Qwen3-Next, Qwen3.5) and DeepSeek-V3.2: the converter rewrites values ---------------
#: model_type -> GGUF architecture; the tiny hybrids have 2 key and 4 value heads (the value heads get tiled)
REWRITTEN = {"qwen3_next": "qwen3next", "qwen3_5_text": "qwen35", "qwen3_5_moe_text": "qwen35moe",
             "deepseek_v32": "deepseek32"}
QTYPES = ("F32", "F16", "Q8_0")


@pytest.fixture(scope="module", params=list(REWRITTEN))
def rewritten(request, tmp_path_factory):
    """``(family, {tag: safetensors folder}, {(tag, qtype): GGUF folder})`` for a base, a noisy copy and an
    independent model; GGUF files written on demand and kept for the module."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    _, paths = save_trio(root / "hf", family)
    made = {}

    def gguf_of(tag: str, qtype: str):
        if (tag, qtype) not in made:
            made[tag, qtype] = write_converted(paths[tag], root / f"gguf-{tag}-{qtype}", REWRITTEN[family], qtype)
        return made[tag, qtype]
    return family, paths, gguf_of


def _tolerance(ref: torch.Tensor, qtype: str) -> float:
    """How far a stored tensor may be from the original: float32 rounding of the converter's value
    changes, half precision, or half a Q8_0 step of the largest block (vectors are stored in F32)."""
    m = float(ref.abs().max())
    if qtype == "F32" or ref.dim() == 1:
        return 2e-6 * (1 + m)
    return m * (1e-3 if qtype == "F16" or ref.shape[-1] % 32 else 1 / 127)


@pytest.mark.parametrize("qtype", QTYPES)
def test_rewritten_gguf_reads_every_tensor(rewritten, qtype):
    family, paths, gguf_of = rewritten
    ref, g = Checkpoint(paths["base"]), Checkpoint(gguf_of("base", qtype))
    assert g.backend.format == "gguf" and ref.arch.names() == g.arch.names()
    tensors = {t.name: t for t in g.backend.reader.tensors}
    for n in ref.arch.names():
        a, b = ref.get(n), g.get(n)
        assert a.shape == b.shape and float((a - b).abs().max()) <= _tolerance(a, qtype), n
    if family != "deepseek_v32":  # the converter's changes are in the file: ssm_a = -exp(A_log) < 0, no ssm_in
        assert float(tensors["blk.0.ssm_a"].data.max()) < 0 and "blk.0.ssm_dt.bias" in tensors
        assert "blk.0.attn_gate.weight" in tensors and "blk.0.ssm_in.weight" not in tensors
    else:
        assert {"blk.0.indexer.attn_k.weight", "blk.0.indexer.k_norm.bias", "blk.0.attn_k_b.weight"} <= set(tensors)


def test_rewritten_gguf_alignment_and_power(rewritten):
    """A planted permutation of the noisy copy (read from Q8_0 GGUF) is recovered exactly against the
    safetensors base; cos finds the copy and not the independent model."""
    family, paths, gguf_of = rewritten
    base, ft = Checkpoint(paths["base"]), Checkpoint(gguf_of("ft", "Q8_0"))
    pi_e, pi_i = random_permutations(ft.arch, seed=11)
    al = align(base, Permuted(ft, pi_e, pi_i), progress=False)
    assert np.array_equal(al.pi_e, torch.argsort(pi_e).numpy())
    assert all(np.array_equal(al.pi_i[k], torch.argsort(p).numpy()) for k, p in pi_i.items())
    assert run_cos(base, ft).log10_pvalue < -6
    assert run_cos(Checkpoint(paths["indep"]), Checkpoint(gguf_of("base", "Q8_0"))).log10_pvalue > math.log10(0.01)


def test_damaged_qwen35_gguf_is_one_line_exit_2(tmp_path):
    """A Qwen3.5 GGUF file without ssm_a, or whose ssm_a is short: one line naming the tensor when it is
    opened; from the command line, exit 2 and no result file."""
    model = family_model(family_config("qwen3_5_text"), seed=3)
    model.save_pretrained(tmp_path / "hf")
    cases = ((dict(drop=("blk.0.ssm_a",)), "linear_attn.A_log are missing"), (dict(reshape={"blk.0.ssm_a": 3}), "blk.0.ssm_a holds 3"))
    folders = []
    for k, (damage, needle) in enumerate(cases):
        folders.append(write_converted(tmp_path / "hf", tmp_path / f"g{k}", "qwen35", **damage))
        with pytest.raises(TracingError, match=needle) as e:
            Checkpoint(folders[-1])
        assert "\n" not in str(e.value)
    out = tmp_path / "never.p"
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--base_model_id", str(tmp_path / "hf"),
                        "--ft_model_id", str(folders[1]), "--stat", "cos", "--save", str(out), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 2 and "blk.0.ssm_a" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
