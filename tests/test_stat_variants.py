"""A statistic's spec says which forms it has and when each applies, and holds the facts its users
read (the scan, the index, job sizing, lineage trees): shapes only, no model is built here."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from tracing import scan, stats
from tracing.errors import TracingError
from tracing.lineage.reconstruct import similarity_table
from tracing.options import Options
from tracing.stats.cost import Sizing
from tracing.stats.spec import (BLOCK_MAP, EXPERT_MAP, EXPERTS, Cost, Similarity, StatSpec, Variant, block_map,
                                has_experts)


def arch(L=4, d=32, h=64, experts=False):
    return SimpleNamespace(L=L, d=d, h=h, V=100, has_experts=experts, block_numel=lambda: 3 * d * h)


def form(stat, a, b, **opts):
    v = stats.get(stat).variant(a, b, Options(stat=[stat], **opts))
    return None if v is None else v.name


@pytest.mark.parametrize("stat,a,b,opts,expected", [
    ("cos", arch(), arch(), {}, None),
    ("cos", arch(), arch(L=3), {}, BLOCK_MAP),
    ("cos", arch(), arch(h=48), {}, None),  # different MLP widths: rectangular matching block by block
    ("cos", arch(), arch(), {"localized": True}, BLOCK_MAP),
    ("cos", arch(experts=True), arch(), {}, EXPERTS),
    ("cos", arch(experts=True), arch(L=3, experts=True), {}, EXPERT_MAP),
    ("cos", arch(experts=True), arch(experts=True), {"localized": True}, EXPERT_MAP),
    ("match", arch(), arch(h=48), {}, BLOCK_MAP),
    ("match", arch(), arch(d=40), {}, BLOCK_MAP),
    ("match", arch(), arch(experts=True), {}, EXPERTS),
    ("match", arch(experts=True), arch(L=3, experts=True), {}, EXPERT_MAP),
    ("match", arch(experts=True), arch(experts=True), {"localized": True}, EXPERT_MAP),
    ("csh", arch(experts=True), arch(), {}, EXPERTS),
    ("csh", arch(experts=True), arch(L=3, experts=True), {}, EXPERT_MAP),
    ("csh", arch(), arch(), {}, None),
    ("emb", arch(), arch(L=3), {}, None),
])
def test_the_spec_chooses_the_form_of_a_pair(stat, a, b, opts, expected):
    assert form(stat, a, b, **opts) == expected


def test_built_in_block_maps_keep_their_localized_shapes():
    assert stats.get("cos").localized == ("L",) and stats.get("match").localized == ("L", "d", "h")
    assert not stats.get("csh").localized and not stats.get("l2").localized


@pytest.fixture
def toy():
    """A statistic with an experts form and a block map, each recording what computed it."""
    calls = []

    def ordinary(ctx, base, ft):
        return "ordinary"

    def check(a, b, options):
        calls.append("check")
        if a.d != b.d:
            raise TracingError("toyvar needs equal widths")

    spec = stats.register(StatSpec(
        "toyvar", fn=ordinary, description="toy", meaning="toy", check=check,
        cost=lambda s: Cost(1, 1.0),
        variants=(Variant(EXPERTS, has_experts, lambda ctx, base, ft: "experts"),
                  block_map(("L",), "tests.test_stat_variants:_toy_map", lambda s: Cost(2, 2.0)))))
    yield spec, calls
    stats.REGISTRY.pop("toyvar", None)


def _toy_map(ctx, base, ft):
    return "block map"


def test_fn_runs_the_check_then_the_form_that_applies(toy):
    spec, calls = toy
    ctx = SimpleNamespace(options=Options(stat=["cos"]))
    pair = lambda a, b: (SimpleNamespace(arch=a), SimpleNamespace(arch=b))  # noqa: E731
    assert spec.fn(ctx, *pair(arch(), arch())) == "ordinary" and calls == ["check"]
    assert spec.fn(ctx, *pair(arch(), arch(L=2))) == "block map"  # "module:function", imported when used
    assert spec.fn(ctx, *pair(arch(experts=True), arch(L=2))) == "experts"  # the first form that applies
    with pytest.raises(TracingError, match="equal widths"):
        spec.fn(ctx, *pair(arch(L=2), arch(d=8)))
    assert spec.ordinary(ctx, None, None) == "ordinary" and spec.localized == ("L",)
    # the job's cost follows the form too
    o = Options(stat=["cos"])
    assert spec.cost(Sizing(arch(), arch(), 1, 1, 1, 1, o)).mem_bytes == 1
    assert spec.cost(Sizing(arch(), arch(L=2), 1, 1, 1, 1, o)).mem_bytes == 2
    assert spec.cost(Sizing(arch(experts=True), arch(), 1, 1, 1, 1, o)).mem_bytes == 1  # no cost of its own


def test_the_scan_the_index_and_the_remote_reads_ask_the_specs(monkeypatch):
    assert scan.screening_stats() == ["cos", "emb"]
    assert scan.robust_stats() == ["cos", "match"]
    assert stats.get("cos").robust == "aligned" and stats.get("match").robust == "raw"
    assert stats.get("emb").sampled == "residual" and stats.get("cos").sampled == "units"
    spec = stats.register(StatSpec("toyscreen", fn=lambda *a: None, description="t", meaning="t",
                                   sampled="units", screens=True, robust="raw"))
    try:
        assert "toyscreen" in scan.screening_stats() and "toyscreen" in scan.robust_stats()
        assert scan.parse(["cand", "--against", "x.yaml", "--robust", "toyscreen"]).robust == "toyscreen"
        ref = SimpleNamespace(arch=arch(L=3))
        assert "different depth" in scan.shape_problem(spec.name, SimpleNamespace(arch=arch()), ref)
    finally:
        stats.REGISTRY.pop("toyscreen", None)
    with pytest.raises(ValueError, match="sampled"):
        StatSpec("bad", fn=None, description="", meaning="", sampled="rows")


def test_forward_lanes_come_from_the_spec():
    o = Options(stat=["mode"], alphas=[0.0, 0.5, 1.0])
    s = Sizing(arch(), arch(), 1, 1, 1, 1, o)
    assert s.lanes("mode") == 5 and s.lanes("match") == 2 and s.lanes("eval") == 2
    stats.register(StatSpec("toylanes", fn=lambda *a: None, description="t", meaning="t", needs_data=True,
                            lanes=lambda options: options.num_samples))
    try:
        assert s.lanes("toylanes") == 2 + o.num_samples
        assert s.forward_mem("toylanes") - s.forward_mem("match") == o.num_samples * s.tokens * s.d * 4
    finally:
        stats.REGISTRY.pop("toylanes", None)


def _rows(stat, values, column="median_cos"):
    return [{"stat": stat, "status": "ok", "base": a, "ft": b, "aligned": False, "permute": False,
             "rotate": False, column: v} for (a, b), v in values.items()]


def test_lineage_similarity_is_the_one_the_statistic_declares():
    cos = _rows("cos", {("a", "b"): 0.9, ("a", "c"): 0.5})
    l2 = _rows("l2", {("a", "b"): 3.0, ("a", "c"): 1.0}, column="statistic")
    sim, kind = similarity_table(pd.DataFrame(cos + l2), "cos")
    assert kind == "median_cos" and sim[frozenset("ab")] == 0.9
    sim, kind = similarity_table(pd.DataFrame(_rows("match", {("a", "b"): 0.9}, column="x") + l2), "match")
    assert kind == "-l2" and sim[frozenset("ab")] == -3.0  # l2 shares its (negated) distance
    with pytest.raises(TracingError, match="no similarity"):
        similarity_table(pd.DataFrame(_rows("match", {("a", "b"): 0.9}, column="x")), "match")
    stats.register(StatSpec("toysim", fn=lambda *a: None, description="t", meaning="t",
                            similarity=Similarity("overlap", "overlap")))
    try:
        sim, kind = similarity_table(pd.DataFrame(_rows("toysim", {("a", "b"): 7.0}, column="overlap") + l2),
                                     "toysim")
        assert kind == "overlap" and sim == {frozenset("ab"): 7.0}
    finally:
        stats.REGISTRY.pop("toysim", None)


def test_a_statistics_own_options_become_flags():
    import argparse

    from tracing.options import add_options, options_from_args
    from tracing.stats.spec import Flag

    def parse(*argv):
        p = argparse.ArgumentParser()
        add_options(p)
        return p, p.parse_args(list(argv))

    p, args = parse("--stat", "mode", "--alphas", "0,0.5", "--num_perm", "9", "--mlp_only")
    o = options_from_args(args)
    assert (o.alphas, o.num_perm, o.mlp_only, o.rows, o.alpha, o.localized) == ([0.0, 0.5], 9, True, None, 0.5, False)
    assert options_from_args(parse("--stat", "cos", "--rows", "4", "--localized")[1]).rows == 4
    helps = {a.dest: a.help for a in p._actions}
    assert helps["rows"].startswith("cos/emb/fixed/match: sampled test") and helps["alpha"].startswith("mode: ")
    assert helps["num_perm"] == "permutation-test draws (default: 99 for l2, 0 = no test for mode)"
    stats.register(StatSpec("toyopt", fn=lambda *a: None, description="t", meaning="t", reads=("alpha",),
                            options=(Flag("alpha", "{users}: a weight", "float"),)))
    try:
        p, args = parse("--alpha", "0.25")
        assert args.alpha == 0.25 and {a.dest: a.help for a in p._actions}["alpha"].startswith("mode/toyopt: ")
        with pytest.raises(ValueError, match="among the options it reads"):
            StatSpec("toybad", fn=None, description="", meaning="", options=(Flag("alpha", "x", "float"),))
        stats.register(StatSpec("toyunknown", fn=lambda *a: None, description="t", meaning="t", reads=("nope",),
                                options=(Flag("nope", "x"),)))
        with pytest.raises(TracingError, match="--nope"):
            parse()
    finally:
        stats.REGISTRY.pop("toyopt", None)
        stats.REGISTRY.pop("toyunknown", None)
