"""What the gateway asks of the decode-time plugin: every mask term under its mode's key, clients may add, never remove."""

from __future__ import annotations

import asyncio

from filters.policy_loader import load_policy_file, parse_policy
from service import input_screen
from service.completions import RequestContext
from service.endpoints import CHAT
from service.semantic_runtime import SemanticRuntime
from tests.procs import ROOT
from tests.semantic_support import VECTORS, shared_embedder


def _request(body: dict, decode_mask: bool = True) -> RequestContext:
    policy = load_policy_file(ROOT / "policies" / "spiderman.yaml")
    return RequestContext.of(CHAT, body, [policy], decode_mask=decode_mask, text_backstop=True)


def test_reader_terms_reach_the_plugin_by_mode_and_client_terms_are_added_not_replacing() -> None:
    body = {"model": "m", "messages": [], "vllm_xargs": {"quell_terms": ["Zanzibarian"], "quell_inside_terms": "x"}}
    xargs = _request(body).upstream_body()["vllm_xargs"]
    inside, prefix = xargs.get("quell_inside_terms", []), xargs.get("quell_prefix_terms", [])
    assert "Spiderman" in inside and "Spider-Man" in inside  # 7+ letters: read inside words too (#TeamSpiderman)
    assert "Spidey" in prefix and "Spidey" not in inside  # shorter: from a word start, whatever follows
    assert xargs["quell_terms"][-1] == "Zanzibarian"  # the client's own term is kept, after ours
    assert body["vllm_xargs"]["quell_inside_terms"] == "x"  # the client's body is not modified in place


def test_text_only_backend_gets_the_body_as_sent() -> None:
    body = {"model": "m", "messages": []}
    assert _request(body, decode_mask=False).upstream_body() == body


DESCRIBED = """\
id: forget-surgeon
applies_to: [input, output]
targets:
  - id: jane
    terms: [Jane Roe]
    facts: ["1985-03-12"]
    on_concept: flag
    concept:
      description: Jane Roe, the chief surgeon of Mercy Hospital who performed the first double hand transplant.
      examples:
        - the chief surgeon at Mercy Hospital who did the first double hand transplant
        - the Mercy Hospital surgeon famous for transplanting two hands at once
        - the doctor who led the first double hand transplant at Mercy
        - Mercy Hospital's head of surgery, the hand transplant pioneer
      layers: [embedding]
"""


def test_a_person_described_not_named_on_the_input_screen_has_their_facts_armed() -> None:
    """The real embedder and input screen: the prompt describes the person without the name; the facts go to the
    plugin as `quell_armed_facts` and are armed in the backstop. Asked about someone else, nothing is armed."""
    policy = parse_policy(DESCRIBED)
    runtime = SemanticRuntime(shared_embedder(), frozenset({"embedding", "classifier"}), VECTORS)

    def context(question: str) -> RequestContext:
        body = {"model": "m", "messages": [{"role": "user", "content": question}]}
        decisions, _ = asyncio.run(input_screen.screen(CHAT, body, [policy], runtime))
        return RequestContext.of(CHAT, body, [policy], decode_mask=True, text_backstop=True,
                                 recognised=input_screen.recognised_targets(decisions))  # fmt: skip

    described = context("When was the Mercy Hospital surgeon who did the first double hand transplant born?")
    assert described.recognised == {(policy.ref, "jane")}
    assert "12/03/1985" in described.upstream_body()["vllm_xargs"]["quell_armed_facts"]
    assert [d.detail for d in described.backstop.decisions("Born 12/03/1985.")] == ["fact"]
    other = context("When was the mayor of Springfield born?")
    assert other.recognised == frozenset() and "quell_armed_facts" not in other.upstream_body()["vllm_xargs"]
    assert other.backstop.decisions("Born 12/03/1985.") == []
