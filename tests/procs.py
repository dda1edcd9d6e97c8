"""Start and stop real gateway processes for tests (`quell serve`, the same command `make serve` runs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
QUELL = str(Path(sys.executable).parent / "quell")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(log_path: Path, *args: str, env: dict[str, str] | None = None,
                  private_tmp: Path | None = None) -> subprocess.Popen:  # fmt: skip
    """`quell serve ARGS`; with `private_tmp`, in a mount namespace where /tmp is that folder (needs root)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    command = [QUELL, "serve", *args]
    if private_tmp is not None:
        # As from a user's shell: torch writes its own cache location into os.environ of the test process once it
        # has used it, and that must not leak into the gateway under test.
        for inherited in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR"):
            full_env.pop(inherited, None)
        command = ["unshare", "--mount", "--", "sh", "-c", 'mount --bind "$0" /tmp && exec "$@"', str(private_tmp),
                   *command]  # fmt: skip
    log = log_path.open("wb")
    proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    log.close()
    return proc


def wait_ready(base_url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"gateway not ready after {timeout_s} s:\n{log_path.read_text()[-3000:]}")


def vllm_pids(port: int) -> list[int]:
    """PIDs of managed vLLM servers listening on `port` (found by their command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"service.vllm_main" in cmd and str(port).encode() in cmd:
            pids.append(int(entry.name))
    return pids


def processes_in_group(pgid: int) -> list[int]:
    """Running (not zombie) processes of a process group."""
    from service.vllm_process import live_group_members

    return live_group_members(pgid)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode
