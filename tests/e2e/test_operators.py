"""Operators: hot reload, admin API, keys and tenants. A second real gateway, on the session's managed vLLM."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from filters.policy_loader import load_policy_file
from tests.conftest import MODEL, RunningGateway
from tests.procs import QUELL, ROOT, free_port, start_gateway, stop, wait_ready

pytestmark = pytest.mark.e2e  # a gateway process over the session's real vLLM

ADMIN = "operator-secret-token"
KEYS = """\
tenants:
  acme:
    policies: [spiderman]
    may_add: [planets]
  beta:
    policies: []
keys:
  - key: sk-acme-0001
    tenant: acme
  - sha256: {beta_digest}
    tenant: beta
"""
PLANETS = """\
id: planets
description: test policy
targets:
  - id: mars
    terms: [Mars]
    on_surface: {action}
"""


@dataclass(frozen=True)
class Ops:
    base: str
    policies: Path
    admin: dict[str, str]
    log: Path


@pytest.fixture(scope="module")
def ops(gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    import hashlib

    root = tmp_path_factory.mktemp("ops")
    policies = root / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "spiderman.yaml", policies)
    (policies / "planets.yaml").write_text(PLANETS.format(action="redact"))
    keys = root / "keys.yaml"
    keys.write_text(KEYS.format(beta_digest=hashlib.sha256(b"sk-beta-0002").hexdigest()))
    port = free_port()
    env = {"QUELL_ADMIN_TOKEN": ADMIN, "QUELL_KEYS_FILE": str(keys), "QUELL_POLICIES": str(policies),
           "QUELL_BACKEND_URL": f"http://127.0.0.1:{gateway.vllm_port}", "QUELL_PORT": str(port),
           "QUELL_AUDIT_URL": f"sqlite:///{root / 'audit.db'}", "QUELL_AUDIT_STORE_TEXT": "snippet"}  # fmt: skip
    log = root / "gateway.log"
    proc = start_gateway(log, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log, timeout_s=60)
        yield Ops(base, policies, {"Authorization": f"Bearer {ADMIN}"}, log)
    finally:
        stop(proc)
    assert "Traceback" not in log.read_text()


def _versions(ops: Ops) -> dict[str, str]:
    return {p["id"]: p["version"] for p in httpx.get(f"{ops.base}/admin/policies", headers=ops.admin).json()["data"]}


def _statuses(ops: Ops) -> dict[str, str]:
    return {p["id"]: p["status"] for p in httpx.get(f"{ops.base}/admin/policies", headers=ops.admin).json()["data"]}


def _wait_for(predicate, timeout_s: float = 5.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_new_mask_policy_is_primed_in_the_plugin_after_the_reload(ops: Ops) -> None:
    """Not only the default set: a policy a request names alone gets its token masks built before its first request
    (`Gateway.warm_decode_masks`), so that request does not pay the compilation on its decode steps."""
    moons = ops.policies / "moons.yaml"
    moons.write_text("id: moons\ntargets:\n  - id: phobos\n    terms: [Phobos, Deimos]\n    on_surface: mask\n")
    try:
        _wait_for(lambda: "decode-time masks sent to the plugin for policy moons" in ops.log.read_text(), 60)
    finally:
        moons.unlink()
        _wait_for(lambda: "moons" not in _versions(ops), 30)


@pytest.mark.parametrize("token", [None, "wrong", ADMIN + "x"])
def test_admin_needs_the_operator_token(ops: Ops, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(f"{ops.base}/admin/policies", headers=headers)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_admin_token"


def test_list_and_get_policies(ops: Ops) -> None:
    body = httpx.get(f"{ops.base}/admin/policies", headers=ops.admin).json()
    assert {p["id"] for p in body["data"]} == {"spiderman", "planets"}
    one = httpx.get(f"{ops.base}/admin/policies/planets", headers=ops.admin).json()
    assert one["policy"]["targets"][0]["terms"] == ["Mars"] and one["file"].endswith("planets.yaml")
    assert httpx.get(f"{ops.base}/admin/policies/nope", headers=ops.admin).status_code == 404


def test_validate_route(ops: Ops) -> None:
    ok = httpx.post(f"{ops.base}/admin/policies:validate", headers=ops.admin, content=PLANETS.format(action="stop"))
    assert ok.status_code == 200 and ok.json()["policy"]["targets"][0]["on_surface"] == "stop"
    bad = httpx.post(f"{ops.base}/admin/policies:validate", headers=ops.admin, content=PLANETS.format(action="zap"))
    assert bad.status_code == 422
    assert bad.json()["errors"][0] | {"message": ""} == {
        "file": "<request>",
        "line": 6,
        "field": "targets[0].on_surface",
        "message": "",
    }


def test_test_route_reports_spans(ops: Ops) -> None:
    # The route runs the semantic layers too: it may wait for the policy's classifier, still training at start-up.
    resp = httpx.post(f"{ops.base}/admin/policies/spiderman:test", headers=ops.admin, timeout=120,
                      json={"text": "Everyone loves S-p-i-d-e-r-m-a-n."})  # fmt: skip
    body = resp.json()
    assert body["fired"] and body["detections"][0]["span"][0] == 15 and body["detections"][0]["layer"] == "surface"
    paraphrase = httpx.post(f"{ops.base}/admin/policies/spiderman:test", headers=ops.admin, timeout=120,
                            json={"text": "The web-slinger from Queens swung between skyscrapers after a radioactive "
                                          "spider bit him."}).json()  # fmt: skip
    assert paraphrase["fired"] and {d["layer"] for d in paraphrase["detections"]} & {"embedding", "classifier"}


def test_hot_reload_valid_change_goes_live_and_broken_change_is_rejected(ops: Ops) -> None:
    path = ops.policies / "planets.yaml"
    before = _versions(ops)["planets"]
    path.write_text(PLANETS.format(action="stop"))
    new = load_policy_file(path).version
    _wait_for(lambda: _versions(ops)["planets"] == new, timeout_s=30)  # a deadline, not a latency claim
    assert new != before
    path.write_text(PLANETS.format(action="explode"))
    _wait_for(lambda: _statuses(ops)["planets"] == "stale")
    assert _versions(ops)["planets"] == new  # last good version still active
    path.write_text(PLANETS.format(action="redact"))
    _wait_for(lambda: _versions(ops)["planets"] == before)


def test_put_invalid_is_422_and_leaves_the_file(ops: Ops) -> None:
    path = ops.policies / "planets.yaml"
    original = path.read_bytes()
    resp = httpx.put(f"{ops.base}/admin/policies/planets", headers=ops.admin, content="id: planets\ntargets: [\n")
    assert resp.status_code == 422 and "invalid YAML" in resp.json()["errors"][0]["message"]
    mismatch = httpx.put(f"{ops.base}/admin/policies/other", headers=ops.admin, content=PLANETS.format(action="stop"))
    assert mismatch.status_code == 422 and mismatch.json()["errors"][0]["field"] == "id"
    assert path.read_bytes() == original


def test_concurrent_puts_one_wins_whole(ops: Ops) -> None:
    bodies = [PLANETS.format(action=a).replace("test policy", f"writer {i}") for i, a in
              enumerate(["redact", "stop", "refuse", "mask"] * 3)]  # fmt: skip
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda b: httpx.put(f"{ops.base}/admin/policies/planets", headers=ops.admin,
                                                   content=b, timeout=30).status_code, bodies))  # fmt: skip
    assert codes == [200] * len(bodies)
    final = (ops.policies / "planets.yaml").read_text()
    assert final in bodies  # never a mix of two writers
    assert not list(ops.policies.glob(".*.tmp"))
    _wait_for(lambda: _versions(ops)["planets"] == load_policy_file(ops.policies / "planets.yaml").version)
    (ops.policies / "planets.yaml").write_text(PLANETS.format(action="redact"))


def test_client_key_required(ops: Ops) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    assert httpx.post(f"{ops.base}/v1/chat/completions", json=body).status_code == 401
    wrong = httpx.post(f"{ops.base}/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-nope-0000"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


def test_tenants_get_their_policies_and_may_add_only_allowed_ones(ops: Ops) -> None:
    acme = openai.OpenAI(base_url=f"{ops.base}/v1", api_key="sk-acme-0001", max_retries=0)
    beta = openai.OpenAI(base_url=f"{ops.base}/v1", api_key="sk-beta-0002", max_retries=0)
    msg = [{"role": "user", "content": "Repeat exactly: Mars is red."}]
    raw = acme.chat.completions.with_raw_response.create(model=MODEL, messages=msg, max_tokens=10,
                                                         extra_body={"quell": {"policies": ["planets"]}})  # fmt: skip
    assert [r.split("@")[0] for r in raw.headers["x-quell-policies"].split(",")] == ["spiderman", "planets"]
    raw = beta.chat.completions.with_raw_response.create(model=MODEL, messages=msg, max_tokens=10)
    assert raw.headers["x-quell-policies"] == ""  # this tenant's list is empty
    with pytest.raises(openai.PermissionDeniedError):
        beta.chat.completions.create(
            model=MODEL, messages=msg, max_tokens=5, extra_body={"quell": {"policies": ["planets"]}}
        )
    with pytest.raises(openai.BadRequestError) as info:
        acme.chat.completions.create(
            model=MODEL, messages=msg, max_tokens=5, extra_headers={"x-quell-policies": "nope"}
        )
    assert "nope" in info.value.body["message"]


def test_suppressions_reach_audit_and_metrics(ops: Ops) -> None:
    acme = openai.OpenAI(base_url=f"{ops.base}/v1", api_key="sk-acme-0001", max_retries=0)
    raw = acme.completions.with_raw_response.create(model=MODEL, prompt="Mars, Mars, Mars, Mars, Mars,", max_tokens=12,
                                                    temperature=0, extra_body={"quell": {"policies": ["planets"]}})  # fmt: skip
    text = raw.parse().choices[0].text
    assert "Mars" not in text and "[redacted]" in text, text  # the model repeats it; the backstop redacts it
    request_id = raw.headers["x-request-id"]

    def events() -> list[dict]:
        resp = httpx.get(f"{ops.base}/admin/audit", params={"policy": "planets", "since": "10m"}, headers=ops.admin)
        return [e for e in resp.json()["data"] if e["request_id"] == request_id]

    _wait_for(lambda: bool(events()))
    event = events()[0]
    assert event["tenant"] == "acme" and event["target"] == "mars" and event["layer"] == "surface"
    assert event["action"] == "redact" and event["policy"].startswith("planets@") and "Mars" in event["snippet"]
    metrics = httpx.get(f"{ops.base}/metrics").text
    assert 'quell_suppressions_total{action="redact",layer="surface",policy="planets",target="mars"}' in metrics
    assert 'quell_requests_total{route="/v1/completions",status="200"}' in metrics
    bad = httpx.get(f"{ops.base}/admin/audit", params={"since": "yesterday-ish"}, headers=ops.admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"


def test_open_gateway_refuses_non_loopback() -> None:
    res = subprocess.run([QUELL, "serve", "--host", "0.0.0.0", "--port", str(free_port())], capture_output=True, check=False,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/root"})  # fmt: skip
    assert res.returncode == 2 and "without client keys" in res.stderr.replace("\n", " ")
