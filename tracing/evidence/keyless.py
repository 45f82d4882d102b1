"""Keyless signing with Sigstore (``attest --sigstore``, ``verify --identity``): the statement is
signed as a DSSE envelope inside a Sigstore bundle, by a short-lived certificate that Fulcio
issues to an OIDC identity (an ambient CI credential, else a browser login), logged in Rekor.

This needs network access to the public Sigstore instance (its TUF trust root, Fulcio, Rekor) and,
to sign, an OIDC identity: it cannot work offline, and the offline tests of this toolkit do not
exercise it (they test the EC P-256 key path, which shares everything but the signature). Without
an ambient CI credential and without a terminal, signing stops at once instead of waiting for a
browser login.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import TracingError
from .statement import NotVerified

OFFLINE = ("keyless Sigstore needs network access to the public Sigstore services (TUF trust root, Fulcio, Rekor) "
           "and cannot work offline; this toolkit's offline tests do not cover it")


def sign_keyless(stmt: dict) -> str:
    """The Sigstore bundle (JSON) of ``stmt``."""
    from .predicate import canonical
    try:
        from sigstore.dsse import Statement
        from sigstore.models import ClientTrustConfig
        from sigstore.oidc import IdentityToken, Issuer, detect_credential
        from sigstore.sign import SigningContext
        trust = ClientTrustConfig.production()
        raw = detect_credential()
        if not raw and not sys.stdin.isatty():
            raise TracingError(f"keyless signing with Sigstore needs an OIDC identity: no ambient CI credential and "
                               f"no terminal for a browser login; {OFFLINE}; sign offline with --key PRIVATE.pem")
        token = IdentityToken(raw) if raw else Issuer(trust.signing_config.get_oidc_url()).identity_token()
        with SigningContext.from_trust_config(trust).signer(token) as signer:
            return signer.sign_dsse(Statement(canonical(stmt))).to_json()
    except TracingError:
        raise
    except Exception as e:  # network, identity or service errors: one line, never a traceback
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__
        raise TracingError(f"keyless signing with Sigstore failed ({why}): {OFFLINE}, and it needs an OIDC identity; "
                           f"sign offline with --key PRIVATE.pem instead") from None


def open_bundle(path: str | Path, identity: str, issuer: str | None) -> dict:
    """The statement of a Sigstore bundle whose certificate names ``identity`` (and ``issuer``)."""
    try:
        from sigstore.errors import VerificationError
        from sigstore.models import Bundle
        from sigstore.verify import Verifier
        from sigstore.verify.policy import Identity
    except ImportError:
        raise TracingError("the sigstore package is not installed; pip install sigstore") from None
    try:
        bundle = Bundle.from_json(Path(path).read_bytes())
    except Exception as e:
        raise TracingError(f"{path} is not a Sigstore bundle ({type(e).__name__})") from None
    try:
        _, payload = Verifier.production().verify_dsse(bundle, Identity(identity=identity, issuer=issuer))
    except VerificationError as e:
        raise NotVerified(f"signature: the Sigstore bundle does not verify for {identity} ({str(e)[:160]})") from None
    except Exception as e:
        raise TracingError(f"cannot verify the Sigstore bundle ({type(e).__name__}): {OFFLINE}; a statement signed "
                           f"with --key is verified offline with --key PUBLIC.pem") from None
    try:
        stmt = json.loads(payload)
    except ValueError:
        raise TracingError("the signed payload is not JSON; it is not a tracing statement") from None
    from .statement import check_statement
    return check_statement(stmt)
