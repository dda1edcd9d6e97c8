"""A stream whose backend fails ends well-formed: an OpenAI error event, then [DONE]; never a hang or a torn body.

The gateway runs in-process (`create_app` with a `Backend`); the backend is the FAKE of tests/fake_backend.py (real
TCP, a stream a real vLLM sent, then the fault), because a real vLLM cannot be made to die or stall on cue at a given
event. The real kill of a real vLLM mid-stream is in tests/e2e/test_lifecycle.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.backend import Backend
from service.settings import DecodeMask, Settings
from tests.fake_backend import fake_backend, recorded_events

MODEL = "SmolLM2-135M-Instruct"
STREAM = recorded_events("vllm_chat_stream.sse")  # 48 tokens of a real vLLM answer, then [DONE]
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}], "stream": True}


@contextmanager
def gateway(url: str, tmp_path: Path, timeout_s: float = 30.0, **overrides) -> Iterator[TestClient]:
    settings = Settings(policies=tmp_path / "no-policies", audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
                        semantic="none", decode_mask=DecodeMask.OFF, cache_dir=tmp_path / "cache",
                        **overrides)  # fmt: skip
    with TestClient(create_app(settings, backend=Backend(url, None, timeout_s), embedder=None)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.02)
        yield client


def events(client: TestClient) -> tuple[int, list[str]]:
    with client.stream("POST", "/v1/chat/completions", json=BODY) as resp:
        text = "".join(resp.iter_text())
    return resp.status_code, [block[len("data: ") :] for block in text.split("\n\n") if block.startswith("data: ")]


def test_the_recording_is_a_whole_stream(tmp_path: Path) -> None:
    with fake_backend(STREAM, keep=len(STREAM), then="finish") as fake, gateway(fake.url, tmp_path) as client:
        status, data = events(client)
    assert status == 200 and data[-1] == "[DONE]"
    assert not any("error" in json.loads(d) for d in data[:-1])
    assert sum(len(json.loads(d)["choices"]) for d in data[:-1]) >= 10


@pytest.mark.parametrize("keep", [0, 1, 5])
def test_backend_dying_mid_stream_ends_with_error_then_done(tmp_path: Path, keep: int) -> None:
    with fake_backend(STREAM, keep=keep, then="cut") as fake, gateway(fake.url, tmp_path) as client:
        status, data = events(client)
        metrics = client.get("/metrics").text
    assert status == 200
    assert data[-1] == "[DONE]", data
    error = json.loads(data[-2])["error"]
    assert error["code"] == "backend_disconnected" and error["type"] == "service_unavailable"
    assert set(error) >= {"message", "type", "param", "code"} and "Traceback" not in error["message"]
    relayed = [json.loads(d) for d in data[:-2]]
    assert len(relayed) == keep and all("choices" in chunk for chunk in relayed)
    assert 'quell_streams_cut_total{cause="backend_lost"} 1.0' in metrics


def test_backend_going_silent_ends_at_the_time_out_the_same_way(tmp_path: Path) -> None:
    with fake_backend(STREAM, keep=3, then="hang") as fake, gateway(fake.url, tmp_path, timeout_s=1.0) as client:
        status, data = events(client)
        metrics = client.get("/metrics").text
    assert status == 200 and data[-1] == "[DONE]", data
    error = json.loads(data[-2])["error"]
    assert error["code"] == "backend_timeout" and "QUELL_BACKEND_TIMEOUT_S" in error["message"]
    assert len(data) == 3 + 2
    assert 'quell_streams_cut_total{cause="backend_timeout"} 1.0' in metrics


def test_json_request_to_a_backend_that_dies_mid_body_is_503(tmp_path: Path) -> None:
    with fake_backend(STREAM, keep=2, then="cut") as fake, gateway(fake.url, tmp_path) as client:
        resp = client.post("/v1/chat/completions", json={**BODY, "stream": False})
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "backend_unavailable"


def test_shutdown_grace_ends_an_open_stream_with_error_then_done(tmp_path: Path) -> None:
    """What SIGTERM does to a stream that outlasts QUELL_SHUTDOWN_GRACE_S (the signal itself: tests/e2e/test_lifecycle.py)."""
    with fake_backend(STREAM, keep=3, then="hang") as fake, \
            gateway(fake.url, tmp_path, shutdown_grace_s=0.5) as client:  # fmt: skip

        def stop_when_streaming() -> None:
            deadline = time.monotonic() + 30
            while not any(r.startswith("POST") for r in fake.requests) and time.monotonic() < deadline:
                time.sleep(0.01)
            client.portal.call(client.app.state.drain.begin)  # what the server does on SIGTERM

        stopper = threading.Thread(target=stop_when_streaming)
        stopper.start()
        status, data = events(client)
        stopper.join()
        metrics = client.get("/metrics").text
        ready = client.get("/readyz")
    assert status == 200 and data[-1] == "[DONE]", data
    assert json.loads(data[-2])["error"]["code"] == "server_shutting_down"
    assert len(data) == 3 + 2
    assert 'quell_streams_cut_total{cause="shutdown"} 1.0' in metrics
    assert ready.status_code == 503 and ready.json()["status"] == "shutting down"
