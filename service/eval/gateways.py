"""Start the gateways of an evaluation around one vLLM, and always stop them.

Without a backend URL the first gateway is a managed one (`quell serve` starts vLLM, ~30 s); every other gateway is
`quell serve --backend-url <that vLLM>` with its own settings (cheap: no second vLLM). Each gateway serves a
private policies folder holding only the policy under test (its protected-text sources made absolute, so that they
are read where the policy file is), and writes its audit to a private SQLite file. A gateway that did not load the
policy stops the evaluation with its log's reason, instead of filling a column with 400s.

No process outlives the evaluation: every gateway runs in its own session with PR_SET_PDEATHSIG (SIGTERM when the
evaluation dies, even by SIGKILL), a gateway stops its managed vLLM on SIGTERM, and `running` stops them all on the
way out (the command turns SIGTERM into the same clean exit as Ctrl-C). The managed vLLM's key is made here and
handed to the gateways in their environment, so that the `--backend-url` gateways and the direct column can use it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from service import processes
from service.eval.configs import RunConfig
from service.processes import QUELL_SERVE, free_port

READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Running:
    backend: str  # base URL of vLLM
    backend_key: str | None  # its API key (the managed one's secret, or QUELL_BACKEND_API_KEY for --backend-url)
    gateways: dict[str, str]  # config name -> base URL
    pids: dict[str, int]  # config name -> gateway process id (for resident-memory readings)
    ready: dict[str, dict]  # config name -> the gateway's /readyz body (which layers it says are active)


@contextmanager
def _gateway(config: RunConfig, env: dict[str, str], args: Sequence[str],
             logs: Path) -> Iterator[tuple[str, int, dict]]:  # fmt: skip
    port = free_port()
    log = logs / f"gateway-{config.name}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env, **config.env, "QUELL_PORT": str(port),
                "QUELL_AUDIT_URL": f"sqlite:///{logs.parent / f'audit-{config.name}.db'}"}  # fmt: skip
    proc = processes.start([*QUELL_SERVE, *args], log, full_env)
    base = f"http://127.0.0.1:{port}"
    try:
        ready = processes.wait_ready(base, proc, log, READY_TIMEOUT_S)
        yield base, proc.pid, ready
    finally:
        processes.stop(proc)


def _private_copy(policy_file: Path, folder: Path) -> str:
    """Copy the policy into `folder` with relative protected-text sources made absolute; return its id."""
    data = yaml.safe_load(policy_file.read_text(encoding="utf-8"))
    if not isinstance(data, dict):  # let the gateway report what is wrong with it
        shutil.copy(policy_file, folder / policy_file.name)
        return str(data)
    base = policy_file.resolve().parent
    for target in data.get("targets") or []:
        protected = target.get("protected_text") if isinstance(target, dict) else None
        if isinstance(protected, dict) and isinstance(protected.get("sources"), list):
            protected["sources"] = [s if os.path.isabs(str(s)) else str(base / str(s)) for s in protected["sources"]]
    (folder / policy_file.name).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), "utf-8")
    return str(data.get("id"))


@contextmanager
def running(configs: Sequence[RunConfig], policy_file: Path, workdir: Path,
            backend_url: str | None = None, backend_key: str | None = None) -> Iterator[Running]:  # fmt: skip
    """Gateways for every gateway config (and a managed vLLM unless `backend_url`), stopped on exit."""
    policies = workdir / "policies"
    logs = workdir / "logs"
    shutil.rmtree(policies, ignore_errors=True)
    policies.mkdir(parents=True)
    logs.mkdir(parents=True, exist_ok=True)
    policy_id = _private_copy(policy_file, policies)
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
                _gateway(first, env, [], logs)
            )
            backend = f"http://127.0.0.1:{vllm_port}"
        if backend_key:
            base_env["QUELL_BACKEND_API_KEY"] = backend_key
        for config in gateway_configs:
            url, pid, body = stack.enter_context(_gateway(config, base_env, ["--backend-url", backend], logs))
            gateways[config.name], pids[config.name], ready[config.name] = url, pid, body
        (workdir / "gateways.json").write_text(json.dumps(ready, indent=1))
        for name, body in ready.items():
            if policy_id not in [ref.split("@")[0] for ref in body.get("policies", [])]:
                log = logs / f"gateway-{name}.log"
                raise RuntimeError(f"the {name} gateway did not load policy {policy_id!r} from {policy_file}; "
                                   f"its log ({log}) ends:\n{processes.log_tail(log)}")  # fmt: skip
        yield Running(backend, backend_key, gateways, pids, ready)
