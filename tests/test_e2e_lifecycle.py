"""`quell serve` with a managed vLLM stops cleanly on Ctrl-C and SIGTERM: no orphaned vLLM, nothing left in /tmp."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.procs import free_port, processes_in_group, start_gateway, stop, vllm_pids, wait_ready

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(os.geteuid() != 0, reason="a private /tmp (mount namespace) needs root; CI runs as root")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stop_leaves_no_vllm_and_no_tmp_files(tmp_path: Path, sig: signal.Signals) -> None:
    # The gateway and everything it starts see `private` as /tmp, so whatever they leave there is theirs alone.
    private = tmp_path / "private-tmp"
    private.mkdir()
    port, vllm_port = free_port(), free_port()
    log = tmp_path / "gateway.log"
    proc = start_gateway(log, "--port", str(port), env={"QUELL_VLLM_PORT": str(vllm_port)}, private_tmp=private)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
        servers = vllm_pids(vllm_port)
        assert len(servers) == 1
        group = os.getpgid(servers[0])
        assert len(processes_in_group(group)) >= 2  # the API server and its engine core
    finally:
        code = stop(proc, sig)
    # uvicorn shuts down gracefully, then re-raises the signal it caught, so the exit status may be -sig.
    assert code in (0, -sig), log.read_text()[-2000:]
    assert "Application shutdown complete" in log.read_text()
    assert processes_in_group(group) == [], "managed vLLM processes outlived the gateway"
    assert sorted(os.listdir(private)) == [], "stray files left in /tmp"
