"""The managed backend must be the gateway's own: a stranger answering on its port is refused, and nothing is sent
to it. The strangers here are real HTTP servers on real ports (no vLLM needed); the real managed vLLM's key check
runs in tests/e2e/test_lifecycle.py."""

from __future__ import annotations

import asyncio
import http.server
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.vllm_process import ManagedVLLM, NotOurServer, PortInUse, check_port_free

CHAT = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def stranger(status_without_key: int, status_with_any_key: int) -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on a free loopback port answering /v1/models like some other OpenAI-style server would."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"GET {self.path} {self.headers.get('Authorization')}")
            status = status_with_any_key if self.headers.get("Authorization") else status_without_key
            body = b'{"object": "list", "data": [{"id": "SmolLM2-135M-Instruct"}]}'
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("without_key", "with_key", "why"), [(200, 200, "accepts any key"), (401, 401, "refuses this start's key")]
)
def test_a_stranger_on_the_port_is_not_taken_for_our_vllm(tmp_path: Path, without_key: int, with_key: int,
                                                          why: str) -> None:  # fmt: skip
    with stranger(without_key, with_key) as (port, seen):
        child = ManagedVLLM(Settings(cache_dir=tmp_path), port=port, api_key="this-start's-secret")
        with pytest.raises(NotOurServer, match=why):
            asyncio.run(child.wait_ready(30))
    assert seen  # it was asked, and refused


def test_port_check_names_the_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"port {port} .*another process listens there"):
            check_port_free(port)


def test_gateway_whose_vllm_port_is_taken_says_why_and_never_forwards(tmp_path: Path) -> None:
    """QUELL_VLLM_PORT given, and another server already there: /readyz 503 with the reason, requests 503, the
    stranger gets nothing, restarts counted, and the gateway keeps trying (it may free up)."""
    with stranger(200, 200) as (port, seen):
        settings = Settings(vllm_port=port, policies=tmp_path / "none", audit_url=f"sqlite:///{tmp_path / 'a.db'}",
                            semantic="none", cache_dir=tmp_path / "cache", vllm_restart_backoff_s=0.05,
                            vllm_restart_backoff_max_s=0.2)  # fmt: skip
        with TestClient(create_app(settings, embedder=None)) as client:
            deadline = time.monotonic() + 30
            while 'quell_backend_restarts_total{cause="port_in_use"} 2.0' not in client.get("/metrics").text:
                assert time.monotonic() < deadline, client.get("/readyz").json()
                time.sleep(0.05)
            ready = client.get("/readyz")
            chat = client.post("/v1/chat/completions", json=CHAT)
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "restarting" and f"port {port}" in body["error"]
    assert body["managed"]["restarts"] >= 2 and "reason" in body["managed"]
    assert chat.status_code == 503 and chat.json()["error"]["code"] == "backend_unavailable"
    assert f"port {port}" in chat.json()["error"]["message"]
    assert seen == [], "the gateway sent requests to a server it did not start"


def test_readyz_never_shows_the_key(tmp_path: Path) -> None:
    settings = Settings(policies=tmp_path / "none", audit_url=f"sqlite:///{tmp_path / 'a.db'}", semantic="none",
                        cache_dir=tmp_path / "cache", vllm_api_key="sk-do-not-show", model_dir=tmp_path / "no-model",
                        vllm_restart_backoff_s=5)  # fmt: skip
    with TestClient(create_app(settings, embedder=None)) as client:
        deadline = time.monotonic() + 30
        while "model folder" not in (client.get("/readyz").json().get("error") or ""):
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        text = client.get("/readyz").text + client.get("/metrics").text
    assert "sk-do-not-show" not in text
    assert re.search(r"make setup", text)
