"""OpenAI-style error objects, and the handlers that make every failure one of them (never a stack trace)."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("quell")


class APIError(Exception):
    """An error the client should see, in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict | None = None):  # fmt: skip
        super().__init__(message)
        self.extra = extra or {}
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.extra}}  # fmt: skip

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def backend_unavailable(detail: str) -> APIError:
    return APIError(503, f"the model backend is unavailable: {detail}", type="service_unavailable",
                    code="backend_unavailable", headers={"Retry-After": "5"})  # fmt: skip


def _is_type_tag(part: object) -> bool:
    """pydantic puts the union member it tried into `loc` ("constrained-str", "list[str]"): not a field name."""
    text = str(part)
    return "[" in text or text.startswith(("constrained-", "function-")) or text in ("str", "int", "float", "bool")


def _loc_to_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header") and not _is_type_tag(p)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return APIError(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                            code="invalid_json").response()  # fmt: skip
        param = _loc_to_param(tuple(first.get("loc", ())))
        msg = first["msg"]
        if first.get("type") == "missing":
            msg = "field required"
        message = f"{param}: {msg}" if param else msg
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        param = "body" if exc.status_code == 413 else None
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return APIError(
            exc.status_code, detail, code=code, param=param, headers=getattr(exc, "headers", None)
        ).response()

    @app.exception_handler(RecursionError)
    async def _too_deep(_: Request, exc: RecursionError) -> JSONResponse:
        return APIError(400, "request body is nested too deeply to parse", param="body", code="invalid_json").response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, "internal error in the gateway; the operator's log has the details",
                        type="server_error", code="internal_error").response()  # fmt: skip
