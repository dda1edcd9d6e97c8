"""Shared fixtures. The managed gateway is real: `quell serve` with a managed vLLM and the packaged model."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# Shared 2-core machines stall now and then: hypothesis's per-example deadline would turn that into failures.
hypothesis_settings.register_profile("quell", deadline=None)
hypothesis_settings.load_profile("quell")

from tests.procs import BACKEND_KEY, ROOT, free_port, start_gateway, stop, vllm_pids, wait_ready

MODEL = "SmolLM2-135M-Instruct"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real-vLLM (`e2e`) tests run last, so that the session's gateway boots while the in-process tests run
    (`_session_gateway_boot`). `soak` tests (a second signal down the same shutdown path, many more cases) run only
    in `make soak`."""
    items.sort(key=lambda item: "e2e" in item.keywords)  # stable: the order within each part stays
    if os.environ.get("QUELL_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak: runs in `make soak` (QUELL_SOAK=1), not in `make test`")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@dataclass(frozen=True)
class RunningGateway:
    base_url: str
    vllm_port: int
    policies: Path
    log: Path
    vllm_log: Path
    """The managed vLLM's own log (tests that talk to vLLM directly check what they caused there)."""
    index_dir: Path
    """Where the gateway and its vLLM read protected-text indexes (QUELL_INDEX_DIR of both)."""

    @property
    def vllm_url(self) -> str:
        return f"http://127.0.0.1:{self.vllm_port}"

    @property
    def vllm_headers(self) -> dict[str, str]:
        """The session's managed vLLM requires its key (shared by the test gateways: tests.procs.BACKEND_KEY)."""
        return {"Authorization": f"Bearer {BACKEND_KEY}"}


@dataclass(frozen=True)
class GatewayBoot:
    """The session gateway's process, started before anything waits for it."""

    proc: subprocess.Popen
    base_url: str
    vllm_port: int
    log: Path
    index_dir: Path


@pytest.fixture(scope="session", autouse=True)
def _session_gateway_boot(request: pytest.FixtureRequest,
                          tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayBoot | None]:  # fmt: skip
    """Starts the session's gateway (and so its vLLM, 30-60 s) at the first test when any collected test needs it,
    without waiting: the in-process tests, which run first, cover the start. `gateway` waits for it."""
    if not any("gateway" in item.fixturenames for item in request.session.items):
        yield None
        return
    port, vllm_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    index_dir = log.parent / "indexes"
    env = {"QUELL_PORT": str(port), "QUELL_VLLM_PORT": str(vllm_port), "QUELL_POLICIES": str(ROOT / "policies"),
           "QUELL_AUDIT_URL": f"sqlite:///{log.parent / 'audit.db'}", "QUELL_INDEX_DIR": str(index_dir)}  # fmt: skip
    boot = GatewayBoot(start_gateway(log, env=env), f"http://127.0.0.1:{port}", vllm_port, log, index_dir)
    try:
        yield boot
    finally:
        stop(boot.proc)  # (already stopped by `gateway` when a test used it)


@pytest.fixture(scope="session")
def gateway(_session_gateway_boot: GatewayBoot | None) -> Iterator[RunningGateway]:
    """One managed gateway, and so one vLLM with the plugin, for the whole session, with the shipped policies. Tests
    that need vLLM itself (the plugin's own tests) talk to this one rather than starting another (30-60 s each)."""
    boot = _session_gateway_boot
    assert boot is not None, "the session gateway was not started: no collected test named the `gateway` fixture"
    try:
        ready = wait_ready(boot.base_url, boot.proc, boot.log)
        vllm_log = Path(ready["managed"]["log"])
        yield RunningGateway(boot.base_url, boot.vllm_port, ROOT / "policies", boot.log, vllm_log, boot.index_dir)
    finally:
        stop(boot.proc)
        leftover = vllm_pids(boot.vllm_port)
        assert not leftover, f"managed vLLM processes left behind: {leftover}"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    path = ROOT / os.environ.get("QUELL_MODEL_DIR", ".cache/models/SmolLM2-135M-Instruct")
    if not (path / "config.json").exists():
        pytest.fail(f"model folder {path} missing: run `make setup`")
    return path
