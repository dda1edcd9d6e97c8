"""Policy history in the audit store (service.policy_history) on a real SQLite database: versions queued before the
store is ready are written once it is, a store without the table keeps them queued, a restart repeats nothing, and
the operator a save was expected from is credited."""

from __future__ import annotations

from pathlib import Path

import pytest

from filters.policy_loader import parse_policy
from service.audit import make_engine, migrate
from service.policy_history import FOLDER_ACTOR, PolicyHistory, operator_id
from service.policy_registry import PolicyRegistry
from tests.service.conftest import spider_policy


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "policies"
    path.mkdir()
    (path / "p.yaml").write_text(spider_policy("p", "redact"))
    return path


def registry_with(history: PolicyHistory, folder: Path) -> PolicyRegistry:
    return PolicyRegistry(folder, on_reload=history.observe)


def test_versions_wait_for_the_store_and_a_restart_repeats_nothing(folder: Path, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    history = PolicyHistory()
    registry = registry_with(history, folder)
    first = registry.reload().policies["p"].policy
    assert not history.flush()  # no store bound yet: still queued
    history.engine = engine
    assert not history.flush()  # the table is not there yet (not migrated): kept, not lost
    migrate(engine)
    history.bind(engine)
    (folder / "p.yaml").write_text(spider_policy("p", "refuse"))
    second = registry.reload().policies["p"].policy
    assert history.flush()

    again = PolicyHistory()  # a restart: the same live version is observed again
    registry_with(again, folder).reload()
    again.bind(engine)
    rows = again.versions("p")
    assert [r.version for r in rows] == [second.version, first.version]
    assert rows[1].content == spider_policy("p", "redact") and rows[0].actor == FOLDER_ACTOR
    assert again.get("p", first.version).content == spider_policy("p", "redact")
    engine.dispose()


def test_an_expected_save_is_credited_to_its_operator(folder: Path, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    migrate(engine)
    history = PolicyHistory()
    registry = registry_with(history, folder)
    registry.reload()
    history.bind(engine)
    text = spider_policy("p", "refuse")
    who = operator_id("operator-token-123")
    history.expect("p", parse_policy(text).digest, who)
    registry.write("p", text)
    registry.reload()
    newest = history.versions("p")[0]
    assert newest.actor == who and "operator-token-123" not in newest.actor
    engine.dispose()
