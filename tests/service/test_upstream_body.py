"""What the gateway asks of the decode-time plugin: every mask term under its mode's key, clients may add, never remove."""

from __future__ import annotations

from filters.policy_loader import load_policy_file
from service.completions import RequestContext
from service.endpoints import CHAT
from tests.procs import ROOT


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
