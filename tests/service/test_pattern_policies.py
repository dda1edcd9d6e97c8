"""A broken edit of a person's patterns keeps the last good policy live (the registry's contract, for patterns)."""

from __future__ import annotations

from pathlib import Path

from filters.policy_loader import load_policy_dir
from service.policy_registry import PolicyRegistry
from tests.filters.test_facts import PERSON


def test_a_broken_edit_keeps_the_last_good_policy(tmp_path: Path) -> None:
    (tmp_path / "jane.yaml").write_text(PERSON)
    registry = PolicyRegistry(tmp_path)
    registry.reload()
    good = registry.snapshot.policies["forget-jane"].policy.version
    (tmp_path / "jane.yaml").write_text(PERSON.replace("555 ?010 ?0199", r"(555)\1"))
    registry.reload()
    assert registry.snapshot.policies["forget-jane"].policy.version == good
    assert load_policy_dir(tmp_path).errors
