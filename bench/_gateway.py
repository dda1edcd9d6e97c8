"""Start a real `quell serve` (managed vLLM) for a benchmark run, or use URLs given on the command line.

The process handling is the test suite's (`tests/procs.py`), so benchmarks and tests start the gateway one way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.procs import ROOT, free_port, start_gateway, stop, wait_ready

__all__ = ["ROOT", "Endpoints", "running_gateway"]


@dataclass(frozen=True)
class Endpoints:
    gateway: str  # base URL of the gateway
    backend: str  # base URL of the vLLM behind it


@contextmanager
def running_gateway(extra_env: dict[str, str] | None = None) -> Iterator[Endpoints]:
    port, vllm_port = free_port(), free_port()
    env = {"QUELL_PORT": str(port), "QUELL_VLLM_PORT": str(vllm_port), **(extra_env or {})}
    with tempfile.TemporaryDirectory(prefix="quell-bench-", dir=ROOT / ".cache") as tmp:
        log = Path(tmp) / "gateway.log"
        proc = start_gateway(log, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, proc, log)
            yield Endpoints(base, f"http://127.0.0.1:{vllm_port}")
        finally:
            stop(proc)
