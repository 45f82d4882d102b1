"""Verify a statement: its signature, the subjects' digests against the models, and the recorded
values against a recomputation with the recorded options (bit for bit)."""
from __future__ import annotations

from pathlib import Path

from ..errors import TracingError
from .digests import checkpoint_location, model_files, root_digest, spec_of_name
from .predicate import digest, values
from .statement import NotVerified, load_public, open_envelope, read_envelope

ROLES = ("base", "ft")


def _subjects(stmt: dict) -> dict[str, dict]:
    try:
        subs = {s["annotations"]["role"]: s for s in stmt["subject"]}
        for role in ROLES:
            subs[role]["digest"]["sha256"]
    except (KeyError, TypeError):
        raise TracingError("the statement's subjects do not name a base and an ft model with sha256 digests") from None
    return subs


def model_spec(sub: dict, given: str | None) -> str:
    """What to open for a subject: the model given, else the hub name it records, else its spec."""
    if given:
        return given
    return spec_of_name(sub.get("name", "")) or str(sub["annotations"].get("spec"))


def check_digest(role: str, sub: dict, spec: str) -> list[str]:
    """Failures (one line each) when the model ``spec`` does not hash to the subject's root digest."""
    from ..models import Checkpoint
    files = model_files(checkpoint_location(Checkpoint(spec)))
    if root_digest(files) == sub["digest"]["sha256"]:
        return []
    recorded = {f.get("name"): f.get("sha256") for f in sub["annotations"].get("files") or []}
    diff = sorted(set(files) ^ set(recorded) | {k for k in files if recorded.get(k) not in (None, files[k])})
    return [f"digest of the {role} model {sub['name']} ({spec}): root {root_digest(files)[:16]}… is not the "
            f"attested {sub['digest']['sha256'][:16]}… (files differing: {', '.join(diff) or 'unknown'})"]


def _first_difference(a, b, path: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: attested {a!r}, recomputed {b!r}"


def recompute(pred: dict, stat: str, base: str, ft: str) -> list[str]:
    """Failures (one line per value key) where a recomputation differs from the attested values."""
    from ..api import run_pair
    from ..options import Options
    if not isinstance(pred.get("options"), dict):
        raise TracingError("the predicate records no options; it cannot be recomputed")
    opts = Options.from_dict({**pred["options"], "stat": [stat]})
    rec = run_pair(base, ft, opts, save=None, progress=False)[0]
    got, want = values(rec), pred["values"]
    fails = []
    for k in sorted(set(got) | set(want)):
        d = _first_difference(want.get(k), got.get(k), k)
        if d:
            fails.append(f"value {d}")
    return fails


def verify(path: str | Path, key: str | Path | None, base: str | None = None, ft: str | None = None,
           recompute_values: bool = True, identity: str | None = None, issuer: str | None = None
           ) -> tuple[dict, list[str]]:
    """``(statement, failures)``; raises TracingError for bad input, NotVerified for a bad signature.
    ``key``: the signer's public key; else ``identity`` (and ``issuer``) of a keyless Sigstore bundle."""
    if key is not None:
        stmt = open_envelope(read_envelope(path), load_public(key))
    elif identity:
        from .keyless import open_bundle
        stmt = open_bundle(path, identity, issuer)
    else:
        raise TracingError("give the signer's public key (--key) or, for a Sigstore bundle, its identity (--identity)")
    pred = stmt.get("predicate") or {}
    if not isinstance(pred.get("values"), dict) or pred.get("values_sha256") != digest(pred["values"]):
        raise NotVerified("the predicate's values do not match its own values_sha256")
    from .family import check as check_family
    fails = check_family(pred.get("correction"), (pred.get("values") or {}).get("log10_pvalue"))
    subs = _subjects(stmt)
    specs = {r: model_spec(subs[r], g) for r, g in zip(ROLES, (base, ft))}
    for role in ROLES:
        fails += check_digest(role, subs[role], specs[role])
    if recompute_values:
        try:
            stat = pred["statistic"]["name"]
        except (KeyError, TypeError):
            raise TracingError("the predicate names no statistic") from None
        fails += recompute(pred, stat, specs["base"], specs["ft"])
    return stmt, fails


__all__ = ["verify", "NotVerified"]
