"""Prometheus metrics: one `Metrics` object per gateway (built in the lifespan, passed around), with its own registry.

Nothing here is a module global: two gateways in one process (tests) never share a counter. Label values stay
bounded: policies by id (not id@version, which changes on every edit), routes by their template, never a raw path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from filters.decision import Decision

LAYER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds a layer adds to a request: from sub-millisecond (surface matcher) to seconds (semantic on CPU)."""
BACKEND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds for a whole backend call: generation takes seconds to minutes."""
UNMATCHED_ROUTE = "unmatched"
AUDIT_DROP_REASONS = ("queue_full", "closed", "shutdown", "rejected")
BACKEND_RESTART_CAUSES = ("exited", "start_failed", "port_in_use", "not_ours")
STREAM_CUT_CAUSES = ("backend_lost", "backend_timeout", "shutdown", "internal")


class Metrics:
    """Every Quell collector, registered in `self.registry` (a fresh `CollectorRegistry` unless one is given)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:  # CPU, memory, open fds of this process, and the Python version
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.requests = Counter(
            "quell_requests", "HTTP requests answered, by route template and status code.",
            ["route", "status"], registry=r)  # fmt: skip
        self.suppressions = Counter(
            "quell_suppressions", "Suppression decisions, by policy id, target, layer and action.",
            ["policy", "target", "layer", "action"], registry=r)  # fmt: skip
        self.layer_latency = Histogram(
            "quell_layer_latency_seconds", "Time a suppression layer spent on one request.",
            ["layer"], buckets=LAYER_BUCKETS, registry=r)  # fmt: skip
        self.backend_latency = Histogram(
            "quell_backend_latency_seconds", "Backend call duration, until the response (JSON) or its end (SSE).",
            ["route"], buckets=BACKEND_BUCKETS, registry=r)  # fmt: skip
        self.policy_reloads = Counter(
            "quell_policy_reloads", "Policy reloads, by result (success or failure).", ["result"], registry=r
        )
        self.audit_queue_depth = Gauge("quell_audit_queue_depth", "Audit events waiting to be written.", registry=r)
        self.audit_dropped = Counter(
            "quell_audit_dropped", "Audit events lost, by reason (queue_full, closed, shutdown, rejected).",
            ["reason"], registry=r)  # fmt: skip
        for reason in AUDIT_DROP_REASONS:  # series exist at 0 from the start, so alerts on increase() work
            self.audit_dropped.labels(reason=reason)
        for result in ("success", "failure"):
            self.policy_reloads.labels(result=result)
        self.audit_write_failures = Counter(
            "quell_audit_write_failures", "Failed attempts to write a batch of audit events (retried).", registry=r
        )
        self.audit_written = Counter("quell_audit_written", "Audit events written to the store.", registry=r)
        self.backend_restarts = Counter(
            "quell_backend_restarts", "Restarts of the managed vLLM, by cause (exited, start_failed, port_in_use, "
            "not_ours).", ["cause"], registry=r)  # fmt: skip
        for cause in BACKEND_RESTART_CAUSES:
            self.backend_restarts.labels(cause=cause)
        self.backend_up = Gauge(
            "quell_backend_up", "1 while the managed vLLM is running and proven to be this gateway's own.", registry=r
        )
        self.judge_calls = Counter(
            "quell_judge_calls", "Windows put to the concept judge, by outcome (yes, no, timeout, error) and whether "
            "the answer came from its cache.", ["outcome", "cached"], registry=r)  # fmt: skip
        self.judge_latency = Histogram(
            "quell_judge_latency_seconds", "Time the judge took on one window (cache hits excluded).",
            buckets=LAYER_BUCKETS + (5.0, 10.0), registry=r)  # fmt: skip
        self.streams_cut = Counter(
            "quell_streams_cut", "Streams ended early with an error event and [DONE], by cause (backend_lost, "
            "backend_timeout, shutdown, internal).", ["cause"], registry=r)  # fmt: skip
        for cause in STREAM_CUT_CAUSES:
            self.streams_cut.labels(cause=cause)

    # Convenience for the request path: each is one line at the call site.

    def count_request(self, route: str, status: int) -> None:
        self.requests.labels(route=route, status=str(status)).inc()

    def count_decisions(self, decisions: Iterable[Decision]) -> None:
        for d in decisions:
            self.suppressions.labels(policy=d.policy_id, target=d.target_id, layer=str(d.layer), action=d.action).inc()

    def observe_judge(self, outcome: str, cached: bool, seconds: float) -> None:
        self.judge_calls.labels(outcome=outcome, cached=str(cached).lower()).inc()
        if not cached:
            self.judge_latency.observe(seconds)

    def observe_layer(self, layer: str, seconds: float) -> None:
        self.layer_latency.labels(layer=str(layer)).observe(seconds)

    @contextmanager
    def time_layer(self, layer: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_layer(layer, time.perf_counter() - start)

    @contextmanager
    def time_backend(self, route: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.backend_latency.labels(route=route).observe(time.perf_counter() - start)

    def count_reload(self, ok: bool) -> None:
        self.policy_reloads.labels(result="success" if ok else "failure").inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text for `GET /metrics` and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Pure ASGI middleware counting every HTTP response by route template and status (streams included: the status
    is known when the response starts). Add it with `app.add_middleware(RequestMetricsMiddleware, metrics=m)` or
    wrap the app; requests that match no route are counted under the route "unmatched"."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before the response started ends as a 500 from the server

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")  # set by the router on the scope it passes down (same dict in Starlette)
            self.metrics.count_request(getattr(route, "path", None) or UNMATCHED_ROUTE, status)
