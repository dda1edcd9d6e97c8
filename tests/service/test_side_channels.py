"""Nothing a layer removed comes back another way: token ids, logprobs, top_logprobs, prompt logprobs, tool calls,
reasoning, every choice. In-process, against real vLLM answers recorded in text-only mode (the terms are in them)."""

from __future__ import annotations

import json

import pytest

from filters.policy_loader import parse_policy
from filters.surface import SurfaceLayer
from filters.text_matcher import find_matches
from tests.service.conftest import POLICIES
from tests.service.replay import load

SPIDER = SurfaceLayer([parse_policy(POLICIES["spider-redact"], "spider")]).automaton
REFUSE = {"x-quell-policies": "spider-refuse"}


def recorded(name: str) -> tuple[dict, dict | str]:
    exchange = load(name)["exchanges"][0]
    response = exchange["response"]
    return exchange["request"]["json"], response.get("json", response.get("sse"))


def sse_chunks(text: str) -> list[dict]:
    lines = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    assert lines[-1] == "[DONE]", lines[-3:]
    return [json.loads(line) for line in lines[:-1]]


def spells_a_term(text: str) -> bool:
    return bool(find_matches(SPIDER, text))


def test_recordings_hold_the_term_the_gateway_must_catch() -> None:
    _, chat = recorded("chat_spider")
    assert spells_a_term(chat["choices"][0]["message"]["content"])
    assert chat["choices"][0]["token_ids"] and chat["choices"][0]["logprobs"]["content"]


@pytest.mark.parametrize("headers", [{}, REFUSE], ids=["redact", "refuse"])
def test_json_chat_drops_token_ids_and_logprobs_of_a_changed_choice(gateway_for, headers) -> None:
    body, _ = recorded("chat_spider")
    with gateway_for("chat_spider") as (client, _):
        resp = client.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    results = choice.pop("content_filter_results")  # names the target ("spider-man"): policy data, not model text
    assert results["spider-man"]["filtered"] and not spells_a_term(json.dumps(choice))
    assert "token_ids" not in choice and choice["logprobs"] is None
    if headers:
        assert choice["message"]["content"] == "Sorry, not that topic."
        assert choice["finish_reason"] == "content_filter"
    else:
        assert "[redacted]" in choice["message"]["content"]


@pytest.mark.parametrize("headers", [{}, REFUSE], ids=["redact", "refuse"])
def test_json_completion_drops_token_ids_and_logprobs_of_a_changed_choice(gateway_for, headers) -> None:
    body, raw = recorded("completion_spider")
    assert spells_a_term(raw["choices"][0]["text"]) and raw["choices"][0]["token_ids"]
    with gateway_for("completion_spider") as (client, _):
        resp = client.post("/v1/completions", json=body, headers=headers)
    choice = resp.json()["choices"][0]
    assert not spells_a_term(choice["text"])
    assert "token_ids" not in choice and choice["logprobs"] is None


def _stream(client, path: str, body: dict, headers: dict) -> list[dict]:
    with client.stream("POST", path, json=body, headers=headers) as resp:
        assert resp.status_code == 200
        return sse_chunks(resp.read().decode())


@pytest.mark.parametrize("headers", [{}, REFUSE], ids=["redact", "refuse"])
@pytest.mark.parametrize(("name", "path"), [("chat_spider_stream", "/v1/chat/completions"),
                                            ("completion_spider_stream", "/v1/completions")])  # fmt: skip
def test_streamed_ids_and_logprobs_spell_only_released_text(gateway_for, name, path, headers) -> None:
    """Ids and logprobs go out with the text they spell, and never once the text was changed: together they are a
    prefix of the model's real tokens that spells no term."""
    body, raw = recorded(name)
    real_ids = [i for chunk in sse_chunks(raw) for c in chunk["choices"] for i in c.get("token_ids") or []]
    with gateway_for(name) as (client, _):
        chunks = _stream(client, path, body, headers)
    ids = [i for chunk in chunks for c in chunk["choices"] for i in c.get("token_ids") or []]
    tokens = []
    for chunk in chunks:
        for c in chunk["choices"]:
            lp = c.get("logprobs") or {}
            tokens += [e["token"] for e in lp.get("content") or []] + list(lp.get("tokens") or [])
    text = "".join(c.get("text") or (c.get("delta") or {}).get("content") or "" for ch in chunks for c in ch["choices"])
    assert not spells_a_term(text) and not spells_a_term("".join(tokens))
    assert ids == real_ids[: len(ids)] and len(ids) < len(real_ids)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("content_filter", "stop", "length")
    assert any("content_filter_results" in c for ch in chunks for c in ch["choices"])


def test_stream_without_a_decision_keeps_every_token_id(gateway_for, policy_dir) -> None:
    """The hold-back must not cost clients their ids when no layer acts (no policy matches this answer)."""
    for f in policy_dir.iterdir():
        f.unlink()
    (policy_dir / "other.yaml").write_text("id: other\ndefault: true\ntargets:\n  - id: t\n    terms: [Zanzibarian]\n")
    body, raw = recorded("chat_spider_stream")
    real_ids = [i for chunk in sse_chunks(raw) for c in chunk["choices"] for i in c.get("token_ids") or []]
    with gateway_for("chat_spider_stream") as (client, _):
        chunks = _stream(client, "/v1/chat/completions", body, {})
    assert [i for chunk in chunks for c in chunk["choices"] for i in c.get("token_ids") or []] == real_ids


@pytest.mark.parametrize("name", ["chat_spider", "completion_spider"])
def test_top_logprobs_alternative_that_would_complete_a_term_is_dropped(gateway_for, policy_dir, name) -> None:
    """A policy names a word the model nearly said (one of its alternatives, absent from the answer): the answer
    passes unchanged with its ids, and that alternative is gone from top_logprobs while the others stay."""
    body, raw = recorded(name)
    choice = raw["choices"][0]
    chosen_text = choice.get("text") or choice.get("message", {}).get("content")
    if "content" in choice["logprobs"]:
        alternatives = [[t["token"] for t in e["top_logprobs"]] for e in choice["logprobs"]["content"]]
    else:
        alternatives = [list(tops) for tops in choice["logprobs"]["top_logprobs"]]
    word = next(a.strip() for alts in alternatives for a in alts
                if a.startswith(" ") and a.strip().isalpha() and len(a.strip()) >= 5
                and a.strip().lower() not in chosen_text.lower())  # fmt: skip
    for f in policy_dir.iterdir():
        f.unlink()
    (policy_dir / "near.yaml").write_text(f"id: near\ndefault: true\ntargets:\n  - id: t\n    terms: [{word}]\n")
    path = "/v1/chat/completions" if "content" in choice["logprobs"] else "/v1/completions"
    with gateway_for(name) as (client, _):
        out = client.post(path, json=body).json()["choices"][0]
    assert out.get("token_ids") == choice["token_ids"]
    assert (out.get("text") or out.get("message", {}).get("content")) == chosen_text
    if "content" in out["logprobs"]:
        kept = [[t["token"] for t in e["top_logprobs"]] for e in out["logprobs"]["content"]]
    else:
        kept = [list(tops) for tops in out["logprobs"]["top_logprobs"]]
    flat_before = [a for alts in alternatives for a in alts]
    flat_after = [a for alts in kept for a in alts]
    assert f" {word}" in flat_before and f" {word}" not in flat_after
    assert len(flat_after) >= len(flat_before) - sum(a.strip().lower() == word.lower() for a in flat_before)


@pytest.mark.parametrize(("path", "extra", "param"), [
    ("/v1/completions", {"prompt": "Peter Parker is Spider-", "prompt_logprobs": 5}, "prompt_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "prompt_logprobs": 1}, "prompt_logprobs"),
    ("/v1/completions", {"prompt": "Peter Parker is Spider-", "echo": True, "logprobs": 5}, "echo"),
])  # fmt: skip
def test_prompt_logprobs_are_refused_under_an_output_policy(gateway_for, path, extra, param) -> None:
    with gateway_for() as (client, replay):
        resp = client.post(path, json={"model": "SmolLM2-135M-Instruct", "max_tokens": 4, **extra})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param and resp.json()["error"]["code"] == "unsupported_under_policy"
    assert all(r[1] == "/v1/models" for r in replay.requests)  # the backend never saw it


def test_every_choice_of_n_is_guarded(gateway_for) -> None:
    body, raw = recorded("chat_two_choices")
    texts = [c["message"]["content"] for c in raw["choices"]]
    assert len(texts) == 2
    with gateway_for("chat_two_choices") as (client, _):
        out = client.post("/v1/chat/completions", json=body).json()["choices"]
    assert len(out) == 2 and not any(spells_a_term(c["message"]["content"]) for c in out)
    for before, after in zip(texts, out, strict=True):
        assert ("content_filter_results" in after) == spells_a_term(before)
