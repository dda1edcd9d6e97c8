"""The concept judge and the operator aid through the gateway, in process: the real default encoder, vLLM's answers
replayed (the chat answer and the judge's answers both recorded from the real SmolLM2-135M), so the judge's
decision reaches content_filter_results, the metrics and the audit log as layer `judge`, in JSON and in a `safe`
stream; the admin `:test` route and `quell policy test --semantic` show each concept's readiness and the texts
nearest its boundary."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from filters.judge import p_yes
from service.app import create_app
from service.backend import Backend
from service.cli import app as cli_app
from service.settings import DecodeMask, Settings
from tests.judge_support import WINDOWS, YES_AT, judge_policy
from tests.semantic_support import cache_with_vectors, shared_embedder
from tests.service.replay import Replay, load

TOKEN = "operator-token"
ANSWER = WINDOWS[-1]  # what recordings/chat_spider(_stream) hold
WHO = [{"role": "user", "content": "Who is Spider-Man? Answer in two sentences and use his name."}]
POOR = {"id": "poor", "targets": [{"id": "thing", "on_concept": "refuse", "concept": {
    "description": "Things people like.",
    "examples": ["I enjoy long walks.", "Tax returns are due in April.", "The cat sat on the mat.",
                 "Quantum chromodynamics describes quarks."]}}]}  # fmt: skip


def judge_says_yes() -> bool:
    for exchange in load("judge_smollm")["exchanges"][1:]:
        if ANSWER in exchange["request"]["json"]["messages"][1]["content"]:
            return p_yes(exchange["response"]["json"]) >= YES_AT
    raise AssertionError("the chat answer's window was not recorded")


def write_policies(folder: Path) -> None:
    """A default policy whose only target is the Spider-Man concept with a judge on every window (band [0, 1])."""
    folder.mkdir()
    data = judge_policy(band=[0.0, 1.0]).model_dump(mode="json")
    data["default"] = True
    data["targets"][0]["terms"] = []
    (folder / "judged.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (folder / "poor.yaml").write_text(yaml.safe_dump(POOR, sort_keys=False))


@contextmanager
def judged_gateway(tmp_path: Path, judge: bool = True) -> Iterator[tuple[TestClient, Replay]]:
    write_policies(tmp_path / "policies")
    replay = Replay("models", "chat_spider", "chat_spider_stream", "judge_smollm")
    settings = Settings(policies=tmp_path / "policies", audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
                        semantic="classifier", decode_mask=DecodeMask.OFF, cache_dir=cache_with_vectors(tmp_path),
                        admin_token=TOKEN, judge=judge)  # fmt: skip
    backend = Backend("http://vllm.replay", None, 30.0, transport=replay.transport)
    with TestClient(create_app(settings, backend=backend, embedder=shared_embedder())) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.02)
        yield client, replay


def judge_calls(replay: Replay) -> int:
    return sum(1 for method, path, body in replay.requests if path == "/v1/chat/completions" and
               body.get("max_tokens") == 1)  # fmt: skip


def test_the_judges_verdict_reaches_the_client_metrics_and_audit(tmp_path: Path) -> None:
    blocked = judge_says_yes()
    with judged_gateway(tmp_path) as (client, replay):
        body = {"model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 48, "messages": WHO,
                "logprobs": True, "top_logprobs": 5, "return_token_ids": True}  # fmt: skip
        choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
            events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
        streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        metrics = client.get("/metrics").text
        audit: list[dict] = []
        deadline = time.monotonic() + 30
        while blocked and not audit:  # the audit log writes off the response path
            audit = client.get("/admin/audit", headers={"Authorization": f"Bearer {TOKEN}"}).json()["data"]
            assert time.monotonic() < deadline, "no audit event was written"
    assert judge_calls(replay) == 1  # the stream's window was the JSON one's: answered from the cache
    assert 'quell_judge_calls_total{cached="false",outcome="' + ("yes" if blocked else "no") + '"} 1.0' in metrics
    assert 'quell_judge_calls_total{cached="true",outcome="' + ("yes" if blocked else "no") + '"} 1.0' in metrics
    if blocked:
        assert choice["finish_reason"] == "content_filter"
        assert choice["message"]["content"] == "Sorry, I can't help with that topic."
        assert choice["content_filter_results"]["spider-man"]["layer"] == "judge"
        assert ANSWER not in streamed and "manipulate" not in streamed
        assert 'quell_suppressions_total{action="refuse",layer="judge"' in metrics
        assert audit and all(e["layer"] == "judge" for e in audit), audit
    else:
        assert choice["message"]["content"] == ANSWER and "content_filter_results" not in choice
        assert streamed == ANSWER


def test_quell_judge_false_leaves_the_decision_to_the_classifier(tmp_path: Path) -> None:
    """QUELL_JUDGE=false (quell eval's `classifier` column beside its `judge` column): no judge call is made."""
    with judged_gateway(tmp_path, judge=False) as (client, replay):
        body = {"model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 48, "messages": WHO,
                "logprobs": True, "top_logprobs": 5, "return_token_ids": True}  # fmt: skip
        choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
        metrics = client.get("/metrics").text
    assert judge_calls(replay) == 0 and "quell_judge_calls_total{" not in metrics
    results = choice.get("content_filter_results") or {}
    assert all(r.get("layer") != "judge" for r in results.values()), results


def test_admin_test_route_shows_readiness_and_the_boundary(tmp_path: Path) -> None:
    with judged_gateway(tmp_path) as (client, _):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        poor = client.post("/admin/policies/poor:test", json={"text": "I like walks."}, headers=headers).json()
        judged = client.post("/admin/policies/spiderman:test", json={"text": "Bread."}, headers=headers).json()
    [note] = poor["concepts"]
    assert note["target"] == "thing" and note["refuse_ready"] is False and note["cv_recall"] < 0.6
    assert "not ready to refuse on" in note["warning"] and "Add examples" in note["warning"]
    assert len(note["boundary"]) == 5
    assert {b["source"] for b in note["boundary"]} <= {"background", "example", "counterexample"}
    gaps = [abs(b["score"] - note["threshold"]) for b in note["boundary"]]
    assert gaps == sorted(gaps)  # nearest the threshold first
    assert "concepts" in judged, judged
    [spider] = judged["concepts"]
    assert spider["refuse_ready"] is True and spider["judge_band"] == [0.0, 1.0]


def test_cli_policy_test_refuses_to_call_a_poor_concept_refuse_ready(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "poor.yaml"
    path.write_text(yaml.safe_dump(POOR, sort_keys=False))
    monkeypatch.setenv("QUELL_CACHE_DIR", str(cache_with_vectors(tmp_path)))
    result = CliRunner().invoke(cli_app, ["policy", "test", str(path), "Bread rises.", "--semantic",
                                          "--boundary", "3"], env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    assert "NOT REFUSE-READY" in result.output and "cross-validated recall on its examples 0.40" in result.output
    assert "nearest the boundary" in result.output


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
