"""Policy writes through the admin API: the registry owns the atomic file write, and an edit based on a version that
is no longer live is refused with the live version named, instead of silently overwriting another operator's save."""

from __future__ import annotations

from pathlib import Path

from tests.service.conftest import spider_policy

ADMIN = {"authorization": "Bearer operator-token-123"}


def _live_version(client, policy_id: str) -> str:
    return client.get(f"/admin/policies/{policy_id}", headers=ADMIN).json()["version"]


def test_two_operators_editing_one_version_the_second_gets_a_conflict_naming_the_live_version(gateway_for,
                                                                                               policy_dir: Path) -> None:  # fmt: skip
    with gateway_for(admin_token="operator-token-123") as (client, _):
        base = _live_version(client, "spider-stop")
        first = spider_policy("spider-stop", "refuse")
        second = spider_policy("spider-stop", "redact")
        ok = client.put("/admin/policies/spider-stop", content=first, headers={**ADMIN, "If-Match": f'"{base}"'})
        assert ok.status_code == 200, ok.text
        now = ok.json()["active_version"]
        assert now != base
        late = client.put("/admin/policies/spider-stop", content=second, headers={**ADMIN, "If-Match": base})
        assert late.status_code == 409
        error = late.json()["error"]
        assert error["code"] == "version_conflict" and error["live_version"] == now and base in error["message"]
        assert (policy_dir / "spider-stop.yaml").read_text() == first  # the first save stands
        assert _live_version(client, "spider-stop") == now
        again = client.put("/admin/policies/spider-stop", content=second, headers={**ADMIN, "If-Match": now})
        assert again.status_code == 200 and (policy_dir / "spider-stop.yaml").read_text() == second


def test_a_new_policy_with_a_version_precondition_is_a_conflict_and_without_one_is_written(gateway_for,
                                                                                          policy_dir: Path) -> None:  # fmt: skip
    with gateway_for(admin_token="operator-token-123") as (client, _):
        text = spider_policy("spider-new", "redact")
        stale = client.put("/admin/policies/spider-new", content=text, headers={**ADMIN, "If-Match": "abc"})
        assert stale.status_code == 409 and stale.json()["error"]["live_version"] is None
        assert not (policy_dir / "spider-new.yaml").exists()
        made = client.put("/admin/policies/spider-new", content=text, headers=ADMIN)
        assert made.status_code == 200 and (policy_dir / "spider-new.yaml").read_text() == text
        assert not [p for p in policy_dir.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind
