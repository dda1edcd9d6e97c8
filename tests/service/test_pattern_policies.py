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


def test_moderations_name_the_pattern_and_the_fact(gateway_for, policy_dir: Path) -> None:
    (policy_dir / "forget-jane.yaml").write_text(PERSON)
    text = "Jane Roe, born 12/03/1985, phone 555.010.0199."
    with gateway_for() as (client, _):
        resp = client.post("/v1/moderations", json={"input": [text, "Born 12/03/1985."]},
                           headers={"x-quell-policies": "forget-jane"})  # fmt: skip
    named, unnamed = resp.json()["results"]
    found = {(d.get("match", "term"), text[d["span"][0] : d["span"][1]]) for d in named["quell"]["detections"]}
    assert found == {("term", "Jane Roe"), ("fact", "12/03/1985"), ("pattern:jane-phone", "555.010.0199")}
    assert named["categories"]["jane"] and not unnamed["categories"]["jane"]  # a date alone names nobody
