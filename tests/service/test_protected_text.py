"""Protected text through the gateway: JSON and SSE answers that copy a protected passage are redacted, the
decode-time plugin gets only the index's content hash, and /v1/moderations and the admin :test route report runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from filters.policy_loader import load_policy_file
from filters.protected_text import find_runs
from service.completions import RequestContext
from service.endpoints import CHAT
from service.policy_registry import surface_layer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "examples" / "dickens-quotes.yaml"
CORPUS = ROOT / "policies" / "examples" / "corpora"
QUOTE = "She wrote: IT WAS THE BEST OF TIMES,\nIT WAS THE WORST OF TIMES. Then she stopped."


@pytest.fixture(autouse=True)
def dickens(policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QUELL_INDEX_DIR", str(tmp_path / "indexes"))
    shutil.copytree(CORPUS, policy_dir / "corpora")
    text = EXAMPLE.read_text().replace("id: dickens-quotes", "id: dickens-quotes\ndefault: true")
    (policy_dir / "dickens-quotes.yaml").write_text(text)
    return policy_dir


def test_moderations_report_runs_with_source_offset_and_length(gateway_for) -> None:
    with gateway_for() as (client, _):
        resp = client.post("/v1/moderations", json={"input": [QUOTE, "It was the best of times, I think."]})
    assert resp.status_code == 200, resp.text
    quoted, short = resp.json()["results"]
    assert quoted["flagged"] and quoted["categories"]["two-cities"]
    (run,) = [d for d in quoted["quell"]["detections"] if d["layer"] == "protected_text"]
    assert QUOTE[run["span"][0] : run["span"][1]] == "IT WAS THE BEST OF TIMES,\nIT WAS THE WORST OF TIMES"
    assert run["words"] == 12 and run["source"] == "two-cities-opening.txt" and run["source_word_offset"] == 0
    assert not short["categories"]["two-cities"]  # six words of the corpus: under the limit of seven


def test_admin_test_route_reports_runs(gateway_for) -> None:
    with gateway_for(admin_token="op-token") as (client, _):
        resp = client.post("/admin/policies/dickens-quotes:test", json={"text": QUOTE},
                           headers={"authorization": "Bearer op-token"})  # fmt: skip
        summary = client.get("/admin/policies/dickens-quotes", headers={"authorization": "Bearer op-token"}).json()
    assert resp.status_code == 200, resp.text
    assert len(summary["targets"][0]["protected_text"]) == 12 and summary["targets"][0]["on_protected"] == "mask"
    body = resp.json()
    assert body["fired"] and body["protected_runs"][0]["words"] == 12
    assert body["protected_runs"][0]["source"].endswith("two-cities-opening.txt")


def test_upstream_request_carries_the_index_hash_not_the_corpus(dickens: Path) -> None:
    policy = load_policy_file(dickens / "dickens-quotes.yaml")
    req = RequestContext.of(CHAT, {"messages": [], "model": "m"}, [policy], decode_mask=True, text_backstop=True)
    body = req.upstream_body()
    digest = policy.targets[0].protected_text.corpus.digest
    assert body["vllm_xargs"] == {"quell_protected": [digest]}
    assert "best of times" not in json.dumps(body).lower()
    assert (Path(str(dickens.parent / "indexes")) / digest / "grams.npy").is_file()  # written for the plugin


def _copy_recording(name: str) -> str:
    path = ROOT / "tests" / "service" / "recordings" / f"{name}.json"
    if not path.exists():
        pytest.skip(f"recording {name} missing: python -m tests.service.record {name}")
    return name


def test_json_answer_copying_the_passage_is_redacted(gateway_for, dickens: Path) -> None:
    name = _copy_recording("chat_copy_dickens")
    with gateway_for(name) as (client, replay):
        body = replay.request_body(name)
        raw = json.loads((ROOT / "tests/service/recordings" / f"{name}.json").read_text())
        said = raw["exchanges"][0]["response"]["json"]["choices"][0]["message"]["content"]
        resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    rules = surface_layer([load_policy_file(dickens / "dickens-quotes.yaml")]).protected
    assert find_runs(rules, said)  # the model did copy: the recording is a real test
    assert "[redacted]" in choice["message"]["content"] and find_runs(rules, choice["message"]["content"]) == []
    assert choice["content_filter_results"]["two-cities"]["action"] == "redact"


def test_stream_copying_the_passage_is_redacted(gateway_for, dickens: Path) -> None:
    name = _copy_recording("chat_copy_dickens_stream")
    policy = load_policy_file(dickens / "dickens-quotes.yaml")
    with gateway_for(name) as (client, replay), client.stream("POST", "/v1/chat/completions",
                                                              json=replay.request_body(name)) as resp:  # fmt: skip
        events = [json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:")
                  and line.strip() != "data: [DONE]"]  # fmt: skip
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c.get("choices"))
    assert "[redacted]" in text
    assert find_runs(surface_layer([policy]).protected, text) == []
    last = [c for c in events if c.get("choices") and c["choices"][0].get("content_filter_results")]
    assert last and last[-1]["choices"][0]["content_filter_results"]["two-cities"]["layer"] == "protected_text"
