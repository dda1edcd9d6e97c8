"""The OpenAI-compatible backend (vLLM) as seen from the gateway: one pooled async HTTP client, which sends the
backend's key (the managed vLLM's per-start secret, or QUELL_BACKEND_API_KEY) on every request."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from service.errors import APIError, backend_unavailable

log = logging.getLogger("quell.backend")

MODELS_TTL_S = 10.0
PROBE_TERM = "--"
"""Not a valid term (no letters or digits): a backend with the Quell plugin rejects it with HTTP 400."""


class Backend:
    def __init__(self, base_url: str, api_key: str | None, timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None):  # fmt: skip
        """`transport`: the test seam (an `httpx.MockTransport` replaying recorded vLLM answers, or an ASGI app)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            transport=transport,
        )
        self._models: list[str] = []
        self._models_at = 0.0

    def retarget(self, base_url: str, api_key: str | None) -> None:
        """Point at another server (the managed vLLM after a restart: new port, new key). Requests in flight to the
        old one fail on their own; cached model names are dropped."""
        self.base_url = base_url.rstrip("/")
        self.client.base_url = httpx.URL(self.base_url)
        self.client.headers.pop("Authorization", None)
        if api_key:
            self.client.headers["Authorization"] = f"Bearer {api_key}"
        self._models, self._models_at = [], 0.0

    async def aclose(self) -> None:
        await self.client.aclose()

    async def ready(self) -> bool:
        try:
            await self.models(refresh=True)
            return True
        except APIError:
            return False

    async def models(self, refresh: bool = False) -> list[str]:
        if refresh or time.monotonic() - self._models_at > MODELS_TTL_S or not self._models:
            resp = await self._send("GET", "/v1/models")
            if resp.status_code != 200:
                raise backend_unavailable(f"GET /v1/models answered {resp.status_code}")
            self._models = [m["id"] for m in resp.json().get("data", [])]
            self._models_at = time.monotonic()
        return self._models

    async def models_payload(self) -> dict:
        resp = await self._send("GET", "/v1/models")
        if resp.status_code != 200:
            raise backend_unavailable(f"GET /v1/models answered {resp.status_code}")
        return resp.json()

    async def post(self, path: str, body: dict) -> httpx.Response:
        return await self._send("POST", path, json=body)

    @asynccontextmanager
    async def stream(self, path: str, body: dict) -> AsyncIterator[httpx.Response]:
        try:
            async with self.client.stream("POST", path, json=body) as resp:
                yield resp
        except httpx.TransportError as exc:  # failing to open; failures while reading end in service.stream_end
            raise backend_unavailable(_describe(exc)) from None

    async def has_decode_mask(self, model: str) -> bool:
        """Probe for the Quell logits processor: it rejects an invalid term; a backend without it ignores it."""
        body = {"model": model, "prompt": "a", "max_tokens": 1, "vllm_xargs": {"quell_terms": [PROBE_TERM]}}
        resp = await self.post("/v1/completions", body)
        return resp.status_code == 400 and "quell" in resp.text.lower()

    async def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return await self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # refused, reset, cut mid-body, timed out: never a 500
            raise backend_unavailable(_describe(exc)) from None


def _describe(exc: httpx.HTTPError) -> str:
    kind = type(exc).__name__
    return f"{kind} talking to the backend" + (f" ({exc})" if str(exc) else "")
