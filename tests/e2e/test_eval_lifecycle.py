"""`quell eval` starts a gateway and a managed vLLM; ended by SIGTERM (a `timeout` around it) or killed with SIGKILL,
it leaves nothing running. Real processes; the evaluation is stopped once its vLLM has spawned its engine."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import ROOT, descendants, processes_in_group, wait_gone

pytestmark = pytest.mark.e2e

PROBES = ROOT.parent / "shared" / "eval-data" / "hp_forget_probes.jsonl"
POLICY = ROOT / "policies" / "examples" / "harry-potter.yaml"


def vllm_group(eval_pid: int) -> list[int]:
    """The managed vLLM's process group (server and engine core) under the evaluation, once the engine exists."""
    for pid in descendants(eval_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"service.vllm_main" in cmd and b"serve" in cmd:
            group = processes_in_group(pid)
            return group if len(group) >= 2 else []
    return []


@pytest.mark.skipif(not PROBES.is_file(), reason=f"{PROBES} not present")
# SIGKILL leaves the clean-up to PR_SET_PDEATHSIG, which tests/e2e/test_lifecycle.py checks for a gateway killed
# with SIGKILL; each variant costs a vLLM start, so `make test` runs SIGTERM (the command's own clean exit) and
# `make soak` both.
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGKILL, marks=pytest.mark.soak)],
                         ids=["sigterm", "sigkill"])  # fmt: skip
def test_eval_ended_by_a_signal_leaves_no_gateway_and_no_vllm(tmp_path: Path, sig: signal.Signals) -> None:
    command = [sys.executable, "-c", "from service.cli import main; main()", "eval", "--policy", str(POLICY),
               "--probes", str(PROBES), "--out", str(tmp_path / "eval"), "--limit", "2", "--configs", "none,surface",
               "--no-semantic-scores"]  # fmt: skip
    log = (tmp_path / "eval.log").open("wb")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (group := vllm_group(proc.pid)):
            assert proc.poll() is None, (tmp_path / "eval.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the evaluation's vLLM never spawned its engine"
            time.sleep(0.5)
        everything = descendants(proc.pid)
        assert set(group) <= everything
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    if sig == signal.SIGTERM:
        assert code == 130, (tmp_path / "eval.log").read_text()[-3000:]  # the same clean exit as Ctrl-C
        assert "interrupted" in (tmp_path / "eval.log").read_text()
    assert wait_gone(everything, 90) == set(), "processes outlived `quell eval`"
