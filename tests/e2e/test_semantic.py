"""Semantic layers through the gateway: /v1/moderations, the input screen, and guarded outputs (JSON and SSE).

A second real gateway on the session's managed vLLM, with the local MiniLM embedder and the shipped policy plus an
input-screen policy that requests add per call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import MODEL, RunningGateway
from tests.procs import ROOT, free_port, start_gateway, stop, wait_ready

pytestmark = pytest.mark.e2e

PARAPHRASE = "The web-slinger from Queens swung between skyscrapers after a radioactive spider bit him."
FAR = "Preheat the oven and mix two cups of flour with a pinch of salt."
STORY = ("Tell me the story of the teenager from Queens who was bitten by a radioactive spider and fights the "
         "Green Goblin.")  # fmt: skip


@pytest.fixture(scope="module")
def semantic_gateway(gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("semantic")
    policies = root / "policies"
    policies.mkdir()
    # The shipped policy only flags concepts; these tests need it to refuse.
    shipped = (ROOT / "policies" / "spiderman.yaml").read_text().replace("on_concept: flag", "on_concept: refuse")
    (policies / "spiderman.yaml").write_text(shipped)
    screen = re.sub(r"^id: spiderman$", "id: spider-input", shipped, flags=re.MULTILINE)
    screen = re.sub(r"^default: true$", "default: false", screen, flags=re.MULTILINE)
    screen = re.sub(r"^applies_to: \[output\]$", "applies_to: [input]", screen, flags=re.MULTILINE)
    (policies / "spider-input.yaml").write_text(screen)
    port = free_port()
    env = {"QUELL_POLICIES": str(policies), "QUELL_BACKEND_URL": f"http://127.0.0.1:{gateway.vllm_port}",
           "QUELL_PORT": str(port), "QUELL_AUDIT_URL": f"sqlite:///{root / 'audit.db'}"}  # fmt: skip
    log = root / "gateway.log"
    proc = start_gateway(log, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log, timeout_s=120)
        yield base
    finally:
        stop(proc)


def _requests_seen(vllm_port: int) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{vllm_port}/metrics").text
    return sum(
        float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.MULTILINE)
    )


def test_moderations_shape_and_verdicts(semantic_gateway: str) -> None:
    resp = httpx.post(f"{semantic_gateway}/v1/moderations", json={"input": [PARAPHRASE, FAR, "I love S-P-I-D-E-Y!"]},
                      timeout=120)  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["policies"][0].startswith("spiderman@") and len(body["results"]) == 3
    paraphrase, far, spelled = body["results"]
    assert paraphrase["flagged"] and paraphrase["categories"]["spider-man"]
    assert {d["layer"] for d in paraphrase["quell"]["detections"]} <= {"embedding", "classifier"}
    assert not far["flagged"] and far["category_scores"]["spider-man"] < paraphrase["category_scores"]["spider-man"]
    surface = [d for d in spelled["quell"]["detections"] if d["layer"] == "surface"]
    assert spelled["flagged"] and surface and surface[0]["span"] == [7, 18]


def test_moderations_bad_input_is_400(semantic_gateway: str) -> None:
    resp = httpx.post(f"{semantic_gateway}/v1/moderations", json={"input": []})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"


def test_input_screen_blocks_before_the_backend(semantic_gateway: str, gateway: RunningGateway) -> None:
    before = _requests_seen(gateway.vllm_port)
    body = {"model": MODEL, "messages": [{"role": "user", "content": PARAPHRASE}], "max_tokens": 5,
            "quell": {"policies": ["spider-input"]}}  # fmt: skip
    resp = httpx.post(f"{semantic_gateway}/v1/chat/completions", json=body, timeout=120)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "content_filter" and "spider-input@" in error["message"]
    assert error["content_filter_results"]["spider-man"]["action"] == "refuse"
    assert _requests_seen(gateway.vllm_port) == before  # the backend never saw it
    ok = httpx.post(f"{semantic_gateway}/v1/chat/completions", timeout=120,
                    json={**body, "messages": [{"role": "user", "content": FAR}]})  # fmt: skip
    assert ok.status_code == 200


def test_concept_output_is_refused_json_and_stream(semantic_gateway: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": STORY}], "max_tokens": 80, "temperature": 0}
    choice = httpx.post(f"{semantic_gateway}/v1/chat/completions", json=body, timeout=120).json()["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    result = choice["content_filter_results"]["spider-man"]
    assert result["layer"] in ("embedding", "classifier") and result["action"] == "refuse"
    assert choice["message"]["content"] == "Sorry, I can't help with that topic."
    parts, finish = [], None
    with httpx.stream("POST", f"{semantic_gateway}/v1/chat/completions", json={**body, "stream": True},
                      timeout=120) as resp:  # fmt: skip
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                for c in json.loads(line[6:])["choices"]:
                    parts.append(c["delta"].get("content") or "")
                    finish = c.get("finish_reason") or finish
    assert finish == "content_filter" and "".join(parts).endswith("Sorry, I can't help with that topic.")
