"""Start a real `quell serve` (managed vLLM) for a benchmark run, or use URLs given on the command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Endpoints:
    gateway: str  # base URL of the gateway
    backend: str  # base URL of the vLLM behind it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_gateway(extra_env: dict[str, str] | None = None) -> Iterator[Endpoints]:
    port, vllm_port = _free_port(), _free_port()
    env = {**os.environ, "QUELL_PORT": str(port), "QUELL_VLLM_PORT": str(vllm_port), "HF_HUB_OFFLINE": "1",
           **(extra_env or {})}  # fmt: skip
    with tempfile.NamedTemporaryFile("wb", prefix="quell-bench-", suffix=".log", dir=ROOT / ".cache") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "quell"), "serve"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway exited; log: {Path(log.name).read_text()[-2000:]}")
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("gateway not ready after 300 s")
                time.sleep(0.5)
            yield Endpoints(base, f"http://127.0.0.1:{vllm_port}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
