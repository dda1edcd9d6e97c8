"""The managed vLLM's life, with real processes: `quell serve` starts it on a port of its own with a secret key,
restarts it when it is killed, tells clients why in the meantime, stops it on Ctrl-C and SIGTERM (letting streams end
well), and never leaves any of it running, even when the gateway itself is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.procs import ROOT, descendants, free_port, processes_in_group, start_gateway, stop, wait_gone, wait_ready

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
RESTART_WAIT_S = 420  # a restart is one more vLLM start (35-60 s on CPU; more on a busy machine)


def chat(prompt: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "temperature": 0, **extra}


LONG_STREAM = chat("Tell me a long story about a lighthouse.", stream=True, max_tokens=1900, min_tokens=1900,
                   ignore_eos=True)  # fmt: skip


def sse_data(lines: list[str]) -> list[str]:
    return [line[len("data:") :].strip() for line in lines if line.startswith("data:")]


def readyz(base: str) -> httpx.Response:
    return httpx.get(f"{base}/readyz", timeout=10)


def poll(what, deadline_s: float, describe=lambda: ""):
    """Call `what()` until it returns something truthy, or fail after `deadline_s` saying what was seen last."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up after {deadline_s} s: {describe()}"
        time.sleep(0.25)


@dataclass
class Managed:
    base: str
    proc: object
    log: Path
    said_while_starting: set[str]


@dataclass
class Stoppable:
    """A gateway for the stop test, in a mount namespace where /tmp is `private`."""

    proc: subprocess.Popen
    base: str
    log: Path
    private: Path


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="a private /tmp (mount namespace) needs root; CI runs as root")


def start_stoppable(root: Path) -> Stoppable:
    """The gateway and everything it starts see `private` as /tmp, so whatever they leave there is theirs alone."""
    private = root / "private-tmp"
    private.mkdir()
    port, vllm_port = free_port(), free_port()
    log = root / "gateway.log"
    env = {"QUELL_VLLM_PORT": str(vllm_port), "QUELL_SHUTDOWN_GRACE_S": "4", "QUELL_SEMANTIC": "none"}
    proc = start_gateway(log, "--port", str(port), env=env, private_tmp=private)
    return Stoppable(proc, f"http://127.0.0.1:{port}", log, private)


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Managed]:
    """`quell serve` as a user runs it: no QUELL_VLLM_PORT, no key given (so a free port and a random key); its start
    time-out is 5 s, far shorter than a vLLM start, which must not matter."""
    root = tmp_path_factory.mktemp("lifecycle")
    port = free_port()
    log = root / "gateway.log"
    env = {"QUELL_PORT": str(port), "QUELL_POLICIES": str(ROOT / "policies"), "QUELL_SEMANTIC": "none",
           "QUELL_AUDIT_URL": f"sqlite:///{root / 'audit.db'}", "QUELL_VLLM_RESTART_BACKOFF_S": "0.5",
           "QUELL_VLLM_START_TIMEOUT_S": "5"}  # fmt: skip
    proc = start_gateway(log, env=env, shared_backend_key=False)
    base = f"http://127.0.0.1:{port}"
    said: set[str] = set()

    def started() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            resp = readyz(base)
        except httpx.HTTPError:
            return False
        said.add(resp.json().get("error") or "")
        return resp.status_code == 200

    try:
        poll(started, 600, lambda: log.read_text()[-3000:])
        yield Managed(base, proc, log, said)
    finally:
        stop(proc)


def test_a_start_slower_than_the_time_out_is_reported_then_served(managed: Managed) -> None:
    assert any("not ready after 5 s" in said and "still waiting" in said for said in managed.said_while_starting), \
        managed.said_while_starting  # fmt: skip
    assert readyz(managed.base).json()["status"] == "ready"


def test_managed_vllm_is_ours_alone(managed: Managed) -> None:
    status = readyz(managed.base).json()["managed"]
    vllm_url, pid = status["url"], status["pid"]
    assert vllm_url != "http://127.0.0.1:8001" and status["phase"] == "ready"
    assert httpx.get(f"{vllm_url}/v1/models").status_code == 401  # anyone else (no key) is refused
    for member in processes_in_group(pid):  # the key is in no command line (world-readable in /proc)
        assert b"VLLM_API_KEY" not in Path(f"/proc/{member}/cmdline").read_bytes()
    assert Path(status["log"]).name == f"vllm-gateway-{managed.base.rsplit(':', 1)[1]}.log"
    chat_resp = httpx.post(f"{managed.base}/v1/chat/completions", json=chat("Say hi.", max_tokens=8), timeout=120)
    assert chat_resp.status_code == 200, chat_resp.text


def test_killed_vllm_ends_the_stream_well_says_why_and_serves_again(managed: Managed) -> None:
    before = readyz(managed.base).json()["managed"]
    old_pid = before["pid"]
    old_group = set(processes_in_group(old_pid))
    assert len(old_group) >= 2  # the API server and its engine core
    lines: list[str] = []
    with httpx.stream("POST", f"{managed.base}/v1/chat/completions", json=LONG_STREAM, timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            lines.append(line)
            if len(sse_data(lines)) == 3:
                os.kill(old_pid, signal.SIGKILL)  # a real kill of the real server, mid-stream
    data = sse_data(lines)
    assert data[-1] == "[DONE]", data[-3:]
    error = json.loads(data[-2])["error"]
    assert error["code"] == "backend_disconnected" and error["type"] == "service_unavailable"

    def down() -> dict | None:
        body = readyz(managed.base).json()
        restarted = body["status"] == "ready" and body["managed"]["pid"] != old_pid
        return body if body["status"] == "restarting" or restarted else None

    seen = poll(down, 60)
    if seen["status"] != "ready":  # seen before the new start answered: it must say why, with the log
        assert seen["status"] == "restarting" and "exited with code -9" in seen["error"], seen
        assert seen["managed"]["log_tail"], seen
        during = httpx.post(f"{managed.base}/v1/chat/completions", json=chat("hi", max_tokens=4), timeout=60)
        if during.status_code != 200:  # (unless the restart was quicker than this request)
            error = during.json()["error"]
            assert during.status_code == 503 and error["code"] == "backend_unavailable", error
            assert "exited with code -9" in error["message"], error
    assert wait_gone(old_group, 60) == set(), "the killed server's engine core outlived it"

    ready = poll(lambda: readyz(managed.base).status_code == 200 and readyz(managed.base).json(), RESTART_WAIT_S,
                 lambda: readyz(managed.base).text)  # fmt: skip
    after = ready["managed"]
    assert after["pid"] != old_pid and after["restarts"] == before["restarts"] + 1
    assert after["last_exit"]["code"] == -signal.SIGKILL and after["last_exit"]["pid"] == old_pid
    metrics = httpx.get(f"{managed.base}/metrics").text
    assert 'quell_backend_restarts_total{cause="exited"} 1.0' in metrics
    assert "quell_backend_up 1.0" in metrics
    again = httpx.post(f"{managed.base}/v1/chat/completions", json=chat("Say hi.", max_tokens=8), timeout=120)
    assert again.status_code == 200, again.text


def test_gateway_killed_with_sigkill_leaves_no_survivor(managed: Managed) -> None:
    """Last in this module: it kills the module's gateway."""
    status = readyz(managed.base).json()["managed"]
    everything = descendants(managed.proc.pid)
    assert set(processes_in_group(status["pid"])) <= everything and len(everything) >= 2
    os.kill(managed.proc.pid, signal.SIGKILL)
    managed.proc.wait(timeout=30)
    assert wait_gone(everything, 90) == set(), "processes outlived a gateway killed with SIGKILL"


def stop_mid_stream(gateway: Stoppable, sig: signal.Signals) -> None:
    """Signal the gateway while a long stream runs: the stream runs through the shutdown grace and ends with an
    error event, the gateway exits cleanly, and neither vLLM processes nor files in /tmp are left."""
    proc, base, log = gateway.proc, gateway.base, gateway.log
    signalled = False
    try:
        wait_ready(base, proc, log)
        server = readyz(base).json()["managed"]["pid"]
        group = os.getpgid(server)
        assert len(processes_in_group(group)) >= 2  # the API server and its engine core
        lines: list[str] = []
        first = threading.Event()

        def read_long_stream() -> None:
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=LONG_STREAM, timeout=120) as resp:
                for line in resp.iter_lines():
                    lines.append(line)
                    first.set()

        reader = threading.Thread(target=read_long_stream)
        reader.start()
        assert first.wait(120), log.read_text()[-2000:]
        proc.send_signal(sig)  # once: a second Ctrl-C means "force quit" to uvicorn
        signalled = True
        seen_at_signal = len(sse_data(lines))
        reader.join(120)
        assert not reader.is_alive(), "the stream hung past the shutdown grace"
        code = proc.wait(timeout=120)
    finally:
        if not signalled or proc.poll() is None:
            stop(proc, signal.SIGKILL, timeout_s=10)
    data = sse_data(lines)
    assert len(data) > seen_at_signal + 2, "the stream was cut at the signal instead of running through the grace"
    assert data[-1] == "[DONE]", data[-3:]
    assert json.loads(data[-2])["error"]["code"] == "server_shutting_down"
    # uvicorn shuts down gracefully, then re-raises the signal it caught, so the exit status may be -sig.
    assert code in (0, -sig), log.read_text()[-2000:]
    assert "Application shutdown complete" in log.read_text()
    assert processes_in_group(group) == [], "managed vLLM processes outlived the gateway"
    assert sorted(os.listdir(gateway.private)) == [], "stray files left in /tmp"


# Ctrl-C and SIGTERM take the same path through uvicorn's shutdown (its handle_exit), and each costs a vLLM start:
# `make test` runs SIGTERM, `make soak` also Ctrl-C.
@ROOT_ONLY
def test_sigterm_lets_streams_end_well_and_leaves_no_vllm_and_no_tmp_files(tmp_path: Path) -> None:
    stop_mid_stream(start_stoppable(tmp_path), signal.SIGTERM)


@ROOT_ONLY
@pytest.mark.soak
def test_ctrl_c_lets_streams_end_well_and_leaves_no_vllm_and_no_tmp_files(tmp_path: Path) -> None:
    stop_mid_stream(start_stoppable(tmp_path), signal.SIGINT)
