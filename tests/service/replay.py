"""Recorded vLLM exchanges, replayed to an in-process gateway through an `httpx` transport.

`python -m tests.service.record` talks to a real vLLM (the managed CPU server with the packaged model) and writes
each exchange to `recordings/NAME.json`: the request as the gateway forwards it and vLLM's answer, byte for byte
(SSE streams as their raw text). The replay answers a request only when its method, path and JSON body equal a
recorded one; anything else gets a 599 that names the request, so a test can never pass against an answer vLLM did
not give.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

RECORDINGS = Path(__file__).resolve().parent / "recordings"


def _plain(value: object) -> object:
    """0 and 0.0 are one JSON value to vLLM; the gateway's typed fields turn one into the other."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def canonical(method: str, path: str, body: object) -> str:
    return json.dumps([method.upper(), path, _plain(body)], sort_keys=True, ensure_ascii=False)


def load(name: str) -> dict:
    return json.loads((RECORDINGS / f"{name}.json").read_text(encoding="utf-8"))


class Replay:
    """An `httpx.MockTransport` over some recordings; `requests` lists what the gateway sent, in order."""

    def __init__(self, *names: str):
        self.exchanges: dict[str, dict] = {}
        self.requests: list[tuple[str, str, object]] = []
        for name in names:
            for exchange in load(name)["exchanges"]:
                req = exchange["request"]
                self.exchanges[canonical(req["method"], req["path"], req.get("json"))] = exchange["response"]
        self.transport = httpx.MockTransport(self._answer)

    def request_body(self, name: str, index: int = 0) -> dict:
        return load(name)["exchanges"][index]["request"]["json"]

    def _answer(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))
        found = self.exchanges.get(canonical(request.method, request.url.path, body))
        if found is None:
            return httpx.Response(599, json={"error": {"message": f"no recording for {request.method} "
                                                                  f"{request.url.path} {body}"}})  # fmt: skip
        if "sse" in found:
            return httpx.Response(found["status"], headers={"content-type": "text/event-stream"},
                                  content=found["sse"].encode("utf-8"))  # fmt: skip
        return httpx.Response(found["status"], json=found["json"])
