"""One door into a model: every weight format is a backend (tracing/sources) that claims a resolved
model id, gives its config without reading a tensor, and hands out tensors; a new format is one
class and one line in ``sources.BACKENDS``."""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

import tracing
from helpers import save_trio
from quant_writers import write_awq, write_gguf, write_gptq
from tracing import sources
from tracing.errors import TracingError
from tracing.launch import model_info
from tracing.models import Checkpoint
from tracing.sources.base import Backend
from tracing.specs import resolve

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return save_trio(tmp_path_factory.mktemp("float"))


@pytest.fixture(scope="module")
def formats(trio, tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return {"safetensors": trio["base"],
            "gguf": str(write_gguf(trio["base"], root / "g" / "base.Q8_0.gguf", "Q8_0", with_tokenizer=False)),
            "gptq": str(write_gptq(trio["base"], root / "gptq")),
            "awq": str(write_awq(trio["base"], root / "awq", spread=0))}


def test_each_format_is_opened_by_its_backend_with_its_facts(formats):
    want = {"safetensors": ("FolderBackend", False, False), "gguf": ("GGUFBackend", True, False),
            "gptq": ("PackedInt4Backend", True, False), "awq": ("PackedInt4Backend", True, True)}
    ref = Checkpoint(formats["safetensors"])
    for fmt, spec in formats.items():
        b = sources.open_backend(resolve(spec))
        cls, quantized, moves = want[fmt]
        assert (type(b).__name__, b.format, b.quantized, b.moves_norm_scales) == (cls, fmt, quantized, moves)
        ck = Checkpoint(spec)
        assert type(ck.backend) is type(b) and (ck.quantized is ck.backend) == quantized
        assert ck.arch == ref.arch and ck.weight_files() == b.weight_files()
        assert ("quantization" in ck.provenance(hash_files=False)) == quantized
    assert sources.QuantizedBackend is Backend  # formats written against the old name still subclass it


def test_config_comes_without_reading_a_tensor(trio, tmp_path):
    """A folder holding only config.json (as a hub cache after `hf download org/name config.json`):
    its backend gives shape and stored precision; opening it as a checkpoint names what is missing."""
    folder = tmp_path / "only-config"
    folder.mkdir()
    shutil.copy(Path(trio["base"]) / "config.json", folder)
    b = sources.open_backend(resolve(str(folder)))
    assert b.arch == Checkpoint(trio["base"]).arch
    assert b.bytes_per_param() == 4 and model_info(str(folder)).bytes_per_param == 4  # saved in float32
    with pytest.raises(TracingError, match="has a config.json but no weights"):
        Checkpoint(str(folder))


class TorchFileBackend(Backend):
    """A toy format: config.json and every tensor in one ``weights.pt`` (a state dict)."""

    format = "torchfile"
    quantized = False

    def __init__(self, folder: Path, label: str):
        from tracing.arch import arch_from_config
        self.folder, self.label = folder, label
        self.raw = json.loads((folder / "config.json").read_text())
        self.arch = arch_from_config(self.raw)
        self.state = torch.load(folder / "weights.pt", weights_only=True)

    @classmethod
    def claims(cls, resolved):
        return (resolved.path / "weights.pt").is_file()

    @classmethod
    def open(cls, resolved):
        return cls(resolved.path, resolved.spec)

    def config(self):
        from transformers import AutoConfig
        return AutoConfig.from_pretrained(self.folder)

    def has(self, name):
        return self.arch.ref(name).stores[0][0] in self.state

    def get(self, name, dtype=torch.float32):
        from tracing.models import logical_ref, select
        stored, index = logical_ref(self.arch, name, self.label).stores[0]
        return select(self.state[stored], index).to(dtype)

    def weight_files(self):
        return [self.folder / "weights.pt"]

    def tensor_types(self):
        return {k: str(v.dtype) for k, v in self.state.items()}


def test_a_new_format_is_one_class_and_one_line(trio, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    folders = {}
    for name in ("base", "ft", "indep"):
        f = tmp_path / name
        f.mkdir()
        shutil.copy(Path(trio[name]) / "config.json", f)
        torch.save(load_file(next(Path(trio[name]).glob("*.safetensors"))), f / "weights.pt")
        folders[name] = str(f)
    monkeypatch.setattr(sources, "BACKENDS", [TorchFileBackend, *sources.BACKENDS])
    ck, ref = Checkpoint(folders["base"]), Checkpoint(trio["base"])
    assert isinstance(ck.backend, TorchFileBackend) and ck.provenance(hash_files=False)["files"][0]["file"] == "weights.pt"
    for n in ref.names():
        assert torch.equal(ck.get(n), ref.get(n)), n
    assert model_info(folders["base"]).arch == ref.arch
    for other in ("ft", "indep"):
        new = tracing.compare(folders["base"], folders[other], stat="cos")
        old = tracing.compare(trio["base"], trio[other], stat="cos")
        assert new.log10_pvalue == old.log10_pvalue and new.verdict == old.verdict
    assert tracing.compare(folders["base"], folders["ft"], stat="cos").verdict == "dependent"


def _literals(tree):
    """String constants of a module, docstrings left out."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_only_specs_knows_how_a_demo_id_is_spelt():
    found = []
    for f in sorted((ROOT / "tracing").rglob("*.py")):
        if f.name == "specs.py" and f.parent.name == "tracing":
            continue
        for node in _literals(ast.parse(f.read_text(encoding="utf-8"))):
            if node.value.startswith("demo:"):
                found.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"model ids spelt by hand (use tracing.specs.is_demo / demo_name / demo_id): {found}"
