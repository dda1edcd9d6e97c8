"""Back-pressure: the concurrency caps answer 429 with Retry-After while requests are in flight, and free their
slots when a request ends, a stream included. The middleware runs around a real ASGI app that holds each request
open until the test lets it finish (the only way to have requests truly in flight at once in-process)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.limits import RequestLimits


class HeldApp:
    """Answers each request only when `release` is set, streaming its body in two parts."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] != "/readyz":
            self.entered += 1
            await self.release.wait()
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize(("per_key", "total", "other_key_passes"), [(1, 10, True), (10, 1, False)])
async def test_over_the_cap_is_429_and_slots_come_back(per_key: int, total: int, other_key_passes: bool) -> None:
    inner = HeldApp()
    app = RequestLimits(inner, max_body_bytes=1 << 20, max_concurrent=total, max_concurrent_per_key=per_key)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        first = asyncio.create_task(client.post("/v1/chat/completions", headers={"authorization": "Bearer a"}))
        while inner.entered < 1:
            await asyncio.sleep(0.01)
        busy = await client.post("/v1/chat/completions", headers={"authorization": "Bearer a"})
        other = asyncio.create_task(client.post("/v1/chat/completions", headers={"authorization": "Bearer b"}))
        probe = await client.get("/readyz")  # probes are never limited
        while not other.done() and inner.entered < 2:  # the other key was answered, or is inside the app
            await asyncio.sleep(0.01)
        inner.release.set()
        assert (await first).text == "partend"
        again = await client.post("/v1/chat/completions", headers={"authorization": "Bearer a"})
        other_resp = await other
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "too_many_concurrent_requests"
    assert probe.status_code == 200
    assert (other_resp.status_code == 200) is other_key_passes
    assert again.status_code == 200
