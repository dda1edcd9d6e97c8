"""Console sign-in: the operator token is checked once at the login form, then a signed session cookie stands for it.

The cookie (HttpOnly, SameSite=Strict, Path=/console, Secure over HTTPS) holds the operator's id (a hash of the token,
never the token) and a per-session CSRF token, signed with a key derived from the operator token (itsdangerous): a
changed QUELL_ADMIN_TOKEN invalidates every session at once, and replicas sharing the token accept each other's
sessions. Every write also needs the CSRF token (form field or X-CSRF-Token header) and a same-origin Origin (or,
without one, Referer) header.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from service.policy_history import operator_id

COOKIE = "quell_console"
MAX_AGE_S = 12 * 3600
"""A session lasts 12 hours, then the operator signs in again."""


@dataclass(frozen=True)
class ConsoleSession:
    operator: str  # operator_id(token): what history shows as "by"
    csrf: str


class LoginRequired(Exception):
    """No valid session: a page redirects to the login form, anything else answers 401."""


class WriteRefused(Exception):
    """A write without the session's CSRF token, or from another origin: 403."""


def _configured_token(request: Request) -> str | None:
    token = request.app.state.gateway.settings.admin_token
    return token.get_secret_value() if token else None


def _serializer(token: str) -> URLSafeTimedSerializer:
    key = hashlib.sha256(b"quell-console-session:" + token.encode()).hexdigest()
    return URLSafeTimedSerializer(key, salt="quell-console")


def token_matches(request: Request, given: str) -> bool:
    configured = _configured_token(request)
    expected = hashlib.sha256((configured or "").encode()).digest()
    return hmac.compare_digest(expected, hashlib.sha256(given.encode()).digest()) and bool(configured and given)


def new_cookie(request: Request) -> str:
    token = _configured_token(request)
    if token is None:
        raise LoginRequired()
    return _serializer(token).dumps({"op": operator_id(token), "csrf": secrets.token_urlsafe(32)})


def cookie_options(request: Request) -> dict[str, object]:
    return {"httponly": True, "samesite": "strict", "path": "/console", "max_age": MAX_AGE_S,
            "secure": request.url.scheme == "https"}  # fmt: skip


def current(request: Request) -> ConsoleSession:
    token = _configured_token(request)
    raw = request.cookies.get(COOKIE)
    if token is None or not raw:
        raise LoginRequired()
    try:
        data = _serializer(token).loads(raw, max_age=MAX_AGE_S)
    except BadSignature:  # also expired (SignatureExpired is a BadSignature)
        raise LoginRequired() from None
    if not isinstance(data, dict) or data.get("op") != operator_id(token) or not isinstance(data.get("csrf"), str):
        raise LoginRequired()
    return ConsoleSession(data["op"], data["csrf"])


def same_origin(request: Request) -> bool:
    """The request came from a page of this console: its Origin (or, without one, its Referer) names this host."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc == host
    referer = request.headers.get("referer")
    return referer is not None and urlsplit(referer).netloc == host


async def writer(request: Request) -> ConsoleSession:
    """A signed-in operator whose write carries this session's CSRF token and comes from this origin."""
    session = current(request)
    if not same_origin(request):
        raise WriteRefused("cross-origin request refused (Origin/Referer is not this console)")
    given = request.headers.get("x-csrf-token")
    if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):  # fmt: skip
        value = (await request.form()).get("csrf_token")
        given = value if isinstance(value, str) else None
    if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise WriteRefused("missing or wrong CSRF token: reload the page and try again")
    return session


def login_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/console/login?next={quote(target, safe='')}"


def safe_next(value: str | None) -> str:
    """Where to go after login: only a console path on this host (no open redirect)."""
    if value and value.startswith("/console/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/console/policies"


SessionDep = Annotated[ConsoleSession, Depends(current)]
WriterDep = Annotated[ConsoleSession, Depends(writer)]
