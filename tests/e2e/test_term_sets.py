"""Term sets by content hash on the real vLLM with the plugin (filters.term_sets): the plugin reads the set from
the shared index directory and masks as it does for inline terms; a missing or altered set is refused with HTTP
400 naming the set, never served unmasked, and the engine keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest

from filters.automaton import TermAutomaton
from filters.term_sets import SUBDIR, TERM_SET_KEY, save_term_set
from filters.text_matcher import find_matches
from tests.conftest import RunningGateway

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
TERMS = ["Spider-Man", "Spiderman", "Peter Parker", "Batman", "Bruce Wayne"]
PROMPTS = ["Repeat exactly: Spider-Man, Spider-Man, Spider-Man.", "Repeat exactly: Batman and Bruce Wayne.",
           "Write the name SPIDER-MAN in capital letters, three times."]  # fmt: skip


def chat(gateway: RunningGateway, prompt: str, xargs: dict | None) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 32, "temperature": 0,
            "seed": 0}  # fmt: skip
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return httpx.post(f"{gateway.vllm_url}/v1/chat/completions", json=body, headers=gateway.vllm_headers,
                      timeout=180)  # fmt: skip


def test_a_term_set_by_hash_masks_like_inline_terms_and_bad_sets_fail_closed(gateway: RunningGateway) -> None:
    start = gateway.vllm_log.stat().st_size
    digest = save_term_set({"quell_terms": TERMS}, gateway.index_dir)
    automaton = TermAutomaton(TERMS)
    control = [chat(gateway, p, None).json()["choices"][0]["message"]["content"] for p in PROMPTS]
    assert sum(bool(find_matches(automaton, t)) for t in control) >= 2, control  # the test can fail
    for prompt in PROMPTS:
        resp = chat(gateway, prompt, {TERM_SET_KEY: [digest]})
        assert resp.status_code == 200, resp.text
        text = resp.json()["choices"][0]["message"]["content"]
        assert find_matches(automaton, text) == [] and text.strip(), (prompt, text)

    missing = chat(gateway, PROMPTS[0], {TERM_SET_KEY: ["0" * 64]})
    assert missing.status_code == 400 and "term set 000000000000" in missing.text, missing.text
    altered = save_term_set({"quell_terms": ["Zorblax"]}, gateway.index_dir)
    (gateway.index_dir / SUBDIR / f"{altered}.json").write_text(json.dumps({"quell_terms": []}))
    refused = chat(gateway, PROMPTS[0], {TERM_SET_KEY: [altered]})
    assert refused.status_code == 400 and "does not hash to its name" in refused.text, refused.text
    assert chat(gateway, "Say hello.", None).status_code == 200  # the engine still serves
    with gateway.vllm_log.open("rb") as log:
        log.seek(start)
        assert b"Traceback" not in log.read()
