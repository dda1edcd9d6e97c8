"""A FAKE vLLM for faults a real one cannot be made to show on cue: it answers over real TCP, replays a stream that
a real vLLM sent (tests/recordings/), then cuts the connection mid-chunk or goes silent. The gateway's real HTTP
client (httpx, with its real read time-out) is what meets the fault. Everything else is tested against real vLLM.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

RECORDINGS = Path(__file__).resolve().parent / "recordings"


def recorded_events(name: str) -> list[bytes]:
    """The SSE events (each `data: ...\\n\\n`) of a stream recorded from a real vLLM."""
    text = (RECORDINGS / name).read_text(encoding="utf-8")
    return [f"{block}\n\n".encode() for block in text.split("\n\n") if block.strip()]


@dataclass
class FakeBackend:
    """`then`: what happens after the first `keep` events of the recording: "cut" (connection closed in the middle
    of a chunk), "hang" (nothing more, connection held open) or "finish" (the whole recording, as vLLM sent it)."""

    events: list[bytes]
    keep: int
    then: Literal["cut", "hang", "finish"]
    model: str = "SmolLM2-135M-Instruct"
    url: str = ""
    requests: list[str] = field(default_factory=list)
    _release: asyncio.Event | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode()
            lengths = [
                int(h.split(b":", 1)[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")
            ]
            length = lengths[0] if lengths else 0
            if length:
                await reader.readexactly(length)
            self.requests.append(line)
            if line.startswith("GET /v1/models"):
                body = json.dumps({"object": "list", "data": [{"id": self.model, "object": "model"}]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            events = self.events if self.then == "finish" else self.events[: self.keep]
            for event in events:
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                await writer.drain()
            if self.then == "finish":
                writer.write(b"0\r\n\r\n")
            elif self.then == "cut":
                writer.write(b'40\r\ndata: {"id":"chatcmpl-cut')  # half a chunk, then the connection drops
            else:
                await writer.drain()
                assert self._release is not None
                await self._release.wait()  # silent until the test ends
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextmanager
def fake_backend(events: list[bytes], keep: int, then: Literal["cut", "hang", "finish"]) -> Iterator[FakeBackend]:
    """A FakeBackend listening on a free loopback port in its own thread, for the `with` block."""
    fake = FakeBackend(events, keep, then)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server: list[asyncio.base_events.Server] = []

    async def serve() -> None:
        fake._release = asyncio.Event()
        server.append(await asyncio.start_server(fake._handle, "127.0.0.1", 0))
        fake.url = f"http://127.0.0.1:{server[0].sockets[0].getsockname()[1]}"
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=10)
    started.wait(10)
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(fake._release.set)  # type: ignore[union-attr]
        asyncio.run_coroutine_threadsafe(_close(server[0]), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def _close(server: asyncio.base_events.Server) -> None:
    server.close()
    await server.wait_closed()
