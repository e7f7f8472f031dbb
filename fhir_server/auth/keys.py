"""The server's signing key (RS256 access tokens and id_tokens) and its public JWKS.

Production (``FHIR_SERVER_MODE=production``) reads a PEM RSA private key from
``FHIR_SERVER_AUTH_SIGNING_KEY`` and refuses to run without one. In development a
2048-bit key is generated once and kept in ``<data_dir>/auth/signing-key.pem`` (mode
0600), so that tokens survive a restart.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import RSAKey

from fhir_server.config import Settings

__all__ = ["SigningKey", "load_signing_key"]

log = logging.getLogger("fhir_server.auth")


@dataclass(frozen=True)
class SigningKey:
    key: RSAKey
    kid: str
    generated: bool

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        public.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [public]}


def _from_pem(data: bytes, generated: bool) -> SigningKey:
    key = RSAKey.import_key(data)
    if not key.is_private:
        raise ValueError("the signing key must be an RSA private key")
    return SigningKey(key, key.thumbprint(), generated)


def load_signing_key(settings: Settings) -> SigningKey:
    if settings.auth_signing_key:
        path = Path(settings.auth_signing_key)
        if not path.is_file():
            raise RuntimeError(f"signing key file {path} does not exist")
        return _from_pem(path.read_bytes(), False)
    if settings.mode == "production":
        raise RuntimeError("production mode refuses generated signing keys: set FHIR_SERVER_AUTH_SIGNING_KEY")
    path = Path(settings.data_dir) / "auth" / "signing-key.pem"
    if path.is_file():
        return _from_pem(path.read_bytes(), True)
    key = RSAKey.generate_key(2048, private=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.as_pem(private=True))
    os.replace(tmp, path)
    log.warning("generated a development signing key at %s (production mode refuses this)", path)
    return _from_pem(path.read_bytes(), True)
