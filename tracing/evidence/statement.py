"""in-toto Statement v1 in a DSSE envelope, signed offline with an EC P-256 key.

Signing and verification are securesystemslib's (DSSE pre-authentication encoding, ECDSA P-256 with
SHA-256 through pyca/cryptography); the statement's structure is checked with the in-toto
attestation package. Nothing here is hand-written cryptography.
"""
from __future__ import annotations

import binascii
import json
from pathlib import Path

from ..errors import TracingError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


class NotVerified(Exception):
    """A check failed (signature, digest or value): exit 1, one line naming which."""


def subject(name: str, role: str, files: dict[str, str], root: str, sources: dict[str, str] | None = None) -> dict:
    """``sources``: where each file's digest comes from (the hub, the record, computed at attest time)."""
    rows = [{"name": k, "sha256": v, **({"sha256_source": sources[k]} if sources and k in sources else {})}
            for k, v in files.items()]
    return {"name": name, "digest": {"sha256": root}, "annotations": {"role": role, "files": rows}}


def statement(subjects: list[dict], predicate_type: str, predicate: dict) -> dict:
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement
    pbs = [ResourceDescriptor(name=s["name"], digest=s["digest"]).pb for s in subjects]
    Statement(pbs, predicate_type, {"_": 0}).validate()  # structure only (protobuf turns ints to floats)
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": predicate_type, "predicate": predicate}


def _read_pem(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TracingError(f"cannot read the {what} key {path}: {e.strerror or e}; give a PEM file") from None


def load_signer(path: str | Path):
    """A securesystemslib signer for an EC P-256 private key in PEM (unencrypted)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner
    try:
        key = load_pem_private_key(_read_pem(path, "private"), password=None)
    except (ValueError, TypeError) as e:
        raise TracingError(f"{path} is not an unencrypted PEM private key ({str(e).splitlines()[0]}); "
                           f"make one with: openssl ecparam -name prime256v1 -genkey -noout -out key.pem") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise TracingError(f"{path} is not an EC P-256 private key; make one with: "
                           f"openssl ecparam -name prime256v1 -genkey -noout -out key.pem")
    return CryptoSigner(key)


def load_public(path: str | Path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey
    try:
        key = load_pem_public_key(_read_pem(path, "public"))
    except (ValueError, TypeError) as e:
        raise TracingError(f"{path} is not a PEM public key ({str(e).splitlines()[0]}); "
                           f"export it with: openssl ec -in key.pem -pubout -out key.pub") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise TracingError(f"{path} is not an EC P-256 public key")
    return SSlibKey.from_crypto(key)


def sign(stmt: dict, signer) -> dict:
    """The DSSE envelope (JSON-ready dict) of ``stmt`` signed by ``signer``."""
    from securesystemslib.dsse import Envelope
    from .predicate import canonical
    env = Envelope(canonical(stmt), PAYLOAD_TYPE, {})
    env.sign(signer)
    return env.to_dict()


def read_envelope(path: str | Path):
    """The DSSE envelope in ``path`` (TracingError for anything that is not one)."""
    from securesystemslib.dsse import Envelope
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise TracingError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError):
        raise TracingError(f"{path} is not JSON (truncated or not a statement); give the file tracing.attest wrote") from None
    try:
        if not (isinstance(data, dict) and isinstance(data.get("signatures"), list) and data["signatures"]
                and all(isinstance(s, dict) for s in data["signatures"])):
            raise KeyError("signatures")
        return Envelope.from_dict(data)
    except (KeyError, TypeError, ValueError, binascii.Error, AttributeError) as e:
        raise TracingError(f"{path} is not a signed DSSE envelope ({type(e).__name__}); give the file "
                           f"tracing.attest wrote") from None


def open_envelope(env, key) -> dict:
    """The statement inside ``env`` after its signature verifies with ``key`` (NotVerified if it
    does not; TracingError if a verified payload is not a tracing statement)."""
    from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
    if env.payload_type != PAYLOAD_TYPE:
        raise TracingError(f"the envelope's payload type is {env.payload_type!r}, not an in-toto statement")
    try:
        env.verify([key], 1)
    except (VerificationError, UnverifiedSignatureError, ValueError) as e:
        raise NotVerified(f"signature: not made by the key {key.keyid[:16]}… over this payload "
                          f"({type(e).__name__})") from None
    try:
        stmt = json.loads(env.payload)
    except (ValueError, UnicodeDecodeError):
        raise TracingError("the signed payload is not JSON; it is not a tracing statement") from None
    return check_statement(stmt)


def check_statement(stmt) -> dict:
    """``stmt`` itself when it is a tracing statement, else a TracingError."""
    from .predicate import PREDICATE_TYPE
    if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE or stmt.get("predicateType") != PREDICATE_TYPE:
        raise TracingError(f"the signed statement is not a tracing statement (predicateType "
                           f"{stmt.get('predicateType') if isinstance(stmt, dict) else None!r})")
    return stmt
