"""The operator console in a real browser: headless Chromium from the Debian package (`make browser-install`),
driven by Playwright pointed at that executable (no browser download), against the in-process gateway served by
uvicorn (`serve_gateway`, replayed vLLM answers).

One operator's day: sign in, break a policy and see the error at its line, try a draft against the live version,
review the diff, save, see the new version answer a request, roll back, see the old version live again. Then: every
page and form refuses a browser without the session, and a form posted from another site is refused.

With QUELL_CONSOLE_SCREENSHOTS=docs/console each page's screenshot is also written there (PNG).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import spider_policy
from tests.service.replay import load

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")
CHROMIUM = Path(os.environ.get("QUELL_CHROMIUM", "/usr/lib/chromium/chromium"))
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason=f"no Chromium at {CHROMIUM}: `make browser-install` (apt-get install chromium)")  # fmt: skip

TOKEN = "operator-token-123"
CHAT = load("chat_spider")["exchanges"][0]["request"]["json"]


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path: Path):
    folder = tmp_path / "shots"
    folder.mkdir()
    keep = os.environ.get("QUELL_CONSOLE_SCREENSHOTS")

    def shoot(page, name: str) -> None:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)

    return shoot


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    run = tmp_path / "eval" / "spider-2026-12-01"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(
        '{"meta": {"policy": "spider-redact@4b0c8a1f2e3d", "date": "2026-12-01 10:00 UTC"}}'
    )
    (run / "report.html").write_text("<h1>Quell eval report</h1><p>leak rate and over-blocking per layer</p>")
    return tmp_path / "eval"


def sign_in(page, base: str) -> None:
    page.goto(f"{base}/console/policies")
    assert "/console/login" in page.url
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/console/policies")


def test_operator_edits_saves_and_rolls_back(serve_gateway, browser, shots, policy_dir, eval_dir) -> None:
    with serve_gateway("chat_spider", admin_token=TOKEN, eval_dir=eval_dir) as (base, _):
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(f"{base}/console/policies")
        shots(page, "login")
        sign_in(page, base)
        shots(page, "policies")
        page.click("a[href='/console/policies/spider-redact']")
        old = page.inner_text("#live-ref").split("@")[1]

        live = (policy_dir / "spider-redact.yaml").read_text()
        bad = live.replace("on_surface: redact", "on_surface: explode")
        line = next(n for n, text in enumerate(bad.splitlines(), 1) if "explode" in text)
        page.fill("#yaml", bad)  # validation as you type: the gutter marks the line, the list says why
        page.wait_for_selector(f"#gutter .ln.bad[data-line='{line}']")
        assert page.locator("#gutter .ln.bad").count() == 1
        assert f"spider-redact.yaml:{line}: targets[0].on_surface" in page.inner_text("#errors")
        shots(page, "editor-error")

        page.click("button[type=submit]:has-text('Review changes')")  # an invalid draft cannot be saved
        assert page.locator("#save").count() == 0 and "explode" in page.input_value("#yaml")

        draft = spider_policy("spider-redact", "refuse", default=True).replace("Spidey, ", "Spidey, Web Slinger, ")
        page.fill("#yaml", draft)
        page.wait_for_selector("#validity.ok")
        page.fill("#try-text", "Spidey is the Web Slinger.")
        page.click("#try-button")
        page.wait_for_selector("#try-results")
        assert page.locator("[data-label=live] mark").count() == 1
        assert page.locator("[data-label=draft] mark").count() == 2
        shots(page, "try")

        page.click("button[type=submit]:has-text('Review changes')")
        assert "+    on_surface: refuse" in page.inner_text("#diff")
        shots(page, "review-diff")
        page.click("#save")
        page.wait_for_selector("#saved")
        new = page.inner_text("#live-ref").split("@")[1]
        assert new != old and new in page.inner_text("#saved")

        answer = httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=30)
        assert f"spider-redact@{new}" in answer.headers["x-quell-policies"]
        assert answer.json()["choices"][0]["message"]["content"] == "Sorry, not that topic."

        page.click(f"button.rollback[data-version='{old}']")
        page.wait_for_selector("#saved")
        assert page.inner_text("#live-ref") == f"spider-redact@{old}" and "Rolled back" in page.inner_text("#saved")
        shots(page, "history")
        again = httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=30)
        assert f"spider-redact@{old}" in again.headers["x-quell-policies"]
        assert again.json()["choices"][0]["message"]["content"] != "Sorry, not that topic."

        page.click("a[href='/console/audit']")
        page.wait_for_selector("#chart")
        assert page.locator(f"#decisions a[href$='/versions/{new}']").count() >= 1
        shots(page, "audit")
        page.click("a[href='/console/evals']")
        assert "spider-redact@4b0c8a1f2e3d" in page.inner_text("#evals")
        shots(page, "evals")
        page.click("text=open report")
        assert "Quell eval report" in page.frame_locator("#report").locator("h1").inner_text()
        shots(page, "eval-report")


PAGES = ["/console/policies", "/console/policies/spider-redact", "/console/audit", "/console/evals",
         "/console/evals/spider-2026-12-01", "/console/evals/spider-2026-12-01/report"]  # fmt: skip
FORMS = ["review", "save", "try", "rollback"]


def test_nothing_is_reachable_without_signing_in(serve_gateway, browser, eval_dir) -> None:
    with serve_gateway(admin_token=TOKEN, eval_dir=eval_dir) as (base, _):
        context = browser.new_context()
        page = context.new_page()
        for path in PAGES:
            page.goto(base + path)
            assert "/console/login" in page.url, path
            assert "Quell eval report" not in page.content() and "spider-redact" not in page.inner_text("main")
        for form in FORMS:
            resp = context.request.post(f"{base}/console/policies/spider-redact/{form}", headers={"origin": base},
                                        form={"yaml": "id: spider-redact", "base_version": "x", "version": "x"})  # fmt: skip
            assert resp.status == 401, form
        resp = context.request.post(f"{base}/console/api/validate", data={"policy_id": "x", "yaml": "id: x"},
                                    headers={"origin": base})  # fmt: skip
        assert resp.status == 401


def test_a_form_posted_from_another_site_is_refused(serve_gateway, browser, policy_dir) -> None:
    before = (policy_dir / "spider-redact.yaml").read_text()
    evil = spider_policy("spider-redact", "redact", default=True).replace("terms: [", "terms: [Nothing, ")
    with serve_gateway(admin_token=TOKEN) as (base, _):
        page = browser.new_page()
        sign_in(page, base)
        page.goto(f"{base}/console/policies/spider-redact")
        version = page.inner_text("#live-ref").split("@")[1]
        csrf = page.get_attribute("#csrf", "value")  # even a stolen CSRF token does not help another site
        attacker = f"""<form id=f method=post action="{base}/console/policies/spider-redact/save">
            <input name=csrf_token value="{csrf}"><input name=base_version value="{version}">
            <textarea name=yaml>{evil}</textarea></form>"""
        page.route("http://attacker.test/", lambda route: route.fulfill(status=200, content_type="text/html",
                                                                         body=attacker))  # fmt: skip
        page.goto("http://attacker.test/")
        with page.expect_response(re.compile(r".*/console/policies/spider-redact/save$")) as answer:
            page.eval_on_selector("#f", "f => f.submit()")
        assert answer.value.status in (401, 403)  # SameSite=Strict keeps the cookie home; the Origin check too
        assert (policy_dir / "spider-redact.yaml").read_text() == before
