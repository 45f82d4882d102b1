"""Attest: a result record → a signed in-toto statement naming both models by their root digests."""
from __future__ import annotations

from pathlib import Path

from ..errors import TracingError
from .digests import attest_files, record_location, root_digest, subject_name
from .predicate import PREDICATE_TYPE, build
from .statement import sign, statement, subject

ROLES = ("base", "ft")


def subjects_for(rec: dict) -> list[dict]:
    """One subject per model: its name, root digest and per-file digests, after checking that the
    weight files are still what the record says was tested (:func:`.digests.attest_files`: a file the
    record names by its fast identity is hashed here, after that identity is checked, and listed in
    ``computed_at_attest``; a range-read file keeps the hub's digest)."""
    out = []
    models = rec.get("models") or {}
    for role in ROLES:
        entry = models.get(role) or {}
        loc = record_location(entry)
        if loc is None:
            raise TracingError(f"the {role} model was compared in memory and has no files to name; "
                               f"save it and compare the saved folders to attest the result")
        if not loc.exists() and not all((f.get("sha256_source") == "hub") for f in entry.get("files") or [{}]):
            raise TracingError(f"{loc} does not exist; attest on the machine that holds the {role} model's files")
        got = attest_files(entry, loc)
        if got.changed:
            raise TracingError(f"{role} model {loc}: {', '.join(got.changed)} changed since the result was computed; "
                               f"compute the result again before attesting it")
        s = subject(subject_name(entry), role, got.files, root_digest(got.files), got.sources)
        s["annotations"]["computed_at_attest"] = got.computed
        s["annotations"]["spec"] = str(entry.get("id"))
        if (entry.get("quantization") or {}).get("format"):
            s["annotations"]["format"] = str(entry["quantization"]["format"])
        out.append(s)
    return out


def read_rates(path: str | Path) -> list[dict]:
    """The rows of an error-rate table (``rates.csv`` of a report, ``lineage_rates.csv``)."""
    import pandas as pd
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise TracingError(f"cannot read the error-rate table {path} ({type(e).__name__}); give the rates.csv "
                           f"a report with a known lineage wrote") from None
    return df.astype(object).where(df.notna(), None).to_dict("records")


def read_merge(path: str | Path, model: str) -> dict | None:
    """The merge attribution of ``model`` in a ``lineage.json`` written by ``python -m tracing.lineage
    --merges`` (parents and weights, per block too), or None when it is not called a merge there."""
    import json
    try:
        merges = json.loads(Path(path).read_text()).get("merges")
    except (OSError, ValueError, AttributeError) as e:
        raise TracingError(f"cannot read the lineage {path} ({type(e).__name__}); give the lineage.json "
                           f"python -m tracing.lineage --merges wrote") from None
    if not isinstance(merges, list):
        raise TracingError(f"{path} holds no merge attribution; run python -m tracing.lineage with --merges")
    found = next((m for m in merges if isinstance(m, dict) and m.get("model") == model and m.get("is_merge")), None)
    if found is None:
        return None
    return {k: found.get(k) for k in ("parents", "weights", "base", "reason", "per_block")}


def make_statement(rec: dict, rates: list[dict] | None = None, merge: dict | None = None,
                   family: dict | None = None) -> dict:
    """The statement of ``rec``; ``rates``: the measured error-rate table its calibration refers to;
    ``merge``: the derived model's merge attribution (:func:`read_merge`); ``family``: the Holm
    family its verdict was adjusted over (:mod:`.family`)."""
    from ..provenance import scrub
    from .family import correction
    from .predicate import plain
    pred = build(rec)
    if family is not None:
        pred["correction"] = plain(correction(family, rec, pred["correction"]))
    if rates is not None:
        pred["calibration"]["measured_error_rates"] = plain(rates)
    if merge is not None:
        pred["merge"] = plain(merge)
    return scrub(statement(subjects_for(rec), PREDICATE_TYPE, pred))


def attest(rec: dict, key: str | Path | None, out: str | Path, keyless: bool = False,
           rates: list[dict] | None = None, lineage: str | Path | None = None, family: dict | None = None) -> dict:
    """Sign ``rec``'s statement with the EC P-256 private key ``key`` (or, ``keyless``, with Sigstore:
    :mod:`tracing.evidence.keyless`); write the envelope (or bundle) to ``out`` atomically; return
    the statement."""
    import json
    from ..fileio import atomic_write, check_writable
    from .statement import load_signer
    check_writable(out)
    signer = None if keyless else load_signer(key)
    merge = read_merge(lineage, str(rec.get("ft_model_id"))) if lineage else None
    stmt = make_statement(rec, rates, merge, family)
    if keyless:
        from .keyless import sign_keyless
        atomic_write(out, sign_keyless(stmt))
    else:
        atomic_write(out, json.dumps(sign(stmt, signer), indent=1) + "\n")
    return stmt


def statement_path(result: str | Path) -> Path:
    """Where a result's statement goes by default: beside it, ``<result>.intoto.json``."""
    return Path(result).with_suffix(".intoto.json")


def attest_results(results, key: str | Path, say=print, families: dict[str, dict] | None = None) -> tuple[int, int]:
    """Attest every completed result pickle of ``results`` beside it; returns how many were attested
    and how many could not be (each said on one line; a failed pair gets no statement). ``families``:
    the Holm family of each statistic's grid, carried by each result that is a member of it (a
    result outside it, e.g. a pair run again the other way round, is attested without it and said)."""
    from ..results import load_record
    from .family import member_of
    done = failed = 0
    for p in results:
        if not Path(p).is_file():  # a pair that could not run has no result
            continue
        try:
            rec = load_record(p)
            if rec.get("status", "ok") != "ok":
                continue
            family = (families or {}).get(rec.get("stat"))
            if family is not None and not member_of(family, rec):
                say(f"note: {p} is not a member of {family['family']}; attested without the family")
                family = None
            attest(rec, key, statement_path(p), family=family)
            done += 1
        except (TracingError, OSError) as e:
            failed += 1
            say(f"warning: {p}: not attested ({e})")
    return done, failed
