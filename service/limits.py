"""Back-pressure at the door: request body and header size limits (413, 431) and caps on concurrent requests (429
with Retry-After).

A plain ASGI middleware, so that a request counts as in flight until its last byte is sent, streams included, and
an oversized body is refused while it arrives, before anything parses it. Concurrency is counted per gateway and per
client key (the Authorization header's digest; keyless requests share one slot pool). Health, readiness and metrics
routes are never limited: a probe must see the gateway even when it is full.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import APIError

UNLIMITED_PATHS = ("/healthz", "/readyz", "/metrics")


class BodyTooLarge(HTTPException):
    """Raised from `receive` while an over-long body arrives; FastAPI passes HTTP exceptions through its body
    parsing, and the error handlers turn it into a 413 error object."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes (QUELL_MAX_BODY_BYTES)")


class RequestLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_concurrent: int, max_concurrent_per_key: int,
                 max_header_bytes: int = 32 * 1024):  # fmt: skip
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_concurrent = max_concurrent
        self.max_concurrent_per_key = max_concurrent_per_key
        self._in_flight = 0
        self._per_key: Counter[bytes] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNLIMITED_PATHS):
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_header_bytes:
            await self._refuse(send, APIError(431, f"request headers larger than {self.max_header_bytes} bytes in all",
                                              param="headers", code="headers_too_large"))  # fmt: skip
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(send, self._too_large())
            return
        key = hashlib.sha256(headers.get(b"authorization", b"")).digest()
        if self._in_flight >= self.max_concurrent:
            await self._refuse(send, self._busy(f"the gateway is serving its limit of {self.max_concurrent} requests"))
            return
        if self._per_key[key] >= self.max_concurrent_per_key:
            await self._refuse(send, self._busy(f"this API key has {self.max_concurrent_per_key} requests in flight, "
                                                "its limit"))  # fmt: skip
            return
        self._in_flight += 1
        self._per_key[key] += 1
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self._in_flight -= 1
            self._per_key[key] -= 1
            if self._per_key[key] <= 0:
                del self._per_key[key]

    def _too_large(self) -> APIError:
        return APIError(413, f"request body larger than {self.max_body_bytes} bytes (QUELL_MAX_BODY_BYTES)",
                        param="body", code="request_too_large")  # fmt: skip

    @staticmethod
    def _busy(why: str) -> APIError:
        return APIError(429, f"{why}; retry shortly", type="rate_limit_error", code="too_many_concurrent_requests",
                        headers={"Retry-After": "1"})  # fmt: skip

    @staticmethod
    async def _refuse(send: Send, error: APIError) -> None:
        body = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
