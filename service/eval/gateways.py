"""Start the gateways of an evaluation around one vLLM, and always stop them.

Without a backend URL the first gateway is a managed one (`quell serve` starts vLLM, ~30 s); every other gateway is
`quell serve --backend-url <that vLLM>` with its own settings (cheap: no second vLLM). Each gateway serves a
private policies folder holding only the policy under test, and writes its audit to a private SQLite file.

No process outlives the evaluation: every gateway runs in its own session with PR_SET_PDEATHSIG (SIGTERM when the
evaluation dies, even by SIGKILL), a gateway stops its managed vLLM on SIGTERM, and `running` stops them all on the
way out (the command turns SIGTERM into the same clean exit as Ctrl-C). The managed vLLM's key is made here and
handed to the gateways in their environment, so that the `--backend-url` gateways and the direct column can use it.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.eval.configs import RunConfig
from service.vllm_main import die_with_parent

QUELL = [sys.executable, "-c", "from service.cli import main; main()", "serve"]
READY_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Running:
    backend: str  # base URL of vLLM
    backend_key: str | None  # its API key (the managed one's secret, or QUELL_BACKEND_API_KEY for --backend-url)
    gateways: dict[str, str]  # config name -> base URL
    pids: dict[str, int]  # config name -> gateway process id (for resident-memory readings)
    ready: dict[str, dict]  # config name -> the gateway's /readyz body (which layers it says are active)


def _own_session_dying_with(parent: int) -> None:  # in the child, between fork and exec: no imports here
    os.setsid()
    die_with_parent(signal.SIGTERM, parent)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ready(base: str, proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway {base} exited with {proc.returncode}; log {log}:\n{log.read_text()[-2000:]}")
        try:
            resp = httpx.get(f"{base}/readyz", timeout=2)
            if resp.status_code == 200:
                return resp.json()
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"gateway {base} not ready after {READY_TIMEOUT_S:.0f} s; log {log}")


@contextmanager
def _gateway(config: RunConfig, env: dict[str, str], args: Sequence[str],
             logs: Path) -> Iterator[tuple[str, int, dict]]:  # fmt: skip
    port = free_port()
    log = logs / f"gateway-{config.name}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env, **config.env, "QUELL_PORT": str(port),
                "QUELL_AUDIT_URL": f"sqlite:///{logs.parent / f'audit-{config.name}.db'}"}  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen([*QUELL, *args], env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=functools.partial(_own_session_dying_with, os.getpid()))  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        ready = _wait_ready(base, proc, log)
        yield base, proc.pid, ready
    finally:
        _stop(proc)


@contextmanager
def running(configs: Sequence[RunConfig], policy_file: Path, workdir: Path,
            backend_url: str | None = None, backend_key: str | None = None) -> Iterator[Running]:  # fmt: skip
    """Gateways for every gateway config (and a managed vLLM unless `backend_url`), stopped on exit."""
    policies = workdir / "policies"
    logs = workdir / "logs"
    shutil.rmtree(policies, ignore_errors=True)
    policies.mkdir(parents=True)
    logs.mkdir(parents=True, exist_ok=True)
    shutil.copy(policy_file, policies / policy_file.name)
    base_env = {"QUELL_POLICIES": str(policies)}
    gateway_configs = [c for c in configs if c.via == "gateway"]
    gateways: dict[str, str] = {}
    pids: dict[str, int] = {}
    ready: dict[str, dict] = {}
    with ExitStack() as stack:
        backend = backend_url.rstrip("/") if backend_url else None
        if backend is None:
            if not gateway_configs:
                raise ValueError("no gateway config to start a managed vLLM with: pass --backend-url")
            first, gateway_configs = gateway_configs[0], gateway_configs[1:]
            vllm_port = free_port()
            backend_key = secrets.token_urlsafe(32)
            env = {**base_env, "QUELL_VLLM_PORT": str(vllm_port), "QUELL_VLLM_API_KEY": backend_key}
            gateways[first.name], pids[first.name], ready[first.name] = stack.enter_context(
                _gateway(first, env, [], logs))
            backend = f"http://127.0.0.1:{vllm_port}"
        if backend_key:
            base_env["QUELL_BACKEND_API_KEY"] = backend_key
        for config in gateway_configs:
            url, pid, body = stack.enter_context(_gateway(config, base_env, ["--backend-url", backend], logs))
            gateways[config.name], pids[config.name], ready[config.name] = url, pid, body
        (workdir / "gateways.json").write_text(json.dumps(ready, indent=1))
        yield Running(backend, backend_key, gateways, pids, ready)
