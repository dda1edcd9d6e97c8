"""`quell serve` with a managed vLLM stops cleanly on Ctrl-C and SIGTERM: no orphaned vLLM, nothing left in /tmp."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.procs import free_port, processes_in_group, start_gateway, stop, vllm_pids, wait_ready

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stop_leaves_no_vllm_and_no_tmp_files(tmp_path: Path, sig: signal.Signals) -> None:
    tmp_before = set(os.listdir("/tmp"))
    port, vllm_port = free_port(), free_port()
    log = tmp_path / "gateway.log"
    proc = start_gateway(log, "--port", str(port), env={"QUELL_VLLM_PORT": str(vllm_port)})
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
    new_tmp = {n for n in set(os.listdir("/tmp")) - tmp_before if not n.startswith("pytest-of-")}
    assert not new_tmp, f"stray files in /tmp: {sorted(new_tmp)}"
