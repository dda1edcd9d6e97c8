"""The FastAPI application: the lifespan that builds the `Gateway` (policies, backend, managed vLLM), middleware and
routes."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from filters.embedding import Embedder
from service.audit import AuditLog
from service.auth import KeyRing, exposure_problem
from service.backend import Backend
from service.console import mount as mount_console
from service.errors import install_error_handlers
from service.gateway import Gateway
from service.limits import RequestLimits
from service.metrics import Metrics, RequestMetricsMiddleware
from service.policy_history import PolicyHistory
from service.policy_registry import PolicyRegistry, PolicySnapshot
from service.policy_registry import watch as watch_policies
from service.routes import admin, health, moderations, openai
from service.routes import metrics as metrics_routes
from service.semantic_runtime import SemanticRuntime, make_embedder
from service.settings import Settings
from service.stream_end import Drain, StreamEnds
from service.vllm_supervisor import VLLMSupervisor

log = logging.getLogger("quell")

_FROM_SETTINGS: object = object()


def create_app(settings: Settings | None = None, *, backend: Backend | None = None,
               embedder: Embedder | None | object = _FROM_SETTINGS) -> FastAPI:  # fmt: skip
    """The gateway. `backend` (an already built `Backend`, e.g. over an `httpx` transport that replays recorded vLLM
    answers) replaces both `backend_url` and the managed vLLM; `embedder` replaces the one the settings name (None:
    no semantic layers). Both exist so that the routes can be tested in-process, in seconds."""
    settings = settings or Settings()
    metrics = Metrics()  # built before the lifespan: the request middleware needs it when the app is assembled

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        keys = KeyRing.load(settings.keys_file, settings.api_keys)
        problem = exposure_problem(settings.host, keys)
        if problem:
            raise RuntimeError(problem)
        if keys.empty:
            log.warning("NO CLIENT KEYS CONFIGURED: open gateway, serving on loopback only (%s). Set QUELL_KEYS_FILE "
                        "or QUELL_API_KEYS before exposing it.", settings.host)  # fmt: skip
        if settings.admin_token is None:
            log.warning("QUELL_ADMIN_TOKEN unset: the admin API (/admin) answers 401 to everyone")
        history = app.state.policy_history = PolicyHistory()  # every version that was live (the console's history)

        def reloaded(snap: PolicySnapshot) -> None:
            metrics.count_reload(not snap.errors)
            history.observe(snap)

        registry = PolicyRegistry(
            settings.policies, on_reload=reloaded, removal_grace_s=settings.policy_removal_grace_s
        )
        snapshot = registry.reload()
        audit = AuditLog(settings.audit_url, queue_size=settings.audit_queue_size, metrics=metrics)
        await audit.start()
        await asyncio.to_thread(history.bind, audit.engine)
        log.info("policies: %s", ", ".join(lp.policy.ref for lp in snapshot.policies.values()) or "none")
        managed = backend is None and not settings.backend_url
        upstream = backend
        if upstream is None:  # the managed vLLM's address and key are set when a start answers as ours
            url = settings.backend_url or "http://127.0.0.1"
            upstream = Backend(url, settings.backend_api_key if not managed else None, settings.backend_timeout_s)
        chosen = make_embedder(settings) if embedder is _FROM_SETTINGS else embedder
        semantic = SemanticRuntime(chosen, settings.semantic_layers, settings.cache_dir / "vectors")  # type: ignore[arg-type]
        gateway = Gateway(settings, registry, upstream, keys, metrics, audit, semantic)
        if managed:
            gateway.managed = VLLMSupervisor(settings, metrics, gateway.managed_up, gateway.managed_down)
        gateway.warm_semantic(snapshot)
        app.state.gateway = gateway
        gateway._tasks.append(asyncio.create_task(gateway.connect_backend()))
        if settings.policies.is_dir():
            gateway._tasks.append(
                asyncio.create_task(
                    watch_policies(settings.policies, gateway.reload_policies, settings.reload_debounce_ms)
                )
            )
        try:
            yield
        finally:
            for task in gateway._tasks:
                task.cancel()
            await upstream.aclose()
            await audit.aclose()
            if gateway.managed is not None:
                await asyncio.to_thread(gateway.managed.stop)

    app = FastAPI(title="Quell", version="0.1.0", lifespan=lifespan)
    app.state.drain = Drain(settings.shutdown_grace_s)  # begun by the server on SIGTERM (service.cli)
    app.add_middleware(StreamEnds, drain=app.state.drain, metrics=metrics)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes, max_concurrent=settings.max_concurrent,
                       max_concurrent_per_key=settings.max_concurrent_per_key)  # fmt: skip
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(openai.router)
    app.include_router(moderations.router)
    app.include_router(admin.router)
    app.include_router(metrics_routes.router)
    mount_console(app)
    return app
