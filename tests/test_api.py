"""The Python API: the result object, the verdict rule, record keys, statistic facts, option keys."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

import tracing
from helpers import finetuned, tiny_config, tiny_model
from tracing.options import Options
from tracing.stats import get, names
from tracing.verdict import is_dependent, verdict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trio():
    cfg = tiny_config("llama", L=2, d=32, h=64, V=96)
    base = tiny_model(cfg, seed=11)
    return base, finetuned(base, seed=12, noise=0.05), tiny_model(cfg, seed=13)


def test_help_does_not_import_torch():
    code = ("import sys, runpy; sys.argv = ['main.py', '--help']\n"
            "try:\n    runpy.run_path('main.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "NO-TORCH" in r.stderr, r.stderr[-2000:]
    body = r.stdout.split("comparison:")[1]
    for opt in ("--block_size", "--batch_size", "--seed", "--num_samples", "--significance", "--alternative",
                "--num_perm", "--dataset", "--device"):
        entry = body[body.index(f"  {opt} "):].split("\n  --")[0]
        assert "default" in entry, opt


def test_verdict_is_p_at_most_level_in_log_space():
    assert verdict(math.log10(0.01), 0.01) == "dependent"  # 1/(T+1) with T = 99 reaches 0.01
    assert verdict(math.log10(1 / 100) + 5e-13, 0.01) == "dependent"
    assert verdict(math.log10(0.0101), 0.01) == "not significant"
    assert verdict(-3, 0.01, exact=False) == "dependent (approximate test)"
    assert verdict(None, 0.01) is None and is_dependent(float("nan")) is None


def test_l2_verdicts_at_one_percent(trio):
    base, ft, other = trio
    dep = tracing.compare_models(base, ft, stat="l2")
    assert dep.pvalue == 0.01 and dep.verdict == "dependent"
    assert dep["non-aligned test stat"] == 0.01
    ind = tracing.compare_models(base, other, stat="l2")
    assert ind.verdict == "not significant"


def test_permutation_pvalue_is_the_exact_fraction(trio):
    base, ft, _ = trio
    res = tracing.compare_models(base, ft, stat="l2", num_perm=19)
    assert res.pvalue == 1 / 20 and res["non-aligned test stat"] == 1 / 20  # not 0.049999999999999996
    assert res.log10_pvalue == pytest.approx(math.log10(1 / 20))


def test_aligned_variant_record(trio):
    base, ft, _ = trio
    cos = tracing.compare_models(base, ft, stat="cos", permute=True, align=True)
    assert cos["aligned test stat"] == cos.aligned.pvalue and cos.aligned.verdict == "dependent"
    assert cos.verdict == "not significant" and "after alignment: p-value" in cos.summary()
    assert "exact" in cos.summary()
    l2 = tracing.compare_models(base, ft, stat="l2", permute=True, align=True)
    assert "aligned test stat" not in l2.record  # never a distance beside a p-value
    assert l2.aligned.log10_pvalue is None and l2.aligned.verdict is None
    assert l2.aligned.extra["num_perm"] == 0  # the aligned statistic only, no permutations
    emb = tracing.compare_models(base, ft, stat="emb", align=True)
    assert emb.aligned is None and "aligned test stat" not in emb.record


def test_approximate_test_says_so(trio):
    base, ft, _ = trio
    ids = __import__("helpers").random_ids(96, n=4, T=32, seed=0)
    res = tracing.compare_models(base, ft, stat="match", tokens=ids)
    assert res.pvalue_kind == "approximate" and res.verdict == "dependent (approximate test)"
    assert "approximate" in res.summary()
    assert tracing.compare_models(base, ft, stat="cos").pvalue_kind == "exact"


def test_summary_states_the_null_and_the_floor(trio):
    base, ft, _ = trio
    s = tracing.compare_models(base, base, stat="cos").summary()
    assert "θ₁ and θ₂ were trained from independent random initialisations" in s
    assert "distilled" in s and "at the floor of this test (perfect match in every block)" in s
    assert "same weights" in s
    assert "floor of this test" not in tracing.compare_models(base, trio[2], stat="cos").summary()


def test_result_object_and_state_dict_input(trio):
    base, ft, _ = trio
    res = tracing.compare_models(base.state_dict(), ft.state_dict(), stat="cos",
                                 base_config=base.config, ft_config=ft.config)
    ref = tracing.compare_models(base, ft, stat="cos")
    assert res.log10_pvalue == ref.log10_pvalue and res.statistic == ref.statistic
    assert len(res.per_layer) == 2 and res.aligned is None and isinstance(res.record, dict)
    assert "Result(stat='cos'" in repr(res) and "dependent" in repr(res)


def test_emb_summary_explains_the_median_cosine(trio):
    base, ft, _ = trio
    s = tracing.compare_models(base, ft, stat="emb", permute=True).summary()
    assert "median matched cosine" in s and "not significant" in s


def test_key_hashes_only_the_options_a_statistic_reads():
    assert Options(stat="cos").key_for("cos") == Options(stat="cos", num_samples=3, block_size=64).key_for("cos")
    assert Options(stat="cos").key_for("cos") != Options(stat="cos", align=True).key_for("cos")
    assert Options(stat="csh").key_for("csh") != Options(stat="csh", num_samples=3).key_for("csh")
    assert Options(stat="l2").key_for("l2") != Options(stat="l2", num_perm=9).key_for("l2")
    assert Options(stat="l2").key_for("l2") == Options(stat="l2", alpha=0.3).key_for("l2")


def test_options_dedupe_and_validate():
    assert Options(stat="cos,csu,cos,emb").stat == ["cos", "emb"]
    from tracing.errors import TracingError
    with pytest.raises(TracingError, match="--device"):
        Options(device="tpu")


def test_every_statistic_declares_its_facts():
    from tracing.stats.cost import Sizing
    from tracing.arch import arch_from_config
    a = arch_from_config(tiny_config("llama").to_dict())

    class Info:
        arch, params, bytes_per_param = a, 10 ** 6, 2

    s = Sizing.from_infos(Info, Info, Options(), cpus=2)
    for name in names():
        spec = get(name)
        assert spec.meaning and spec.description and spec.cost is not None
        c = spec.cost(s)
        assert c.mem_bytes > 0 and c.seconds > 0
        assert spec.pvalue_kind in ("exact", "approximate", None)
    assert get("csh").default_dataset == "random" and get("jsd").pvalue == "never"
    assert not get("emb").aligned and not get("l2").aligned_pvalue and get("match").pvalue_kind == "approximate"
    assert not get("mode").gives_pvalue(Options()) and get("mode").gives_pvalue(Options(num_perm=9))


def test_register_a_statistic_defined_elsewhere(trio):
    from tracing.stats import REGISTRY, StatSpec, register
    from tracing.stats.base import StatResult

    def zero(ctx, base, ft):
        return StatResult("zero", 0.0, -3.0)

    register(StatSpec("zero", zero, description="test", meaning="test"))
    try:
        res = tracing.compare_models(trio[0], trio[1], stat="zero")
        assert res.verdict == "dependent" and res.pvalue == pytest.approx(1e-3)
    finally:
        REGISTRY.pop("zero")


def test_methods_doc_examples_run():
    """The Python examples in docs/methods.md run as written (doctest) on the demo family."""
    import doctest
    from pathlib import Path
    from tracing import demo
    demo.ensure_built(progress=False)
    doc = Path(__file__).resolve().parent.parent / "docs" / "methods.md"
    r = doctest.testfile(str(doc), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert r.attempted >= 6 and r.failed == 0


def test_weight_sources_are_streamed_not_materialised(trio, tmp_path, monkeypatch):
    """compare_models on opened checkpoints (weight sources) reads them tensor by tensor, as the
    command line does: never a whole-model state dict."""
    from tracing.models import Checkpoint, WeightSource
    base, ft, _ = trio
    base.save_pretrained(tmp_path / "base")
    ft.save_pretrained(tmp_path / "ft")
    ref = tracing.compare(str(tmp_path / "base"), str(tmp_path / "ft"), stat="cos")
    monkeypatch.setattr(WeightSource, "state_dict", lambda *a, **k: pytest.fail("a whole model was materialised"))
    res = tracing.compare_models(Checkpoint(str(tmp_path / "base")), Checkpoint(str(tmp_path / "ft")), stat="cos")
    assert res.log10_pvalue == ref.log10_pvalue


def _printed(summary: str) -> tuple[float, float]:
    """(log10 of the printed p-value, the printed log10 p) of a summary's p-value line."""
    import re
    m = re.search(r"p-value (\S+) \(.*; log10 p = (\S+)\)", summary)
    text, lp = m.group(1), float(m.group(2))
    mant, _, exp = text.partition("e")
    return math.log10(float(mant)) + (int(exp) if exp else 0), lp


def test_printed_log10_p_agrees_with_the_printed_p_value(trio):
    base, ft, _ = trio
    for res in (tracing.compare_models(base, base, stat="cos"), tracing.compare_models(base, ft, stat="cos")):
        from_p, lp = _printed(res.summary())
        assert lp == pytest.approx(res.log10_pvalue, abs=0.005)
        assert abs(from_p - lp) < 0.01  # the 2-digit mantissa and the log10 name the same number
    # a p-value far below the float range: 3.5e-3025 and log10 p = -3024.46
    rec = dict(tracing.compare_models(base, base, stat="cos").record, log10_pvalue=-3024.456)
    from_p, lp = _printed(tracing.results.summary(rec))
    assert lp == -3024.46 and "3.5e-3025" in tracing.results.summary(rec)
