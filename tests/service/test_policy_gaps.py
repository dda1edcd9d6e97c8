"""A policy that was live stays live until an operator removes it on purpose: a file that vanishes for a moment (an
editor's save, a ConfigMap swap) never opens a gap in which requests run without it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from service.policy_registry import PolicyRegistry
from tests.service.conftest import POLICIES

ADMIN = {"authorization": "Bearer operator-token-123"}


def test_a_vanished_file_keeps_its_policy_through_the_grace(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, removal_grace_s=0.5)
    assert "spider-redact" in registry.reload().policies
    (policy_dir / "spider-redact.yaml").unlink()
    snap = registry.reload()
    assert "spider-redact" in snap.policies and "spider-redact" in snap.missing
    deadline = snap.missing["spider-redact"]
    while time.monotonic() < deadline:
        time.sleep(0.05)
    assert "spider-redact" not in registry.reload().policies  # gone past the grace: removed, as documented


def test_a_file_that_comes_back_is_live_again_with_no_pending_removal(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, removal_grace_s=30)
    registry.reload()
    path = policy_dir / "spider-redact.yaml"
    moved = path.rename(policy_dir / ".spider-redact.yaml.swp")  # the editor's save: rename away, write anew
    assert "spider-redact" in registry.reload().policies
    path.write_text(moved.read_text())
    moved.unlink()
    snap = registry.reload()
    assert "spider-redact" in snap.policies and not snap.missing


def test_rewrites_under_concurrent_reloads_never_drop_the_policy(policy_dir: Path) -> None:
    """20 editor-style rewrites while another thread reloads continuously: every snapshot has the policy."""
    registry = PolicyRegistry(policy_dir, removal_grace_s=5)
    registry.reload()
    path = policy_dir / "spider-redact.yaml"
    seen_without: list[int] = []
    stop = threading.Event()

    def reload_forever() -> None:
        while not stop.is_set():
            if "spider-redact" not in registry.reload().policies:
                seen_without.append(1)

    worker = threading.Thread(target=reload_forever)
    worker.start()
    try:
        for _ in range(20):
            path.unlink()
            time.sleep(0.02)
            path.write_text(POLICIES["spider-redact"])
            time.sleep(0.02)
    finally:
        stop.set()
        worker.join()
    assert not seen_without


def test_gateway_keeps_redacting_while_the_file_is_gone_and_admin_delete_removes_it(gateway_for, policy_dir) -> None:
    from tests.service.test_side_channels import recorded

    body, _ = recorded("chat_spider")
    with gateway_for("chat_spider", admin_token="operator-token-123", policy_removal_grace_s=60) as (client, _):
        (policy_dir / "spider-redact.yaml").unlink()
        assert client.post("/admin/reload", headers=ADMIN).status_code == 200
        listed = {p["id"]: p["status"] for p in client.get("/admin/policies", headers=ADMIN).json()["data"]}
        assert listed["spider-redact"] == "file_missing"
        out = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        assert "[redacted]" in out
        assert client.delete("/admin/policies/spider-redact", headers=ADMIN).status_code == 200
        out = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        assert "[redacted]" not in out and "Spider-Man" in out  # removed on purpose: no longer applied
        missing = client.delete("/admin/policies/spider-redact", headers=ADMIN)
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "policy_id"
