"""Bad client input gets a 4xx OpenAI error naming the field, never a 500, and reaches no backend."""

from __future__ import annotations

import pytest

CHAT = '{"model": "SmolLM2-135M-Instruct", "max_tokens": 4, "messages": [{"role": "user", "content": %s}]%s}'
ADMIN = {"authorization": "Bearer operator-token-123"}


@pytest.mark.parametrize(("raw", "param"), [
    (CHAT % ('"\\ud800 lone surrogate"', ""), "messages[0].content"),
    (CHAT % ('"hi"', ', "presence_penalty": NaN'), "presence_penalty"),
    (CHAT % ('"hi"', ', "frequency_penalty": -Infinity'), "frequency_penalty"),
    (CHAT % ('"hi"', ', "logit_bias": {"\\udfff": 1}'), "logit_bias"),
])  # fmt: skip
def test_unsendable_json_is_400_naming_the_field(gateway_for, raw: str, param: str) -> None:
    with gateway_for() as (client, replay):
        resp = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert all(r[1] == "/v1/models" for r in replay.requests)


def test_body_over_the_limit_is_413(gateway_for) -> None:
    with gateway_for(max_body_bytes=2048) as (client, _):
        resp = client.post("/v1/chat/completions", content=CHAT % ('"' + "x" * 4096 + '"', ""),
                           headers={"content-type": "application/json"})  # fmt: skip
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_deeply_nested_json_is_400(gateway_for) -> None:
    raw = CHAT % ('"hi"', ', "extra": ' + "[" * 5000 + "]" * 5000)
    with gateway_for() as (client, _):
        resp = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "error" in resp.json()


@pytest.mark.parametrize(("query", "param"), [("since=99999999999d", "since"), ("limit=100000000", "limit"),
                                              ("limit=0", "limit")])  # fmt: skip
def test_audit_query_bounds_are_400(gateway_for, query: str, param: str) -> None:
    with gateway_for(admin_token="operator-token-123") as (client, _):
        resp = client.get(f"/admin/audit?{query}", headers=ADMIN)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param


@pytest.mark.parametrize("policy_id", ["../../etc/passwd", "..%2F..%2Fescape", "a/b"])
def test_path_like_policy_ids_write_nothing_outside_the_folder(gateway_for, policy_dir, policy_id: str) -> None:
    before = sorted(p.name for p in policy_dir.parent.rglob("*"))
    yaml = f"id: {policy_id}\ntargets:\n  - id: t\n    terms: [Zanzibarian]\n"
    with gateway_for(admin_token="operator-token-123") as (client, _):
        resp = client.put(f"/admin/policies/{policy_id}", content=yaml, headers=ADMIN)
        header = client.post(
            "/v1/chat/completions",
            headers={"x-quell-policies": policy_id},
            json={"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert 400 <= resp.status_code < 500 and 400 <= header.status_code < 500
    after = sorted(p.name for p in policy_dir.parent.rglob("*") if not p.name.startswith(("audit", "cache")))
    assert [p for p in after if p not in before] == []


def test_models_list_hides_server_paths(gateway_for) -> None:
    with gateway_for() as (client, _):
        cards = client.get("/v1/models").json()["data"]
    assert cards and all(not str(c.get("root", "")).startswith("/") for c in cards)


def test_loose_stream_flag_is_400(gateway_for) -> None:
    with gateway_for() as (client, _):
        resp = client.post("/v1/chat/completions", json={"model": "SmolLM2-135M-Instruct", "stream": "yes",
                                                         "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "stream"


def test_huge_headers_are_refused_by_the_server_not_a_500(serve_gateway) -> None:
    import httpx

    with serve_gateway() as (base, _):
        ids = ",".join(f"p{i}" for i in range(20_000))
        resp = httpx.post(
            f"{base}/v1/chat/completions",
            headers={"x-quell-policies": ids},
            json={"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}]},
        )
        ok = httpx.get(f"{base}/healthz")
    assert 400 <= resp.status_code < 500 and ok.status_code == 200
    if resp.headers.get("content-type", "").startswith("application/json"):
        assert len(resp.json()["error"]["message"]) < 2_000
