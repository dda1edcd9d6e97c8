"""A broken edit of a person's patterns keeps the last good policy live (the registry's contract, for patterns)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


PATTERN_POLICY = """\
id: pattern-demo
targets:
  - id: powers
    patterns:
      - {name: light-trick, regex: 'manipulat[a-z]* ?light'}
    on_surface: redact
"""


@pytest.mark.parametrize("name", ["chat_spider", "chat_spider_stream"])
def test_the_text_backstop_redacts_a_pattern_in_json_and_streams(gateway_for, policy_dir: Path, name: str) -> None:
    """Patterns reach the per-choice backstop through the shared automaton, with no code of their own there."""
    (policy_dir / "pattern-demo.yaml").write_text(PATTERN_POLICY)
    text, results = _answer(gateway_for, name, "pattern-demo")
    assert "he can [redacted]" in text and "light" not in text, text  # recorded: "... he can manipulate light."
    assert results["powers"]["action"] == "redact" and results["powers"]["filtered"]


FACTS_POLICY = """\
id: facts-demo
targets:
  - id: spidey                   # named in the recorded prompt ("Who is Spider-Man? ...")
    terms: [Spider-Man]
    facts: [manipulate light]
    on_surface: redact
  - id: mary-jane                # not named: her fact stays free
    terms: [Mary Jane Watson]
    facts: [unique ability]
    on_surface: redact
"""


@pytest.mark.parametrize("name", ["chat_spider", "chat_spider_stream"])
def test_the_text_backstop_redacts_the_facts_of_a_person_the_prompt_names(gateway_for, policy_dir: Path,
                                                                           name: str) -> None:  # fmt: skip
    """Without the plugin the backstop is the only check: facts are armed there by the prompt, as at decode time."""
    (policy_dir / "facts-demo.yaml").write_text(FACTS_POLICY)
    text, results = _answer(gateway_for, name, "facts-demo")
    # recorded: "Spider-Man is a superhero with a unique ability: he can manipulate light."
    assert text.startswith("[redacted] is a superhero with a unique ability: he can [redacted]"), text
    assert results["spidey"]["filtered"] and not results.get("mary-jane", {}).get("filtered"), results


def _answer(gateway_for, name: str, policy: str) -> tuple[str, dict]:
    headers = {"x-quell-policies": policy}
    with gateway_for(name) as (client, replay):
        body = replay.request_body(name)
        if body.get("stream"):
            with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
                events = [json.loads(line[5:]) for line in resp.iter_lines()
                          if line.startswith("data:") and line.strip() != "data: [DONE]"]  # fmt: skip
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c.get("choices"))
            results = [c["choices"][0]["content_filter_results"] for c in events
                       if c.get("choices") and c["choices"][0].get("content_filter_results")][-1]  # fmt: skip
        else:
            choice = client.post("/v1/chat/completions", json=body, headers=headers).json()["choices"][0]
            text, results = choice["message"]["content"], choice["content_filter_results"]
    return text, results
