"""Every response ends well-formed: a stream that cannot finish ends with an error event in OpenAI's shape and
`data: [DONE]`, never a hang, a truncated body or a plain-text 500.

Two causes, one place:
- the stream fails (the backend dies mid-stream, sends nothing for `QUELL_BACKEND_TIMEOUT_S`, or a layer raises):
  the exception leaves the response's body iterator and `StreamEnds` writes the ending instead of letting the server
  cut the connection;
- the gateway stops (SIGTERM, Ctrl-C): `Drain.begin()` gives requests in flight `QUELL_SHUTDOWN_GRACE_S` to finish,
  then cancels the ones still running; streams get the ending, requests that had not answered yet get a 503.

`StreamEnds` is a plain ASGI middleware (Starlette's exception handlers cannot answer once a response has started).
"""

from __future__ import annotations

import asyncio
import json
import logging

import anyio
import httpx
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import APIError
from service.metrics import Metrics

log = logging.getLogger("quell.stream")

DONE = b"data: [DONE]\n\n"


class Drain:
    """The gateway is stopping: requests in flight get `grace_s` seconds, then the ones left are cancelled."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self._scopes: set[anyio.CancelScope] = set()
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        """Called by the server when it stops accepting connections (from the event loop)."""
        if self.draining:
            return
        self.draining = True
        if self._scopes:
            log.info("shutting down: %d request(s) in flight get %.0f s to finish (QUELL_SHUTDOWN_GRACE_S)",
                     len(self._scopes), self.grace_s)  # fmt: skip
        self._timer = asyncio.get_running_loop().call_later(self.grace_s, self._expire)

    def _expire(self) -> None:
        if self._scopes:
            log.warning("shutdown grace of %.0f s over: ending %d request(s) still in flight", self.grace_s,
                        len(self._scopes))  # fmt: skip
        for scope in list(self._scopes):
            scope.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._scopes)


class DrainingServer(uvicorn.Server):
    """uvicorn, telling the `Drain` when it stops accepting connections (SIGTERM, Ctrl-C). Give it a
    `timeout_graceful_shutdown` a little longer than the drain's grace: uvicorn's own cut is only the backstop."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    async def shutdown(self, sockets=None) -> None:
        self.drain.begin()
        await super().shutdown(sockets)


def error_event(error: APIError) -> bytes:
    """The last events of a stream that could not finish: the error object, then [DONE]."""
    return f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\n".encode() + DONE


def shutdown_error() -> APIError:
    return APIError(503, "the gateway is shutting down; retry on another replica", type="service_unavailable",
                    code="server_shutting_down", headers={"Retry-After": "1"})  # fmt: skip


def describe_failure(exc: BaseException) -> tuple[APIError, str]:
    """The client's error object and the metrics cause for an exception that ended a started stream."""
    cause = exc.__cause__ if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, APIError) else exc
    if isinstance(cause, APIError):  # raised mid-stream (Starlette re-raises it as a RuntimeError once started)
        return cause, "internal"
    if isinstance(cause, httpx.TimeoutException):
        return APIError(504, "the model backend sent nothing for too long (QUELL_BACKEND_TIMEOUT_S); this response "
                        "ends here", type="timeout", code="backend_timeout"), "backend_timeout"  # fmt: skip
    if isinstance(cause, httpx.TransportError):
        return APIError(502, f"the model backend stopped in the middle of this response ({type(cause).__name__}); "
                        "the text so far is all there is", type="service_unavailable",
                        code="backend_disconnected"), "backend_lost"  # fmt: skip
    return APIError(500, "internal error in the gateway; the operator's log has the details", type="server_error",
                    code="internal_error"), "internal"  # fmt: skip


def _single(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class StreamEnds:
    def __init__(self, app: ASGIApp, *, drain: Drain, metrics: Metrics) -> None:
        self.app = app
        self.drain = drain
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = ended = stream = False

        async def tracked_send(message: Message) -> None:
            nonlocal started, ended, stream
            if message["type"] == "http.response.start":
                started = True
                stream = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                             for k, v in message.get("headers", []))  # fmt: skip
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        failure: BaseException | None = None
        with anyio.CancelScope() as cancel:
            self.drain._scopes.add(cancel)
            try:
                await self.app(scope, receive, tracked_send)
            except Exception as exc:  # noqa: BLE001 - decided below: re-raised unless a started stream can end well
                failure = _single(exc)
            finally:
                self.drain._scopes.discard(cancel)
        if cancel.cancelled_caught:  # the shutdown grace ran out
            await self._end(send, started, ended, stream, shutdown_error(), "shutdown")
            return
        if failure is None:
            return
        if not (started and stream) or ended:
            raise failure
        error, cause = describe_failure(failure)
        if cause == "internal" and not isinstance(failure, RuntimeError):
            log.error("stream on %s failed", scope.get("path"), exc_info=failure)
        else:
            log.warning("stream on %s ended early (%s): %s", scope.get("path"), cause, failure)
        await self._end(send, started, ended, stream, error, cause)

    async def _end(self, send: Send, started: bool, ended: bool, stream: bool, error: APIError, cause: str) -> None:
        if ended:
            return
        self.metrics.streams_cut.labels(cause=cause).inc()
        try:
            if not started:
                body = json.dumps(error.body()).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
                await send({"type": "http.response.start", "status": error.status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            elif stream:
                await send({"type": "http.response.body", "body": error_event(error)})
            else:
                await send({"type": "http.response.body", "body": b""})
        except OSError:
            pass  # the client is gone already
