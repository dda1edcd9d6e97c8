"""Start and stop real gateway processes for tests (`quell serve`, the same command `make serve` runs).

Every gateway started here dies with the test process, however that ends (SIGKILL included): it runs in its own
session with PR_SET_PDEATHSIG, and a gateway that gets SIGTERM stops its managed vLLM. Gateways share one backend key
per test run (`BACKEND_KEY`), so that a test can point a second gateway at the session's managed vLLM (whose key
would otherwise be a secret of its gateway); tests of the per-start random key pass `shared_backend_key=False`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from service import processes
from service.processes import free_port, stop, wait_ready

__all__ = ["free_port", "stop", "wait_ready"]  # the one process helper, re-exported for the tests

ROOT = Path(__file__).resolve().parents[1]
QUELL = str(Path(sys.executable).parent / "quell")
BACKEND_KEY = f"quell-tests-{secrets.token_urlsafe(16)}"
"""The managed vLLM's key in test gateways, and the key test gateways send to a `QUELL_BACKEND_URL`."""


def start_gateway(log_path: Path, *args: str, env: dict[str, str] | None = None, private_tmp: Path | None = None,
                  shared_backend_key: bool = True) -> subprocess.Popen:  # fmt: skip
    """`quell serve ARGS`; with `private_tmp`, in a mount namespace where /tmp is that folder (needs root)."""
    shared = {"QUELL_VLLM_API_KEY": BACKEND_KEY, "QUELL_BACKEND_API_KEY": BACKEND_KEY} if shared_backend_key else {}
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **shared, **(env or {})}
    command = [QUELL, "serve", *args]
    if private_tmp is not None:
        # As from a user's shell: torch writes its own cache location into os.environ of the test process once it
        # has used it, and that must not leak into the gateway under test.
        for inherited in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR"):
            full_env.pop(inherited, None)
        command = ["unshare", "--mount", "--", "sh", "-c", 'mount --bind "$0" /tmp && exec "$@"', str(private_tmp),
                   *command]  # fmt: skip
    return processes.start(command, log_path, full_env, cwd=ROOT)


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


def descendants(pid: int) -> set[int]:
    """Every running process below `pid` (children, grandchildren...), found by parent links in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids: set[int] | list[int]) -> set[int]:
    """Those of `pids` still running (not zombies)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.add(pid)
    return out


def wait_gone(pids: set[int] | list[int], timeout_s: float = 60) -> set[int]:
    """Poll until none of `pids` runs or the deadline passes; returns the survivors."""
    deadline = time.monotonic() + timeout_s
    while (left := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def processes_in_group(pgid: int) -> list[int]:
    """Running (not zombie) processes of a process group."""
    from service.vllm_process import live_group_members

    return live_group_members(pgid)
