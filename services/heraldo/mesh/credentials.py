"""Credentials for the edge: a signing key Envoy verifies with, and a bearer token signed by it.

The local mesh (and compose's one-shot ``credentials`` service) generates a fresh key at start:
nothing is hard-coded, and a key is only ever written to the mesh's own directory.

Two files come out of :func:`generate`:

``jwks.json``
    The JSON Web Key Set Envoy's ``jwt_authn`` filter reads (``local_jwks``), one HS256 key.
``credentials.json``
    What a client needs, with this shape (version 1)::

        {"version": 1,
         "authorization": "Bearer <token>",   # the Authorization header value, as is
         "token": "<token>",                  # the JWT alone
         "issuer": "heraldo-local", "audience": "heraldo-edge", "subject": "local-operator",
         "expires_at": "2026-02-01T12:00:00+00:00"}

HS256 (a shared secret) keeps this free of a crypto dependency, but it means Envoy holds the key
that signs tokens: anyone who can read ``jwks.json`` can mint one. That is fine for one machine;
a real deployment points Envoy at its identity provider's public keys (RS256 or ES256) instead.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ISSUER = "heraldo-local"
AUDIENCE = "heraldo-edge"
SUBJECT = "local-operator"
#: Long enough for a developer's day of ``make up``; every mesh start issues a new one anyway.
TOKEN_LIFETIME_S = 7 * 24 * 3600
JWKS_FILE = "jwks.json"
CREDENTIALS_FILE = "credentials.json"
CREDENTIALS_VERSION = 1


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign_hs256(claims: dict, key: bytes, kid: str) -> str:
    """A compact JWS (a JWT) over ``claims``, signed with HMAC-SHA256."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode("utf-8"))
        for part in (header, claims))
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


@dataclass(frozen=True)
class EdgeCredentials:
    """A generated key set and one token; ``authorization`` is the header value to send."""

    jwks_path: Path
    credentials_path: Path
    token: str
    expires_at: dt.datetime

    @property
    def authorization(self) -> str:
        return f"Bearer {self.token}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": self.authorization}


def _write_private(path: Path, payload: dict) -> None:
    """Writes ``payload`` as JSON readable by its owner only (it holds a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")


def generate(directory: Path, *, lifetime_s: int = TOKEN_LIFETIME_S,
             now: dt.datetime | None = None) -> EdgeCredentials:
    """Writes a fresh ``jwks.json`` and ``credentials.json`` into ``directory``.

    Raises:
        OSError: the directory cannot be written.
    """
    key = secrets.token_bytes(32)
    kid = secrets.token_hex(4)
    issued = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    expires = issued + dt.timedelta(seconds=lifetime_s)
    token = sign_hs256({"iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT,
                        "iat": int(issued.timestamp()), "exp": int(expires.timestamp())}, key, kid)

    jwks_path = directory / JWKS_FILE
    credentials_path = directory / CREDENTIALS_FILE
    _write_private(jwks_path, {"keys": [
        {"kty": "oct", "alg": "HS256", "use": "sig", "kid": kid, "k": _b64url(key)}]})
    _write_private(credentials_path, {
        "version": CREDENTIALS_VERSION, "authorization": f"Bearer {token}", "token": token,
        "issuer": ISSUER, "audience": AUDIENCE, "subject": SUBJECT,
        "expires_at": expires.isoformat()})
    logger.info("generated edge credentials kid=%s expires_at=%s dir=%s",
                kid, expires.isoformat(), directory)
    return EdgeCredentials(jwks_path=jwks_path, credentials_path=credentials_path, token=token,
                           expires_at=expires)


def _days_left(directory: Path) -> float:
    """Days until the token in ``directory`` expires; 0 when there is none or it cannot be read."""
    try:
        expires = dt.datetime.fromisoformat(
            json.loads((directory / CREDENTIALS_FILE).read_text())["expires_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    return (expires - dt.datetime.now(dt.UTC)).total_seconds() / 86400


def main(argv: list[str] | None = None) -> None:
    """``python -m heraldo.mesh.credentials --dir DIR``: what compose's one-shot service runs."""
    parser = argparse.ArgumentParser(prog="python -m heraldo.mesh.credentials",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True,
                        help=f"where {JWKS_FILE} and {CREDENTIALS_FILE} are written")
    parser.add_argument("--keep", action="store_true",
                        help="leave existing credentials alone while their token has more than "
                             "a day left (compose restarts keep tokens)")
    args = parser.parse_args(argv)
    if args.keep and (args.dir / JWKS_FILE).exists() and _days_left(args.dir) > 1:
        print(f"keeping the credentials in {args.dir}")
        return
    credentials = generate(args.dir)
    # Envoy in its own container runs as another user; it only needs to read the key set.
    credentials.jwks_path.chmod(0o644)
    print(f"wrote {credentials.jwks_path} and {credentials.credentials_path}")


if __name__ == "__main__":
    main()
