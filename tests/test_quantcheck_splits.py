"""Quantization faithfulness of the tensors llama.cpp's converter splits in two (DeepSeek's MLA
``kv_b_proj`` as ``attn_k_b`` + ``attn_v_b``, Qwen3-Next's ``in_proj_qkvz`` as ``attn_qkv`` +
``attn_gate``): their scales are read from both GGUF tensors, so a faithful Q8_0 file is faithful on
every tensor, also when the parts are of different types (a key part too narrow for Q8_0 blocks is
stored in F16), and one weight changed in either part is found in that tensor alone."""
from __future__ import annotations

import shutil

import pytest
from family_models import family_config, family_model
from safetensors.torch import load_file, save_file
from test_gguf_families import write_converted

from tracing.evidence.quant import quantcheck

#: case -> (model_type, config, GGUF architecture, the split tensor of block 0, a row of its first part,
#: a row of its second part)
CASES = {
    # kv_b_proj rows per head: nope key rows (attn_k_b), then v rows (attn_v_b)
    "deepseek": ("deepseek_v3", dict(kv_lora_rank=32, qk_nope_head_dim=32, v_head_dim=32), "deepseek2",
                 "model.layers.0.self_attn.kv_b_proj.weight", 3, 32 + 5),
    # the key rows 16 wide: attn_k_b [H, r, 16] is stored in F16, attn_v_b in Q8_0
    "deepseek_mixed": ("deepseek_v3", dict(kv_lora_rank=32, qk_nope_head_dim=16, v_head_dim=32), "deepseek2",
                       "model.layers.0.self_attn.kv_b_proj.weight", 3, 16 + 5),
    # in_proj_qkvz rows per key head: q (8), k (8), v (16) in attn_qkv, then z (16) in attn_gate
    "qwen3next": ("qwen3_next", {}, "qwen3next", "model.layers.0.linear_attn.in_proj_qkvz.weight", 3, 32 + 5),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """``{case: saved float model}``."""
    root = tmp_path_factory.mktemp("quant-splits")
    out = {}
    for case, (family, config, *_) in CASES.items():
        family_model(family_config(family, **config), seed=1).save_pretrained(root / case)
        out[case] = root / case
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_faithful_file_is_faithful_on_every_tensor(bases, tmp_path, case):
    _, _, arch, split, _, _ = CASES[case]
    res = quantcheck(str(bases[case]), str(write_converted(bases[case], tmp_path / "q", arch, "Q8_0")))
    assert res["verdict"] == "faithful", res["summary"]
    assert all(t["in_cell"] == 1.0 for t in res["tensors"])
    got = next(t for t in res["tensors"] if t["name"] == split)
    assert got["qtype"] == ("F16+Q8_0" if case == "deepseek_mixed" else "Q8_0")
    assert got["equal"] > 0.95  # a code may differ from round-to-nearest only at a tie (float16 scales)


@pytest.mark.parametrize("part", (0, 1), ids=("first_part", "second_part"))
@pytest.mark.parametrize("case", list(CASES))
def test_one_weight_changed_in_a_part_is_found(bases, tmp_path, case, part):
    _, _, arch, split, *rows = CASES[case]
    state = load_file(bases[case] / "model.safetensors")
    row = rows[part]
    w = state[split].clone()
    w[row, 7] += 0.5 * w.abs().max()
    state[split] = w
    changed = tmp_path / "changed"
    changed.mkdir()
    save_file(state, changed / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(bases[case] / "config.json", changed / "config.json")
    res = quantcheck(str(bases[case]), str(write_converted(changed, tmp_path / "q", arch, "Q8_0")))
    assert res["verdict"] == "altered" and res["altered"] == [split], res["summary"]


def test_printed_table_lines_up_a_tensor_of_two_types(bases, tmp_path, capsys):
    """``python -m tracing.quantcheck --all`` on a file with a split tensor whose parts have different types
    (``F16+Q8_0``): every line of the table has its type, values and status in the same columns."""
    import json

    from tracing import quantcheck as quantcheck_cli
    from tracing.cli_util import run_cli
    _, _, arch, split, _, _ = CASES["deepseek_mixed"]
    q = write_converted(bases["deepseek_mixed"], tmp_path / "q", arch, "Q8_0")
    table = tmp_path / "table.json"
    assert run_cli(quantcheck_cli.main, [str(bases["deepseek_mixed"]), str(q), "--all", "--json", str(table)]) == 0
    rows = {t["name"]: t for t in json.loads(table.read_text())["tensors"]}
    lines = [line for line in capsys.readouterr().out.splitlines() if line.split() and line.split()[0] in rows]
    assert len(lines) == len(rows) and rows[split]["qtype"] == "F16+Q8_0"

    def columns(line: str) -> tuple[int, int, int]:
        """Where the line's type, the column after it and its status begin."""
        t = rows[line.split()[0]]
        at = line.index(f" {t['qtype']} ", len(t["name"]) + 2) + 1
        after = at + len(t["qtype"])
        return at, after + len(line[after:]) - len(line[after:].lstrip()), line.index(f" {t['status']}", after) + 1

    assert len({columns(line) for line in lines}) == 1, "\n".join(lines)
