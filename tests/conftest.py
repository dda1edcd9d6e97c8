"""Shared fixtures. The managed gateway is real: `quell serve` with a managed vLLM and the packaged model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# Shared 2-core machines stall now and then: hypothesis's per-example deadline would turn that into failures.
hypothesis_settings.register_profile("quell", deadline=None)
hypothesis_settings.load_profile("quell")

from tests.procs import ROOT, free_port, start_gateway, stop, vllm_pids, wait_ready

MODEL = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class RunningGateway:
    base_url: str
    vllm_port: int
    policies: Path
    log: Path


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One managed gateway for the whole session, with the shipped policies."""
    port, vllm_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {"QUELL_PORT": str(port), "QUELL_VLLM_PORT": str(vllm_port), "QUELL_POLICIES": str(ROOT / "policies"),
           "QUELL_AUDIT_URL": f"sqlite:///{log.parent / 'audit.db'}"}  # fmt: skip
    proc = start_gateway(log, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log)
        yield RunningGateway(base, vllm_port, ROOT / "policies", log)
    finally:
        stop(proc)
        leftover = vllm_pids(vllm_port)
        assert not leftover, f"managed vLLM processes left behind: {leftover}"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    path = ROOT / os.environ.get("QUELL_MODEL_DIR", ".cache/models/SmolLM2-135M-Instruct")
    if not (path / "config.json").exists():
        pytest.fail(f"model folder {path} missing: run `make setup`")
    return path
