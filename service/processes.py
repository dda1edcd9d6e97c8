"""Child processes that die with their parent: the one helper that the managed vLLM, `quell eval`, the benchmarks and
the tests use to start, wait for and stop `quell serve` and vLLM.

Every child runs in its own session (so it and everything it starts can be signalled as one group) with
PR_SET_PDEATHSIG: it gets SIGTERM when its parent dies, even by SIGKILL, and a gateway stops its managed vLLM on
SIGTERM. Nothing outlives the process that started it.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from service.vllm_main import die_with_parent

QUELL_SERVE = (sys.executable, "-c", "from service.cli import main; main()", "serve")
"""`quell serve` with this interpreter (works from a checkout whose console script is not on PATH)."""


def free_port() -> int:
    """A loopback port nobody listens on right now (every instance picks its own: nothing collides)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_session_dying_with(parent: int) -> None:  # in the child, between fork and exec: no imports here
    os.setsid()
    die_with_parent(signal.SIGTERM, parent)


def start(command: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:  # fmt: skip
    """Start `command` in its own session, dying with this process, stdout and stderr into `log` (its own file)."""
    with log.open("wb") as out:
        return subprocess.Popen(list(command), cwd=cwd, env=dict(env) if env is not None else None, stdout=out,
                                stderr=subprocess.STDOUT,
                                preexec_fn=functools.partial(own_session_dying_with, os.getpid()))  # noqa: PLW1509 - setsid+prctl before exec  # fmt: skip


def log_tail(log: Path, chars: int = 3000) -> str:
    """The end of a process's log, for an error message ("(no log)" when it cannot be read)."""
    try:
        return log.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def wait_ready(base_url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> dict:
    """Poll `/readyz` until it answers 200 (its body), the process exits (RuntimeError with the log's tail) or the
    deadline passes (TimeoutError with the log's tail)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{base_url} exited with {proc.returncode}; log {log}:\n{log_tail(log)}")
        try:
            resp = httpx.get(f"{base_url}/readyz", timeout=2)
            if resp.status_code == 200:
                return resp.json()
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} not ready after {timeout_s:.0f} s; log {log}:\n{log_tail(log)}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
    """Signal the process and wait; past the deadline, kill its whole session. Its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode
