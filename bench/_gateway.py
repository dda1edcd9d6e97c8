"""Start a real `quell serve` (managed vLLM) for a benchmark run, or use URLs given on the command line.

The process handling is the test suite's (`tests/procs.py`), so benchmarks and tests start the gateway one way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.procs import BACKEND_KEY, ROOT, free_port, start_gateway, stop, wait_ready

__all__ = ["ROOT", "Endpoints", "running_gateway"]


@dataclass(frozen=True)
class Endpoints:
    gateway: str  # base URL of the gateway
    backend: str  # base URL of the vLLM behind it
    backend_headers: dict[str, str] = field(default_factory=lambda: _auth(os.environ.get("QUELL_BACKEND_API_KEY")))
    """For calls straight to vLLM: its key (the managed vLLM requires one; QUELL_BACKEND_API_KEY for --backend)."""


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


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
            yield Endpoints(base, f"http://127.0.0.1:{vllm_port}", _auth(BACKEND_KEY))
        finally:
            stop(proc)
