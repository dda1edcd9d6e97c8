"""Prometheus collectors: they render, counts move, each `Metrics` has its own registry, and the middleware and the
/metrics route work in a real FastAPI app served in-process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from filters.decision import Decision, Layer
from service.audit import AuditEvent, AuditLog
from service.metrics import Metrics, RequestMetricsMiddleware
from tests.procs import free_port

FAMILIES = {
    "quell_requests": "counter", "quell_suppressions": "counter", "quell_layer_latency_seconds": "histogram",
    "quell_backend_latency_seconds": "histogram", "quell_policy_reloads": "counter",
    "quell_audit_queue_depth": "gauge", "quell_audit_dropped": "counter", "quell_audit_write_failures": "counter",
    "quell_audit_written": "counter",
}  # fmt: skip


def families(metrics: Metrics) -> dict:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_every_collector_renders_with_its_type() -> None:
    rendered = families(Metrics())
    assert {name: rendered[name].type for name in FAMILIES} == FAMILIES
    assert "process_cpu_seconds" in rendered  # process collectors on by default
    zero = {(s.labels.get("reason") or s.labels.get("result")): s.value
            for name in ("quell_audit_dropped", "quell_policy_reloads") for s in rendered[name].samples
            if s.name.endswith("_total")}  # fmt: skip
    assert zero == dict.fromkeys(["queue_full", "closed", "shutdown", "rejected", "success", "failure"], 0.0)


def test_counts_move() -> None:
    m = Metrics(process=False)
    sample = m.registry.get_sample_value
    m.count_request("/v1/chat/completions", 200)
    m.count_request("/v1/chat/completions", 200)
    m.count_request("/v1/chat/completions", 400)
    m.count_decisions([
        Decision("spiderman@abc", "spider-man", Layer.SURFACE, "redact"),
        Decision("spiderman@def", "spider-man", Layer.SURFACE, "redact"),  # a new version: same series
        Decision("spiderman@abc", "spider-man", Layer.EMBEDDING, "refuse", 0.91),
    ])  # fmt: skip
    m.observe_layer(Layer.SURFACE, 0.002)
    with m.time_layer("embedding"):
        pass
    with pytest.raises(RuntimeError), m.time_backend("/v1/completions"):
        raise RuntimeError("backend failed")  # a failed call is timed too
    m.count_reload(True)
    m.count_reload(False)
    m.count_reload(False)

    assert sample("quell_requests_total", {"route": "/v1/chat/completions", "status": "200"}) == 2
    assert sample("quell_requests_total", {"route": "/v1/chat/completions", "status": "400"}) == 1
    by = {"policy": "spiderman", "target": "spider-man"}
    assert sample("quell_suppressions_total", {**by, "layer": "surface", "action": "redact"}) == 2
    assert sample("quell_suppressions_total", {**by, "layer": "embedding", "action": "refuse"}) == 1
    assert sample("quell_layer_latency_seconds_count", {"layer": "surface"}) == 1
    assert sample("quell_layer_latency_seconds_bucket", {"layer": "surface", "le": "0.0025"}) == 1
    assert sample("quell_layer_latency_seconds_bucket", {"layer": "surface", "le": "0.001"}) == 0
    assert sample("quell_layer_latency_seconds_count", {"layer": "embedding"}) == 1
    assert sample("quell_backend_latency_seconds_count", {"route": "/v1/completions"}) == 1
    assert sample("quell_policy_reloads_total", {"result": "success"}) == 1
    assert sample("quell_policy_reloads_total", {"result": "failure"}) == 2


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # would raise "Duplicated timeseries" if they shared one
    a.count_reload(True)
    assert a.registry.get_sample_value("quell_policy_reloads_total", {"result": "success"}) == 1
    assert b.registry.get_sample_value("quell_policy_reloads_total", {"result": "success"}) == 0
    assert REGISTRY.get_sample_value("quell_policy_reloads_total", {"result": "success"}) is None


def test_audit_log_moves_the_audit_collectors(tmp_path) -> None:
    m = Metrics(process=False)
    sample = m.registry.get_sample_value
    ev = AuditEvent(datetime.now(UTC), "r", None, "p@v", "t", "surface", "redact", 1.0)

    async def go() -> None:
        up = AuditLog(f"sqlite:///{tmp_path}/a.db", metrics=m)
        await up.start()
        up.record([ev] * 3)
        assert sample("quell_audit_queue_depth") == 3
        await up.aclose()
        assert (sample("quell_audit_written_total"), sample("quell_audit_queue_depth")) == (3, 0)

        down = AuditLog(f"postgresql+psycopg://quell@127.0.0.1:{free_port()}/x", queue_size=2, metrics=m,
                        retry_initial_s=0.01, retry_max_s=0.05)  # fmt: skip
        await down.start()
        down.record([ev] * 3)
        while down.write_failures < 1:
            await asyncio.sleep(0.01)
        await down.aclose(timeout_s=0.1)

    asyncio.run(go())
    assert sample("quell_audit_dropped_total", {"reason": "queue_full"}) == 1
    assert sample("quell_audit_dropped_total", {"reason": "shutdown"}) == 2
    assert sample("quell_audit_write_failures_total") >= 1


@dataclass
class _State:
    """What the /metrics route reads from `app.state.gateway` (the real Gateway has this attribute too)."""

    metrics: Metrics


def test_middleware_counts_by_route_template_and_the_route_serves_the_text() -> None:
    from service.routes.metrics import router

    m = Metrics(process=False)
    app = FastAPI()
    app.state.gateway = _State(m)
    app.add_middleware(RequestMetricsMiddleware, metrics=m)
    app.include_router(router)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return {"id": item_id}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"a", b"b"]), status_code=202)

    with TestClient(app) as client:
        assert client.get("/items/1").status_code == 200
        assert client.get("/items/2").status_code == 200
        assert client.get("/items/not-a-number").status_code == 422
        assert client.get("/stream").text == "ab"
        assert client.get("/nowhere/1").status_code == 404
        assert client.get("/nowhere/2").status_code == 404
        scraped = client.get("/metrics")

    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain; version=")
    sample = m.registry.get_sample_value
    assert sample("quell_requests_total", {"route": "/items/{item_id}", "status": "200"}) == 2  # one series
    assert sample("quell_requests_total", {"route": "/items/{item_id}", "status": "422"}) == 1
    assert sample("quell_requests_total", {"route": "/stream", "status": "202"}) == 1
    assert sample("quell_requests_total", {"route": "unmatched", "status": "404"}) == 2  # no raw paths as labels
    assert 'quell_requests_total{route="/items/{item_id}",status="200"} 2.0' in scraped.text
