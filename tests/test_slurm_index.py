"""python -m tracing.index build on a REAL single-node Slurm cluster (opt-in: TRACING_SLURM_TESTS=1,
see conftest_slurm.py): one array task per reference, and the index equals one built locally."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest_slurm import slurm_cluster  # noqa: F401 - fixture
from helpers import save_trio
from tracing.index import Settings
from tracing.index.build import build

FILES = ("entry.json", "rows.safetensors", "sketch.safetensors")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return save_trio(tmp_path_factory.mktemp("slurm-index-models"))


def test_index_built_on_slurm_equals_local_bit_for_bit(slurm_cluster, tiny_models, tmp_path):
    refs = [(tiny_models[k], "tiny") for k in ("base", "ft", "indep")]
    s = Settings(rows=64)
    on_slurm = build(refs, tmp_path / "slurm", s, cluster="slurm", partition=slurm_cluster["partition"])
    assert [o["status"] for o in on_slurm] == ["built"] * 3, on_slurm
    ids = [o["job_id"] for o in on_slurm]
    assert all(i and re.fullmatch(r"\d+_[0-2]", i) for i in ids) and len({i.split("_")[0] for i in ids}) == 1
    local = build(refs, tmp_path / "local", s, workers=0)
    assert [o["status"] for o in local] == ["built"] * 3 and all(o["job_id"] is None for o in local)
    for spec, _ in refs:
        key = Path(spec).name
        for f in FILES:
            a = (tmp_path / "slurm" / "entries" / key / f).read_bytes()
            assert a == (tmp_path / "local" / "entries" / key / f).read_bytes(), (key, f)
    assert (tmp_path / "slurm" / "manifest.json").read_bytes() == (tmp_path / "local" / "manifest.json").read_bytes()
    again = build(refs, tmp_path / "slurm", s, cluster="slurm", partition=slurm_cluster["partition"])
    assert [o["status"] for o in again] == ["skipped"] * 3  # resumable: nothing is rebuilt
