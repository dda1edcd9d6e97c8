"""The operator console in-process (create_app over the replay backend): sign-in, CSRF, the policy editor's save
path (validation, diff, conflicts), try it, history and rollback, audit filters, eval runs."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import spider_policy
from tests.service.replay import load

TOKEN = "operator-token-123"
ORIGIN = {"origin": "http://testserver"}
CHAT = load("chat_spider")["exchanges"][0]["request"]["json"]  # the request as recorded: the replay answers it
PAGES = ["/console", "/console/policies", "/console/policies/spider-redact", "/console/audit", "/console/evals",
         "/console/policies/spider-redact/versions/000000000000", "/console/evals/run1",
         "/console/evals/run1/report"]  # fmt: skip
WRITES = ["/console/policies/spider-redact/review", "/console/policies/spider-redact/save",
          "/console/policies/spider-redact/try", "/console/policies/spider-redact/rollback"]  # fmt: skip


def login(client: TestClient) -> str:
    resp = client.post("/console/login", data={"token": TOKEN, "next": "/console/policies"}, headers=ORIGIN,
                       follow_redirects=False)  # fmt: skip
    assert resp.status_code == 303, resp.text
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    return csrf(client, "/console/policies/spider-redact")


def csrf(client: TestClient, path: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert found, "no CSRF token on the page"
    return found[1]


def live_version(client: TestClient, policy_id: str) -> str:
    return client.get(f"/admin/policies/{policy_id}", headers={"Authorization": f"Bearer {TOKEN}"}).json()["version"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_to_login_without_a_session(gateway_for, path: str) -> None:
    with gateway_for(admin_token=TOKEN) as (client, _):
        resp = client.get(path, headers={"accept": "text/html"}, follow_redirects=False)
        fragment = client.get(path, follow_redirects=False)  # not a page request (fetch, curl): 401, no redirect
    assert resp.status_code == 303 and resp.headers["location"].startswith("/console/login?next=")
    assert fragment.status_code == 401


@pytest.mark.parametrize("path", [*WRITES, "/console/api/validate"])
def test_writes_refuse_without_a_session(gateway_for, path: str) -> None:
    with gateway_for(admin_token=TOKEN) as (client, _):
        resp = client.post(path, data={"yaml": "id: x", "base_version": "x", "version": "x"}, headers=ORIGIN)
    assert resp.status_code == 401


def test_a_form_sent_after_the_session_ended_offers_the_sign_in(gateway_for, policy_dir) -> None:
    before = (policy_dir / "spider-redact.yaml").read_text()
    with gateway_for(admin_token=TOKEN) as (client, _):
        resp = client.post("/console/policies/spider-redact/save", data={"yaml": "id: x", "base_version": "x"},
                           headers={**ORIGIN, "accept": "text/html", "referer": "http://testserver/console/policies/"
                                    "spider-redact"})  # fmt: skip
    assert resp.status_code == 401 and "session ended" in resp.text
    assert 'name="next" value="/console/policies/spider-redact"' in resp.text
    assert (policy_dir / "spider-redact.yaml").read_text() == before


def test_wrong_token_and_unset_token_are_refused(gateway_for) -> None:
    with gateway_for(admin_token=TOKEN) as (client, _):
        wrong = client.post("/console/login", data={"token": "nope-nope"}, headers=ORIGIN, follow_redirects=False)
        client.cookies.set("quell_console", "e30.forged.sig", path="/console")
        forged = client.get("/console/policies", follow_redirects=False)
    with gateway_for() as (client, _):
        unset = client.post("/console/login", data={"token": ""}, headers=ORIGIN, follow_redirects=False)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert forged.status_code == 401
    assert unset.status_code == 401 and "QUELL_ADMIN_TOKEN is unset" in unset.text


@pytest.mark.parametrize("path", WRITES)
def test_writes_need_the_csrf_token_and_this_origin(gateway_for, policy_dir, path: str) -> None:
    before = (policy_dir / "spider-redact.yaml").read_text()
    draft = spider_policy("spider-redact", "refuse", default=True)
    with gateway_for(admin_token=TOKEN) as (client, _):
        token = login(client)
        version = live_version(client, "spider-redact")
        form = {"yaml": draft, "base_version": version, "version": version, "try_text": "Spiderman"}
        no_token = client.post(path, data=form, headers=ORIGIN)
        wrong_token = client.post(path, data={**form, "csrf_token": "x" * 43}, headers=ORIGIN)
        cross_site = client.post(path, data={**form, "csrf_token": token}, headers={"origin": "https://evil.example"})
        no_origin = client.post(path, data={**form, "csrf_token": token})
    assert [r.status_code for r in (no_token, wrong_token, cross_site, no_origin)] == [403] * 4
    assert (policy_dir / "spider-redact.yaml").read_text() == before


def test_cross_site_login_is_refused(gateway_for) -> None:
    with gateway_for(admin_token=TOKEN) as (client, _):
        resp = client.post("/console/login", data={"token": TOKEN}, headers={"origin": "https://evil.example"},
                           follow_redirects=False)  # fmt: skip
    assert resp.status_code == 403 and "set-cookie" not in resp.headers


def test_login_redirect_stays_on_the_console(gateway_for) -> None:
    with gateway_for(admin_token=TOKEN) as (client, _):
        resp = client.post("/console/login", data={"token": TOKEN, "next": "//evil.example/x"}, headers=ORIGIN,
                           follow_redirects=False)  # fmt: skip
    assert resp.headers["location"] == "/console/policies"


def test_list_shows_versions_status_and_default(gateway_for, policy_dir) -> None:
    (policy_dir / "broken.yaml").write_text("id: broken\ntargets: nope\n")
    with gateway_for(admin_token=TOKEN) as (client, _):
        login(client)
        html = client.get("/console/policies").text
        version = live_version(client, "spider-redact")
    assert version in html and "spider-refuse" in html and "broken.yaml" in html and "targets" in html
    assert "<td>policy folder</td>" in html  # who made the live version live


def test_invalid_draft_is_not_saved_and_names_its_line(gateway_for, policy_dir) -> None:
    before = (policy_dir / "spider-redact.yaml").read_text()
    bad = before.replace("on_surface: redact", "on_surface: explode")
    line = next(n for n, text in enumerate(bad.splitlines(), 1) if "explode" in text)
    with gateway_for(admin_token=TOKEN) as (client, _):
        token = login(client)
        version = live_version(client, "spider-redact")
        check = client.post("/console/api/validate", json={"policy_id": "spider-redact", "yaml": bad},
                            headers={**ORIGIN, "x-csrf-token": token}).json()  # fmt: skip
        resp = client.post("/console/policies/spider-redact/save", headers=ORIGIN,
                           data={"yaml": bad, "base_version": version, "csrf_token": token})  # fmt: skip
        still = live_version(client, "spider-redact")
    assert not check["valid"] and check["errors"][0]["line"] == line and "on_surface" in check["errors"][0]["field"]
    assert (
        resp.status_code == 422
        and "explode" in resp.text
        and f"spider-redact.yaml:{line}: targets[0].on_surface" in resp.text
    )  # draft kept
    assert f'class="ln bad" data-line="{line}" title="targets[0].on_surface' in resp.text  # marked beside the line
    assert still == version and (policy_dir / "spider-redact.yaml").read_text() == before


def test_review_shows_the_diff_then_save_makes_it_live(gateway_for) -> None:
    draft = spider_policy("spider-redact", "refuse", default=True)
    with gateway_for("chat_spider", admin_token=TOKEN) as (client, _):
        token = login(client)
        old = live_version(client, "spider-redact")
        review = client.post("/console/policies/spider-redact/review", headers=ORIGIN,
                             data={"yaml": draft, "base_version": old, "csrf_token": token})  # fmt: skip
        saved = client.post("/console/policies/spider-redact/save", headers=ORIGIN, follow_redirects=False,
                            data={"yaml": draft, "base_version": old, "csrf_token": token})  # fmt: skip
        new = live_version(client, "spider-redact")
        answer = client.post("/v1/chat/completions", json=CHAT)
    assert (
        review.status_code == 200
        and "-    on_surface: redact" in review.text
        and "+    on_surface: refuse" in review.text
    )
    assert saved.status_code == 303 and saved.headers["location"].endswith(f"saved={new}") and new != old
    assert f"spider-redact@{new}" in answer.headers["x-quell-policies"]
    assert answer.json()["choices"][0]["message"]["content"] == "Sorry, not that topic."


def test_second_save_from_the_same_version_is_a_conflict_naming_it(gateway_for, policy_dir) -> None:
    first = spider_policy("spider-redact", "refuse", default=True)
    second = spider_policy("spider-redact", "stop", default=True)
    with gateway_for(admin_token=TOKEN) as (client, _):
        token = login(client)
        base = live_version(client, "spider-redact")
        one = client.post("/console/policies/spider-redact/save", headers=ORIGIN, follow_redirects=False,
                          data={"yaml": first, "base_version": base, "csrf_token": token})  # fmt: skip
        live = live_version(client, "spider-redact")
        two = client.post("/console/policies/spider-redact/save", headers=ORIGIN,
                          data={"yaml": second, "base_version": base, "csrf_token": token})  # fmt: skip
    assert one.status_code == 303
    assert two.status_code == 409 and base in two.text and live in two.text and "on_surface: stop" in two.text
    assert (policy_dir / "spider-redact.yaml").read_text() == first


def test_try_shows_live_and_draft_detections(gateway_for) -> None:
    draft = spider_policy("spider-redact", "redact", default=True).replace("Spidey, ", "Spidey, Web Slinger, ")
    with gateway_for(admin_token=TOKEN) as (client, _):
        token = login(client)
        base = live_version(client, "spider-redact")
        resp = client.post("/console/policies/spider-redact/try", headers=ORIGIN,
                           data={"yaml": draft, "base_version": base, "csrf_token": token,
                                 "try_text": "Spidey is the Web Slinger."})  # fmt: skip
        after = live_version(client, "spider-redact")
    live, drafted = resp.text.split('data-label="draft"')
    assert resp.status_code == 200
    assert live.count("<mark") == 1 and "1 detection" in live and ">Spidey</mark>" in live
    assert drafted.count("<mark") == 2 and ">Web Slinger</mark>" in drafted
    assert after == base  # trying a draft never makes it live


def test_history_keeps_every_live_version_and_rollback_restores_it(gateway_for, policy_dir) -> None:
    draft = spider_policy("spider-redact", "refuse", default=True)
    original = (policy_dir / "spider-redact.yaml").read_text()
    with gateway_for(admin_token=TOKEN) as (client, _):
        token = login(client)
        old = live_version(client, "spider-redact")
        client.post("/console/policies/spider-redact/save", headers=ORIGIN,
                    data={"yaml": draft, "base_version": old, "csrf_token": token})  # fmt: skip
        new = live_version(client, "spider-redact")
        page = client.get("/console/policies/spider-redact").text
        stored = client.get(f"/console/policies/spider-redact/versions/{old}").text
        back = client.post("/console/policies/spider-redact/rollback", headers=ORIGIN, follow_redirects=False,
                           data={"version": old, "base_version": new, "csrf_token": token})  # fmt: skip
        stale = client.post("/console/policies/spider-redact/rollback", headers=ORIGIN,
                            data={"version": new, "base_version": new, "csrf_token": token})  # fmt: skip
        after = live_version(client, "spider-redact")
        history = client.get("/console/policies/spider-redact").text
    rows = re.findall(r"<td><a href=\"/console/policies/spider-redact/versions/(\w+)\">", history)
    assert old in page and new in page and "policy folder" in page and "operator:" in page
    assert TOKEN not in page
    assert "on_surface: redact" in stored
    assert back.status_code == 303 and after == old
    assert (policy_dir / "spider-redact.yaml").read_text() == original
    assert stale.status_code == 409 and new in stale.text  # a rollback based on a version no longer live
    assert rows[:3] == [old, new, old]


def test_audit_page_filters_and_links_to_the_policy_version(gateway_for) -> None:
    with gateway_for("chat_spider", admin_token=TOKEN) as (client, _):
        login(client)
        client.post("/v1/chat/completions", json=CHAT)
        version = live_version(client, "spider-redact")
        deadline = 200
        while not client.get("/admin/audit", headers={"Authorization": f"Bearer {TOKEN}"}).json()["data"]:
            deadline -= 1
            assert deadline, "the audit event was never written"
        shown = client.get("/console/audit?layer=surface&policy=spider-redact&since=1h")
        other = client.get("/console/audit?layer=classifier")
        bad = client.get("/console/audit?since=yesterday")
    assert shown.status_code == 200 and f"/console/policies/spider-redact/versions/{version}" in shown.text
    assert 'id="chart"' in shown.text and "data:image/svg+xml;base64," in shown.text
    assert "No decisions match" in other.text
    assert bad.status_code == 400 and "yesterday" in bad.text


def test_eval_runs_are_listed_and_opened(gateway_for, tmp_path) -> None:
    root = tmp_path / "eval"
    (root / "run1").mkdir(parents=True)
    (root / "run1" / "summary.json").write_text('{"meta": {"policy": "spider-redact@abc", "date": "2026-12-01"}}')
    (root / "run1" / "report.html").write_text("<h1>Quell eval report</h1>")
    (root / "half").mkdir()
    (root / "half" / "summary.json").write_text("{not json")
    with gateway_for(admin_token=TOKEN, eval_dir=root) as (client, _):
        login(client)
        listing = client.get("/console/evals").text
        framed = client.get("/console/evals/run1")
        report = client.get("/console/evals/run1/report")
        escape = client.get("/console/evals/..%2F..%2Fetc/report")
    assert "spider-redact@abc" in listing and "half" in listing and "summary.json" in listing
    assert framed.status_code == 200 and 'src="/console/evals/run1/report"' in framed.text
    assert report.status_code == 200 and "Quell eval report" in report.text
    assert "sandbox" in report.headers["content-security-policy"]
    assert escape.status_code == 404


def test_an_admin_put_is_credited_to_the_operator_in_history(gateway_for) -> None:
    draft = spider_policy("spider-redact", "stop", default=True)
    with gateway_for(admin_token=TOKEN) as (client, _):
        login(client)
        put = client.put("/admin/policies/spider-redact", content=draft,
                         headers={"Authorization": f"Bearer {TOKEN}", "content-type": "application/yaml"})  # fmt: skip
        page = client.get("/console/policies/spider-redact").text
    signed_in_as = re.search(r"signed in as (operator:\w+)", page)[1]
    newest = re.search(r"<td>(operator:\w+|policy folder)</td>", page)[1]
    assert put.status_code == 200 and newest == signed_in_as
