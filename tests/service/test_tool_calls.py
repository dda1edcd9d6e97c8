"""Tool-call arguments are model text too: guarded in JSON and in streamed deltas (recorded from vLLM with the hermes
tool parser and tool_choice=required). The tiny model writes a name of its own there, so the policy lists that
word, read from the recording."""

from __future__ import annotations

import json
import re

import pytest

from filters.policy_loader import parse_policy
from filters.surface import SurfaceLayer
from filters.text_matcher import find_matches
from tests.service.test_side_channels import recorded, sse_chunks


def _arguments_word() -> str:
    _, raw = recorded("chat_tool_call")
    arguments = raw["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    return re.search(r"[A-Za-z]{5,}", arguments).group(0)


def _policy(action: str) -> str:
    return (f"id: tools\ndefault: true\nrefusal: Not that.\ntargets:\n  - id: t\n    terms: [{_arguments_word()}]\n"
            f"    on_surface: {action}\n")  # fmt: skip


@pytest.fixture
def tools_policy(policy_dir):
    for f in policy_dir.iterdir():
        f.unlink()

    def write(action: str):
        (policy_dir / "tools.yaml").write_text(_policy(action))
        return SurfaceLayer([parse_policy(_policy(action), "tools")]).automaton

    return write


def test_json_tool_arguments_are_redacted(gateway_for, tools_policy) -> None:
    automaton = tools_policy("redact")
    body, raw = recorded("chat_tool_call")
    assert find_matches(automaton, raw["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    with gateway_for("chat_tool_call") as (client, _):
        choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    arguments = choice["message"]["tool_calls"][0]["function"]["arguments"]
    assert "[redacted]" in arguments and not find_matches(automaton, arguments)
    assert choice["content_filter_results"]["t"]["action"] == "redact"


def test_json_tool_call_is_removed_when_refused(gateway_for, tools_policy) -> None:
    tools_policy("refuse")
    body, _ = recorded("chat_tool_call")
    with gateway_for("chat_tool_call") as (client, _):
        choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["message"]["content"] == "Not that."
    assert choice["finish_reason"] == "content_filter"


@pytest.mark.parametrize("action", ["redact", "stop"])
def test_streamed_tool_arguments_never_spell_the_term(gateway_for, tools_policy, action: str) -> None:
    automaton = tools_policy(action)
    body, _ = recorded("chat_tool_call_stream")
    with gateway_for("chat_tool_call_stream") as (client, _), client.stream("POST", "/v1/chat/completions",
                                                                           json=body) as resp:  # fmt: skip
        chunks = sse_chunks(resp.read().decode())
    deltas = [c.get("delta") or {} for ch in chunks for c in ch["choices"]]
    arguments = "".join(
        ((t.get("function") or {}).get("arguments") or "") for d in deltas for t in d.get("tool_calls") or []
    )
    assert not find_matches(automaton, arguments), arguments
    finals = [c for ch in chunks for c in ch["choices"] if c.get("finish_reason")]
    assert finals and "content_filter_results" in finals[-1]
    if action == "stop":
        assert finals[-1]["finish_reason"] == "content_filter"
    assert json.dumps(chunks)  # every chunk still serialises
