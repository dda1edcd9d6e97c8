"""End to end: the openai SDK against `quell serve` with the managed vLLM (CPU build) and the packaged model."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from filters.policy_loader import load_policy_file
from filters.surface import SurfaceLayer
from filters.text_matcher import find_matches
from tests.conftest import MODEL, RunningGateway

pytestmark = pytest.mark.e2e

SPIDER_PROMPTS = [
    "Who is Spider-Man? Answer in two sentences and use his name.",
    "Write the name Spiderman three times.",
    "What is the real name of the superhero called Spider-Man?",
]


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def automaton(gateway: RunningGateway):
    return SurfaceLayer([load_policy_file(gateway.policies / "spiderman.yaml")]).automaton


def test_readyz_reports_backend_and_decode_time_layer(gateway: RunningGateway) -> None:
    body = httpx.get(f"{gateway.base_url}/readyz").json()
    assert body["status"] == "ready"
    assert body["surface_layer"] == "decode-time"
    assert any(ref.startswith("spiderman@") for ref in body["policies"])


def test_the_default_policies_terms_reach_the_plugin_before_any_request_carries_them(gateway: RunningGateway) -> None:
    """The gateway sends the default policy set's terms to the plugin once at start (a single-token request), so the
    first user request does not pay the mask compilation on its decode steps (`Gateway.warm_decode_masks`)."""
    deadline = time.monotonic() + 120
    while "decode-time masks sent to the plugin for the default policies" not in gateway.log.read_text():
        assert time.monotonic() < deadline, gateway.log.read_text()[-3000:]
        time.sleep(0.5)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list()]


@pytest.mark.parametrize("prompt", SPIDER_PROMPTS)
def test_chat_answers_without_any_policy_term(client: openai.OpenAI, automaton, prompt: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=60, temperature=0
    )
    assert re.fullmatch(r"spiderman@[0-9a-f]{12}", raw.headers["x-quell-policies"])
    completion = raw.parse()
    text = completion.choices[0].message.content
    assert text and not find_matches(automaton, text), text


def test_streaming_chat_with_usage(client: openai.OpenAI, automaton) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": SPIDER_PROMPTS[1]}], max_tokens=60, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    parts, finish, usage = [], None, None
    for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    text = "".join(parts)
    assert text and not find_matches(automaton, text), text
    assert finish in ("stop", "length", "content_filter")
    assert usage is not None and usage.completion_tokens > 0


def test_streaming_and_json_agree_at_temperature_zero(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 30,
              "temperature": 0}  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kwargs, stream=True)
                       if c.choices)  # fmt: skip
    assert streamed == whole


def test_legacy_completions_json_and_stream(client: openai.OpenAI, automaton) -> None:
    prompt = "Peter Parker, also known as"
    text = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0).choices[0].text
    assert text and not find_matches(automaton, text)
    streamed = "".join(c.choices[0].text for c in
                       client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0, stream=True)
                       if c.choices)  # fmt: skip
    assert streamed == text


def test_unknown_model_is_404_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["param"] == "model" and "gpt-17" in info.value.body["message"]


def test_backend_rejection_is_relayed_as_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100000)
    assert "max_tokens" in str(info.value)


def _generated_tokens(vllm_port: int) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{vllm_port}/metrics").text
    return sum(
        float(m) for m in re.findall(r"^vllm:generation_tokens_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.MULTILINE)
    )


def test_client_disconnect_cancels_the_backend_request(gateway: RunningGateway) -> None:
    # 1500 forced tokens take over a minute on CPU: if generation stops within seconds of the hang-up and well short
    # of 1500 tokens, the gateway cancelled the upstream request.
    body = {"model": MODEL, "prompt": "Count slowly:", "max_tokens": 1500, "stream": True,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    start = _generated_tokens(gateway.vllm_port)
    with httpx.stream("POST", f"{gateway.base_url}/v1/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        events = 0
        for line in resp.iter_lines():
            events += line.startswith("data:")
            if events >= 5:
                break  # generation is under way: now hang up
    deadline = time.monotonic() + 30
    previous = _generated_tokens(gateway.vllm_port)
    while True:
        time.sleep(3)
        now = _generated_tokens(gateway.vllm_port)
        if now == previous:
            break  # nothing generated for 3 s: the request is gone
        assert time.monotonic() < deadline, "vLLM kept generating after the client went away"
        previous = now
    assert now - start < 1500, "the request ran to completion"
