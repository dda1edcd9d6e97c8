"""The gateway in-process: `create_app` over a replay of recorded vLLM answers, no embedder, a private policy folder.

Each test gets its own app, policy folder and audit database; nothing listens on a port and nothing starts vLLM.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.backend import Backend
from service.settings import DecodeMask, Settings
from tests.procs import free_port
from tests.service.replay import Replay

SPIDER_TERMS = "[Spider-Man, Spiderman, Peter Parker, Spidey, Spider Man]"


def spider_policy(policy_id: str, action: str, default: bool = False) -> str:
    return f"""id: {policy_id}
default: {str(default).lower()}
refusal: "Sorry, not that topic."
targets:
  - id: spider-man
    terms: {SPIDER_TERMS}
    on_surface: {action}
"""


POLICIES = {
    "spider-redact": spider_policy("spider-redact", "redact", default=True),
    "spider-refuse": spider_policy("spider-refuse", "refuse"),
    "spider-stop": spider_policy("spider-stop", "stop"),
}


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    for pid, text in POLICIES.items():
        (folder / f"{pid}.yaml").write_text(text)
    return folder


GatewayFactory = Callable[..., AbstractContextManager[tuple[TestClient, Replay]]]


@pytest.fixture
def gateway_for(policy_dir: Path, tmp_path: Path) -> GatewayFactory:
    """`with gateway_for("chat_spider", **settings) as (client, replay):` an app answering from those recordings."""

    @contextmanager
    def build(*recordings: str, **overrides) -> Iterator[tuple[TestClient, Replay]]:
        replay = Replay("models", *recordings)
        settings = Settings(policies=policy_dir, audit_url=f"sqlite:///{tmp_path / 'audit.db'}", semantic="none",
                            decode_mask=DecodeMask.OFF, cache_dir=tmp_path / "cache", **overrides)  # fmt: skip
        backend = Backend("http://vllm.replay", None, 30.0, transport=replay.transport)
        with TestClient(create_app(settings, backend=backend, embedder=None)) as client:
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, client.get("/readyz").json()
                time.sleep(0.02)
            yield client, replay

    return build


@pytest.fixture
def serve_gateway(policy_dir: Path, tmp_path: Path) -> Callable[..., AbstractContextManager[tuple[str, Replay]]]:
    """`with serve_gateway("chat_spider_stream", **settings) as (base_url, replay):` the same in-process app, served
    by uvicorn on a free loopback port in a thread: real HTTP, real streaming, real concurrency, still no vLLM."""

    @contextmanager
    def serve(*recordings: str, **overrides) -> Iterator[tuple[str, Replay]]:
        replay = Replay("models", *recordings)
        settings = Settings(policies=policy_dir, audit_url=f"sqlite:///{tmp_path / 'audit.db'}", semantic="none",
                            decode_mask=DecodeMask.OFF, cache_dir=tmp_path / "cache", reload_debounce_ms=50,
                            **overrides)  # fmt: skip
        backend = Backend("http://vllm.replay", None, 30.0, transport=replay.transport)
        app = create_app(settings, backend=backend, embedder=None)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.config.port}"
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and thread.is_alive(), "in-process gateway did not get ready"
                time.sleep(0.05)
            yield base, replay
        finally:
            server.should_exit = True
            thread.join(timeout=30)

    return serve
