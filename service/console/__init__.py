"""The operator console under /console: server-rendered pages (Jinja2) over the gateway's own registry, audit store
and policy history, behind the operator token (see `session`). `mount(app)` adds its routes, static files and the
handlers that turn a missing session into a login redirect (pages) or a 401 (anything else)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from service.console import audit_page, evals, policies
from service.console.session import (
    COOKIE,
    LoginRequired,
    SessionDep,
    WriteRefused,
    cookie_options,
    current,
    login_url,  # fmt: skip
    new_cookie,
    safe_next,
    same_origin,
    token_matches,
)
from service.console.web import HERE, page

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def home(_: SessionDep) -> RedirectResponse:
    return RedirectResponse("/console/policies", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    enabled = request.app.state.gateway.settings.admin_token is not None
    return page(request, "login.html", session=None, next=safe_next(next), error=None, enabled=enabled)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "") -> Response:
    enabled = request.app.state.gateway.settings.admin_token is not None
    if not same_origin(request):  # login CSRF: a foreign page must not sign this browser in
        return page(request, "login.html", 403, session=None, next=safe_next(next), enabled=enabled,
                    error="cross-origin sign-in refused")  # fmt: skip
    if not token_matches(request, token):
        return page(request, "login.html", 401, session=None, next=safe_next(next), enabled=enabled,
                    error="wrong operator token" if enabled else "QUELL_ADMIN_TOKEN is unset: the console is off")  # fmt: skip
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(COOKIE, new_cookie(request), **cookie_options(request))  # type: ignore[arg-type]
    return response


@router.post("/logout")
async def logout(request: Request) -> RedirectResponse:
    if same_origin(request):  # a foreign page may not sign the operator out either
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
        return response
    return RedirectResponse("/console/policies", status_code=303)


router.include_router(policies.router)
router.include_router(audit_page.router)
router.include_router(evals.router)


def _wants_page(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _: LoginRequired) -> Response:
        if _wants_page(request):
            return RedirectResponse(login_url(request), status_code=303)
        if "text/html" in request.headers.get("accept", ""):  # a form sent after the session ended: say so
            enabled = request.app.state.gateway.settings.admin_token is not None
            return page(request, "login.html", 401, session=None, next=safe_next(request.headers.get("referer") and
                        urlsplit(request.headers["referer"]).path), enabled=enabled,
                        error="your session ended: sign in again (what you sent was not saved)")  # fmt: skip
        return JSONResponse({"error": "sign in to the console first (/console/login)"}, status_code=401)

    @app.exception_handler(WriteRefused)
    async def _refused(request: Request, exc: WriteRefused) -> Response:
        try:
            session = current(request)
        except LoginRequired:
            session = None
        if "text/html" in request.headers.get("accept", ""):
            return page(request, "message.html", 403, session=session, title="Refused", message=str(exc))
        return PlainTextResponse(str(exc), status_code=403)
