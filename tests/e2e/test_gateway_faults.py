"""The gateway without a working backend, and bad client input: real processes, a backend port nobody listens on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import ROOT, free_port, start_gateway, stop

CHAT = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def dead_backend_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port, dead = free_port(), free_port()  # nothing listens on `dead`
    log = tmp_path_factory.mktemp("faults") / "gateway.log"
    proc = start_gateway(log, "--backend-url", f"http://127.0.0.1:{dead}", "--port", str(port),
                         "--policies", str(ROOT / "policies"))  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None:
                pytest.fail(Path(log).read_text())
            import time

            time.sleep(0.1)
    yield base
    stop(proc)
    assert "Traceback" not in log.read_text()


def test_healthz_up_readyz_not(dead_backend_gateway: str) -> None:
    assert httpx.get(f"{dead_backend_gateway}/healthz").status_code == 200
    ready = httpx.get(f"{dead_backend_gateway}/readyz")
    assert ready.status_code == 503 and ready.json()["status"] != "ready"


def test_backend_down_is_503_with_openai_error(dead_backend_gateway: str) -> None:
    resp = httpx.post(f"{dead_backend_gateway}/v1/chat/completions", json=CHAT)
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "backend_unavailable" and "backend" in error["message"]
    assert "Traceback" not in resp.text


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "m"}, "messages", "field required"),
        ({**CHAT, "messages": "hi"}, "messages", "valid list"),
        ({**CHAT, "max_tokens": "lots"}, "max_tokens", "integer"),
        ({**CHAT, "temperature": 7}, "temperature", "less than or equal to 2"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "'system'"),
        ({"messages": CHAT["messages"]}, "model", "field required"),
    ],
)
def test_bad_fields_are_400_naming_the_field(dead_backend_gateway: str, body: dict, param: str, fragment: str) -> None:
    resp = httpx.post(f"{dead_backend_gateway}/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and fragment in error["message"] and error["type"] == "invalid_request_error"


def test_malformed_json_is_400(dead_backend_gateway: str) -> None:
    resp = httpx.post(f"{dead_backend_gateway}/v1/chat/completions", content=b'{"model": ',
                      headers={"content-type": "application/json"})  # fmt: skip
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"


def test_unknown_route_is_openai_shaped_404(dead_backend_gateway: str) -> None:
    resp = httpx.get(f"{dead_backend_gateway}/v1/nothing")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
