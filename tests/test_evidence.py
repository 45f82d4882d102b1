"""Signed evidence: attest → verify round trip, forged / truncated / foreign statements, weights
changed after attesting, the OpenSSF root digest against the model-signing package, no secrets."""
import base64
import hashlib
import os
import json
import shutil

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from safetensors.torch import load_file, save_file

from helpers import save_trio
from tracing import attest as attest_cli
from tracing import verify as verify_cli
from tracing.api import run_pair
from tracing.cli_util import run_cli
from tracing.evidence.digests import model_files, root_digest
from tracing.results import load_record, save_record


def write_keys(folder, name="key"):
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = folder / f"{name}.pem", folder / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence")
    paths = save_trio(root)
    keys = write_keys(root)
    other = write_keys(root, "other")
    result = root / "cos.p"
    run_pair(paths["base"], paths["ft"], stat=["cos"], save=result, progress=False)
    return {"root": root, **paths, "key": keys, "other": other, "result": result}


def cli(module, *args):
    return run_cli(module.main, [str(a) for a in args])


def attested(setup, tmp_path, result=None):
    out = tmp_path / "statement.json"
    assert cli(attest_cli, result or setup["result"], "--key", setup["key"][0], "--out", out) == 0
    return out


def payload(path):
    return json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))


def one_line(capsys, prefix):
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), text
    return lines[0]


def test_round_trip_verifies(setup, tmp_path, capsys):
    out = attested(setup, tmp_path)
    capsys.readouterr()
    assert cli(verify_cli, out, "--key", setup["key"][1]) == 0
    line = one_line(capsys, "verified")
    assert "recomputed bit for bit" in line and "dependent" in line
    stmt = payload(out)
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    rec = load_record(setup["result"])
    assert stmt["predicate"]["values"]["log10_pvalue"] == rec["log10_pvalue"]
    assert [b["log10_pvalue"] for b in stmt["predicate"]["values"]["per_layer"]] == \
        [b["log10_pvalue"] for b in rec["per_layer"]]
    assert [s["annotations"]["role"] for s in stmt["subject"]] == ["base", "ft"]


def test_root_digest_equals_model_signing(setup):
    import model_signing.hashing as ms_hashing  # a requirement of the toolkit: never skipped
    from model_signing._signing.signing import Payload
    folder = setup["root"] / "nested"
    shutil.copytree(setup["base"], folder / "m")
    (folder / "m" / "sub").mkdir()
    (folder / "m" / "sub" / "extra.txt").write_text("x")
    (folder / "m" / "sub.txt").write_text("y")  # sorts between "sub/…" and others: path order, not string order
    (folder / "m" / ".gitattributes").write_text("*.safetensors filter=lfs")
    for target in (folder / "m", folder / "m" / "model.safetensors"):
        theirs = Payload(ms_hashing.Config().hash(target)).statement.pb.subject[0].digest["sha256"]
        assert root_digest(model_files(target)) == theirs


def test_wrong_key_altered_payload_truncated_foreign(setup, tmp_path, capsys):
    out = attested(setup, tmp_path)
    capsys.readouterr()
    assert cli(verify_cli, out, "--key", setup["other"][1]) == 1
    assert "signature" in one_line(capsys, "not verified:")

    env = json.loads(out.read_text())
    stmt = payload(out)
    stmt["predicate"]["result"]["log10_pvalue"] = -1.0
    env["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(env))
    assert cli(verify_cli, forged, "--key", setup["key"][1]) == 1
    assert "signature" in one_line(capsys, "not verified:")

    truncated = tmp_path / "truncated.json"
    truncated.write_text(out.read_text()[: len(out.read_text()) // 2])
    assert cli(verify_cli, truncated, "--key", setup["key"][1]) == 2
    one_line(capsys, "error:")

    for i, foreign in enumerate(({"hello": 1}, [1, 2], {"payload": "!!", "payloadType": "x", "signatures": [{}]})):
        f = tmp_path / f"foreign{i}.json"
        f.write_text(json.dumps(foreign))
        assert cli(verify_cli, f, "--key", setup["key"][1]) == 2
        one_line(capsys, "error:")
    assert cli(verify_cli, out, "--key", setup["result"]) == 2  # not a key
    one_line(capsys, "error:")


def test_statement_signed_over_another_predicate_type_is_bad_input(setup, tmp_path, capsys):
    from securesystemslib.dsse import Envelope
    from tracing.evidence.statement import PAYLOAD_TYPE, load_signer
    env = Envelope(json.dumps({"_type": "https://in-toto.io/Statement/v1", "subject": [],
                               "predicateType": "https://slsa.dev/provenance/v1", "predicate": {}}).encode(),
                   PAYLOAD_TYPE, {})
    env.sign(load_signer(setup["key"][0]))
    f = tmp_path / "slsa.json"
    f.write_text(json.dumps(env.to_dict()))
    assert cli(verify_cli, f, "--key", setup["key"][1]) == 2
    assert "not a tracing statement" in one_line(capsys, "error:")


def test_weight_changed_after_attesting(setup, tmp_path, capsys):
    ft = tmp_path / "ft"
    shutil.copytree(setup["ft"], ft)
    result = tmp_path / "r.p"
    run_pair(setup["base"], str(ft), stat=["cos"], save=result, progress=False)
    out = attested(setup, tmp_path, result)
    state = load_file(ft / "model.safetensors")
    up = "model.layers.1.mlp.up_proj.weight"
    state[up] = state[up].clone()
    state[up][3] = torch.randn(state[up].shape[1])  # one row of one tensor: block 1's test changes
    save_file(state, ft / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert cli(verify_cli, out, "--key", setup["key"][1]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("digest of the ft model" in x and "model.safetensors" in x for x in lines), lines
    assert any(x.startswith("not verified: value per_layer[1]") for x in lines), lines
    assert not any("digest of the base model" in x for x in lines)


def test_attest_refuses_changed_weights_in_memory_models_and_bad_keys(setup, tmp_path, capsys):
    ft = tmp_path / "ft"
    shutil.copytree(setup["ft"], ft)
    result = tmp_path / "r.p"
    run_pair(setup["base"], str(ft), stat=["cos"], save=result, progress=False)
    (ft / "model.safetensors").write_bytes((ft / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\1")
    out = tmp_path / "s.json"
    assert cli(attest_cli, result, "--key", setup["key"][0], "--out", out) == 2
    assert "changed since the result was computed" in one_line(capsys, "error:")
    assert not out.exists()

    rec = load_record(setup["result"])
    rec["models"]["ft"] = {"id": "ft", "in_memory": True}
    mem = tmp_path / "mem.p"
    save_record(rec, mem)
    assert cli(attest_cli, mem, "--key", setup["key"][0], "--out", out) == 2
    assert "in memory" in one_line(capsys, "error:")

    for bad in (setup["key"][1], tmp_path / "missing.pem", setup["result"]):
        assert cli(attest_cli, setup["result"], "--key", bad, "--out", out) == 2
        one_line(capsys, "error:")
    (tmp_path / "junk.p").write_bytes(b"\x80\x04junk")
    assert cli(attest_cli, tmp_path / "junk.p", "--key", setup["key"][0], "--out", out) == 2
    one_line(capsys, "error:")
    assert not out.exists()


def test_no_secret_in_any_statement(setup, tmp_path, monkeypatch):
    secret = "hf_SECRETtoken1234567890"
    rec = load_record(setup["result"])
    rec["notes"] = [f"downloaded with {secret}"]
    rec["args"]["dataset"] = secret
    leaky = tmp_path / "leaky.p"
    import pickle
    leaky.write_bytes(pickle.dumps(rec))  # a record written around save_record's scrubbing
    monkeypatch.setenv("HF_TOKEN", secret)
    out = attested(setup, tmp_path, leaky)
    assert secret not in out.read_text() and secret not in json.dumps(payload(out))
    assert "<redacted>" in json.dumps(payload(out))


def test_main_attest_and_exports(setup, tmp_path, capsys):
    import main as main_py
    st, bom, card = tmp_path / "s.json", tmp_path / "bom.json", tmp_path / "card.yaml"
    assert run_cli(main_py.main, ["--base_model_id", setup["base"], "--ft_model_id", setup["ft"], "--stat", "cos",
                                  "--quiet", "--attest", str(st), "--key", str(setup["key"][0])]) == 0
    assert cli(verify_cli, st, "--key", setup["key"][1]) == 0
    rates = tmp_path / "rates.csv"
    rates.write_text("stat,variant,false_positive_rate,fp_ci_high,n_independent\ncos,raw,0.0,0.07,50\n")
    assert cli(attest_cli, setup["result"], "--key", setup["key"][0], "--out", st, "--cyclonedx", bom,
               "--model-card", card, "--rates", rates) == 0
    assert payload(st)["predicate"]["calibration"]["measured_error_rates"] == [
        {"stat": "cos", "variant": "raw", "false_positive_rate": 0.0, "fp_ci_high": 0.07, "n_independent": 50}]
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(bom.read_text()) is None
    comp = json.loads(bom.read_text())["metadata"]["component"]
    assert comp["name"] == "ft" and comp["pedigree"]["ancestors"][0]["name"] == "base"
    assert comp["hashes"][0]["content"] == payload(st)["subject"][1]["digest"]["sha256"]
    assert comp["externalReferences"][0]["type"] == "attestation"
    text = card.read_text()
    assert "base_model:\n- base\nbase_model_relation: finetune" in text
    assert hashlib.sha256(st.read_bytes()).hexdigest() in text
    capsys.readouterr()
    # attest options are checked before any work
    assert run_cli(main_py.main, ["--base_model_id", setup["base"], "--ft_model_id", setup["ft"],
                                  "--attest", str(tmp_path / "x.json")]) == 2
    assert "--key" in one_line(capsys, "error:")
    assert run_cli(main_py.main, ["--base_model_id", setup["base"], "--ft_model_id", setup["ft"],
                                  "--attest", str(tmp_path / "x.json"), "--key", str(setup["key"][1])]) == 2
    one_line(capsys, "error:")


def test_independent_pair_card_suggests_no_base(setup, tmp_path):
    result, st, card, bom = tmp_path / "i.p", tmp_path / "i.json", tmp_path / "i.yaml", tmp_path / "i.cdx.json"
    run_pair(setup["base"], setup["indep"], stat=["cos"], save=result, progress=False)
    assert cli(attest_cli, result, "--key", setup["key"][0], "--out", st, "--model-card", card,
               "--cyclonedx", bom) == 0
    assert "base_model" not in card.read_text().replace("no base_model is suggested", "")
    assert "pedigree" not in json.loads(bom.read_text())["metadata"]["component"]


def test_launch_attests_each_pair_and_the_report_links_them(setup, tmp_path):
    import subprocess
    import sys
    import yaml
    from pathlib import Path
    cfg = tmp_path / "list.yaml"
    cfg.write_text(yaml.safe_dump({"base_models": [setup["base"]], "ft_models": [setup["ft"], setup["indep"]]}))
    conf = tmp_path / "slurm-none.conf"
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "launch.py"), str(cfg), "--stat", "cos", "--out",
                        str(tmp_path / "out"), "--no-report", "--attest-key", str(setup["key"][0])],
                       capture_output=True, text=True,
                       cwd=root, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "SLURM_CONF": str(conf)})
    assert r.returncode == 0, r.stdout + r.stderr
    results = sorted((tmp_path / "out").rglob("cos-*.p"))
    statements = [p.with_suffix(".intoto.json") for p in results]
    assert len(results) == 2 and all(s.is_file() for s in statements)
    assert "attested 2 result(s)" in r.stdout
    from types import SimpleNamespace
    from tracing.report.evidence import evidence_section
    from tracing.report.load import read_folder
    data = read_folder(tmp_path / "out")
    section = "\n".join(evidence_section(SimpleNamespace(records=data.records, folder=data.path, out=data.path)))
    assert section.startswith("## Evidence") and all(s.name in section for s in statements)
    from tracing.evidence.check import verify
    for s in statements:
        assert verify(s, setup["key"][1], recompute_values=False)[1] == []
    # the finished grid's Holm family: written beside the results, carried by every statement, the same
    # correction as `attest RESULT --family RESULTS_DIR` gives afterwards
    family = json.loads((tmp_path / "out" / "holm-family.json").read_text())
    assert family["kind"] == "grid" and len(family["members"]) == 2
    for result, s in zip(results, statements):
        corr = payload(s)["predicate"]["correction"]
        assert corr["method"] == "holm" and corr["kind"] == "grid" and corr["size"] == 2
        again = tmp_path / "again.json"
        assert cli(attest_cli, result, "--key", setup["key"][0], "--out", again, "--family", tmp_path / "out") == 0
        assert payload(again)["predicate"]["correction"] == corr
        assert cli(attest_cli, result, "--key", setup["key"][0], "--out", again, "--family",
                   tmp_path / "out" / "holm-family.json") == 0
        assert payload(again)["predicate"]["correction"] == corr
    assert "Holm family of the cos grid (2 pairs)" in r.stdout


@pytest.mark.parametrize("module", ["tracing.attest", "tracing.verify", "tracing.quantcheck"])
def test_every_evidence_command_prints_its_help(module):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage:" in r.stdout and not r.stderr, r.stderr


def test_merge_attribution_goes_into_the_statement_and_the_card(setup, tmp_path):
    lineage = tmp_path / "lineage.json"
    lineage.write_text(json.dumps({"merges": [
        {"model": setup["ft"], "is_merge": True, "parents": [setup["base"], "org/other@abc123"],
         "weights": [0.6, 0.4], "base": None, "reason": "two parents", "per_block": [[0.6, 0.4]]},
        {"model": setup["indep"], "is_merge": False, "parents": [], "weights": []}]}))
    st, card = tmp_path / "s.json", tmp_path / "card.yaml"
    assert cli(attest_cli, setup["result"], "--key", setup["key"][0], "--out", st, "--lineage", lineage,
               "--model-card", card) == 0
    assert payload(st)["predicate"]["merge"]["weights"] == [0.6, 0.4]
    assert "base_model:\n- base\n- org/other\nbase_model_relation: merge" in card.read_text()
    assert cli(verify_cli, st, "--key", setup["key"][1], "--no-recompute") == 0


def test_keyless_sigstore_says_plainly_it_cannot_work_offline(setup, tmp_path, capsys):
    """Keyless signing cannot be exercised offline: the CLI says so in one line (no browser login
    is awaited without a terminal), exits 2 and writes no statement."""
    out = tmp_path / "bundle.json"
    capsys.readouterr()
    assert cli(attest_cli, setup["result"], "--sigstore", "--out", out) == 2
    line = one_line(capsys, "error: keyless signing with Sigstore")
    assert "cannot work offline" in line and "--key PRIVATE.pem" in line
    assert not out.exists()


def test_holm_family_of_a_scan_carried_into_the_statement_and_checked(setup, tmp_path, capsys):
    """A scan's screen record is attested with the Holm family it was adjusted over (found beside it):
    method, size, members, its adjusted log10 p and verdict; verify checks them; a statement whose
    adjusted value does not follow from its members is not verified, naming the correction."""
    from tracing import scan
    from tracing.evidence.make import make_statement
    from tracing.evidence.statement import load_signer, sign
    from tracing.pvalues import holm
    out = tmp_path / "scan"
    rows = scan.scan(setup["ft"], [setup["base"], setup["indep"]], rows=64, out=out)
    family = json.loads((out / "holm-family.json").read_text())
    assert family["method"] == "holm" and len(family["members"]) == 2
    (screen,) = [f for f in out.glob("*_screen.p") if load_record(f)["args"]["base_model_id"] == setup["base"]]
    stmt_file = tmp_path / "screen.json"
    assert cli(attest_cli, screen, "--key", setup["key"][0], "--out", stmt_file) == 0
    corr = payload(stmt_file)["predicate"]["correction"]
    rec = load_record(screen)
    lps = [m["log10_pvalue"] for m in corr["members"]]
    assert corr["method"] == "holm" and corr["size"] == 2 and corr["kind"] == "scan"
    assert lps[corr["member"]] == rec["log10_pvalue"]
    assert corr["adjusted_log10_pvalue"] == float(holm(lps)[corr["member"]])
    assert corr["adjusted_log10_pvalue"] == [r.holm_log10_p for r in rows if r.reference == setup["base"]][0]
    assert corr["verdict_after_correction"] == "dependent" and corr["within_pair"]["method"] == "none"
    capsys.readouterr()
    assert cli(verify_cli, stmt_file, "--key", setup["key"][1]) == 0
    one_line(capsys, "verified")
    stmt = make_statement(rec, family=family)
    stmt["predicate"]["correction"]["adjusted_log10_pvalue"] = rec["log10_pvalue"]  # the correction left out
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(sign(stmt, load_signer(setup["key"][0]))))
    assert cli(verify_cli, forged, "--key", setup["key"][1], "--no-recompute") == 1
    assert "not verified: correction: Holm-adjusted log10 p attested" in capsys.readouterr().out


def test_holm_family_of_a_grid_and_a_result_outside_it(setup, tmp_path, capsys):
    """``--family DIR``: the grid of the result's statistic in a results folder (raw results, one per
    pair); a family that does not hold the result is refused in one line, no statement written."""
    from tracing.pvalues import holm
    grid = tmp_path / "grid"
    for a, b in (("base", "ft"), ("base", "indep"), ("ft", "indep")):
        run_pair(setup[a], setup[b], stat=["cos"], save=grid / f"{a}-{b}.p", progress=False)
    out = tmp_path / "grid.json"
    assert cli(attest_cli, grid / "base-ft.p", "--key", setup["key"][0], "--out", out, "--family", grid) == 0
    corr = payload(out)["predicate"]["correction"]
    assert corr["kind"] == "grid" and corr["size"] == 3
    assert corr["adjusted_log10_pvalue"] == float(holm([m["log10_pvalue"] for m in corr["members"]])[corr["member"]])
    capsys.readouterr()
    assert cli(verify_cli, out, "--key", setup["key"][1], "--no-recompute") == 0
    one_line(capsys, "verified")
    other = tmp_path / "other.json"
    assert cli(attest_cli, setup["result"], "--key", setup["key"][0], "--out", other, "--family",
               grid / "base-ft.p") == 2
    assert "is not a Holm family" in one_line(capsys, "error: ")
    from tracing.evidence.family import family_doc, write_family
    elsewhere = write_family(tmp_path / "holm-family.json", family_doc("scan", "another scan",
                                                                        [(setup["base"], setup["ft"], -3.0)], 0.01))
    assert cli(attest_cli, setup["result"], "--key", setup["key"][0], "--out", other, "--family", elsewhere) == 2
    assert "is not a member of the family another scan" in one_line(capsys, "error: ")
    assert not other.exists()


def test_grid_families_of_two_statistics_and_a_result_outside_them(setup, tmp_path):
    """With several statistics each grid gets its own file; a result that is not a member of its
    grid's family (a --permute run, which the grid leaves out) is attested without it, and said."""
    from tracing.evidence.family import write_grid_families
    from tracing.evidence.make import attest_results
    grid = tmp_path / "grid"
    for a, b in (("base", "ft"), ("base", "indep")):
        run_pair(setup[a], setup[b], stat=["cos", "emb"], save={"cos": grid / f"{a}-{b}-cos.p", "emb": grid / f"{a}-{b}-emb.p"},
                 progress=False)
    run_pair(setup["base"], setup["ft"], stat=["cos"], permute=True, save=grid / "permuted-cos.p", progress=False)
    families = write_grid_families(grid, 0.01)
    assert {s: p.name for s, (p, _) in families.items()} == {"cos": "holm-family-cos.json", "emb": "holm-family-emb.json"}
    assert all(len(doc["members"]) == 2 for _, doc in families.values())
    said = []
    cos = sorted(grid.glob("*-cos.p"))
    assert attest_results(cos, setup["key"][0], said.append, {s: d for s, (_, d) in families.items()}) == (3, 0)
    method = {p.name: payload(p.with_suffix(".intoto.json"))["predicate"]["correction"].get("method") for p in cos}
    assert method["base-ft-cos.p"] == method["base-indep-cos.p"] == "holm" and method["permuted-cos.p"] != "holm"
    assert len(said) == 1 and "permuted-cos.p is not a member of the cos grid" in said[0]


def test_grid_families_describe_the_folder_after_a_rerun_with_fewer_statistics(setup, tmp_path):
    """A launch with cos and emb, then one with cos only and one more pair: every family file in the
    folder is the grid its results now hold (no family file of the earlier launch's grid is left),
    one file per statistic with results."""
    from tracing.evidence.family import grid_family, write_grid_families
    grid = tmp_path / "grid"
    run_pair(setup["base"], setup["ft"], stat=["cos", "emb"], save={"cos": grid / "base-ft-cos.p",
                                                                    "emb": grid / "base-ft-emb.p"}, progress=False)
    write_grid_families(grid, 0.01)
    run_pair(setup["base"], setup["indep"], stat=["cos"], save=grid / "base-indep-cos.p", progress=False)
    written = write_grid_families(grid, 0.01)
    files = sorted(p.name for p in grid.glob("holm-family*.json"))
    assert files == ["holm-family-cos.json", "holm-family-emb.json"]
    for stat in ("cos", "emb"):
        assert json.loads((grid / f"holm-family-{stat}.json").read_text()) == grid_family(grid, stat, 0.01)
    assert sorted(written) == ["cos", "emb"] and len(written["cos"][1]["members"]) == 2
    (grid / "base-ft-emb.p").unlink()  # the folder holds one statistic again
    write_grid_families(grid, 0.01)
    assert sorted(p.name for p in grid.glob("holm-family*.json")) == ["holm-family.json"]
    assert json.loads((grid / "holm-family.json").read_text()) == grid_family(grid, "cos", 0.01)
