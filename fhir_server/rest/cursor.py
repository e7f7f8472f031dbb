"""Signed, tamper-proof paging cursors: the paging state lives in the link.

A cursor is ``base64url(orjson(payload)) + "." + base64url(hmac_sha256)``; any API
process holding the same secret can serve the next page; a forged or altered
cursor gets 400.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson

from fhir_server.fhir.errors import BadRequest

__all__ = ["CursorCodec"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def encode(self, payload: dict[str, Any]) -> str:
        body = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        sig = hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
        return f"{_b64(body)}.{_b64(sig)}"

    def decode(self, token: str, *, param: str = "_cursor") -> dict[str, Any]:
        try:
            body_s, sig_s = token.split(".", 1)
            body, sig = _unb64(body_s), _unb64(sig_s)
        except (ValueError, TypeError) as exc:
            raise BadRequest("Malformed paging cursor", expression=param) from exc
        expected = hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(sig, expected):
            raise BadRequest("Invalid paging cursor (signature mismatch)", expression=param)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest("Malformed paging cursor", expression=param) from exc
        if not isinstance(data, dict):
            raise BadRequest("Malformed paging cursor", expression=param)
        return data
