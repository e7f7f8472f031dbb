"""ASGI middleware refusing bodies over the configured size before anything parses them."""

from __future__ import annotations

from typing import Any

import orjson

from fhir_server.fhir.errors import Issue, PayloadTooLarge, operation_outcome

__all__ = ["BodyLimitMiddleware", "BodyTooLarge"]


class BodyTooLarge(PayloadTooLarge):
    """Raised from ``receive`` when a streamed body passes the limit (rendered as 413)."""


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._reject(send)
                return
        seen = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(f"Request body exceeds the limit of {self.max_bytes} bytes", expression="Resource")
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Any) -> None:
        body = orjson.dumps(operation_outcome([Issue(
            f"Request body exceeds the limit of {self.max_bytes} bytes", "too-costly", "error", ("Resource",))]))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/fhir+json; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
