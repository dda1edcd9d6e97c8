"""The FastAPI application: lifespan (policies, backend, managed vLLM) and routes."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from filters.decision import Decision
from filters.embedding import Embedder
from service.audit import AuditEvent, AuditLog
from service.auth import KeyRing, exposure_problem
from service.backend import Backend
from service.errors import install_error_handlers
from service.limits import RequestLimits
from service.metrics import Metrics, RequestMetricsMiddleware
from service.policy_registry import PolicyRegistry, PolicySnapshot
from service.policy_registry import watch as watch_policies
from service.semantic_runtime import SemanticRuntime, make_embedder
from service.settings import DecodeMask, Settings
from service.stream_end import Drain, StreamEnds
from service.vllm_supervisor import VLLMSupervisor

log = logging.getLogger("quell")


@dataclass
class Gateway:
    """Everything a request handler needs, built once per process in the lifespan."""

    settings: Settings
    registry: PolicyRegistry
    backend: Backend
    keys: KeyRing
    metrics: Metrics
    audit: AuditLog
    semantic: SemanticRuntime
    managed: VLLMSupervisor | None = None
    decode_mask: bool = False
    connected: bool = False
    """True once the backend answered and its capability is known; requests get 503 until then."""
    backend_error: str | None = None
    """Why the backend cannot be used now (for /readyz and the 503s); None when it can."""
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def report(self, decisions: list[Decision], text: str, request_id: str, tenant: str) -> None:
        """Every suppression decision goes to the metrics and, off the response path, to the audit store."""
        self.metrics.count_decisions(decisions)
        store = self.settings.audit_store_text
        self.audit.record(AuditEvent.from_decision(d, request_id=request_id, tenant=tenant, store_text=store, text=text)
                          for d in decisions)  # fmt: skip

    async def reload_policies(self) -> PolicySnapshot:
        snapshot = await asyncio.to_thread(self.registry.reload)
        self.warm_semantic(snapshot)
        if snapshot.missing:  # no file event will come when the grace ends: look again then
            delay = max(0.0, min(snapshot.missing.values()) - time.monotonic()) + 0.05
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.ensure_future(self._reload_later(delay)))
        return snapshot

    async def _reload_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.reload_policies()

    def warm_semantic(self, snapshot: PolicySnapshot) -> None:
        """Train the default policy set's semantic layers now, not on the first request."""
        policies = snapshot.select(snapshot.default_ids())
        if self.semantic.relevant(policies, "output") or self.semantic.relevant(policies, "input"):
            self._tasks = [t for t in self._tasks if not t.done()]  # reloads must not pile up finished warm-ups
            self._tasks.append(asyncio.ensure_future(self.semantic.guard(policies)))

    @property
    def capability(self) -> str:
        return "decode-time" if self.decode_mask else "text-only"

    async def connect_backend(self) -> None:
        """Wait for the backend (starting the managed one), then find out whether it has the decode-time plugin."""
        s = self.settings
        if self.managed is not None:
            await self.managed.run()  # starts, proves, watches and restarts it; calls managed_up / managed_down
            return
        try:
            while not await self.backend.ready():
                await asyncio.sleep(1.0)
            if s.decode_mask is not DecodeMask.OFF:
                model = (await self.backend.models())[0]
                self.decode_mask = await self.backend.has_decode_mask(model)
                if s.decode_mask is DecodeMask.ON and not self.decode_mask:
                    self.backend_error = "QUELL_DECODE_MASK=on but the backend has no Quell logits processor"
                    log.error(self.backend_error)
                    return
            self.connected = True
            log.info("backend ready at %s; surface layer: %s", self.backend.base_url, self.capability)
        except Exception as exc:  # startup failure is reported on /readyz, the process stays up to say so
            self.backend_error = str(exc)
            log.error("backend failed to start: %s", exc)

    async def managed_up(self, url: str, key: str | None) -> None:
        """The managed vLLM answers as ours at `url`: send every request there, with its key."""
        self.backend.retarget(url, key)
        self.decode_mask = self.settings.decode_mask is not DecodeMask.OFF  # we started it with the plugin
        self.backend_error = None
        self.connected = True
        log.info("backend ready at %s; surface layer: %s", self.backend.base_url, self.capability)

    def managed_down(self, reason: str) -> None:
        """The managed vLLM is starting, dead or not ours: requests get a 503 with `reason` until `managed_up`."""
        self.connected = False
        self.backend_error = reason


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
        registry = PolicyRegistry(settings.policies, on_reload=lambda snap: metrics.count_reload(not snap.errors),
                                  removal_grace_s=settings.policy_removal_grace_s)  # fmt: skip
        snapshot = registry.reload()
        audit = AuditLog(settings.audit_url, queue_size=settings.audit_queue_size, metrics=metrics)
        await audit.start()
        log.info("policies: %s", ", ".join(lp.policy.ref for lp in snapshot.policies.values()) or "none")
        managed = backend is None and not settings.backend_url
        upstream = backend
        if upstream is None:  # the managed vLLM's address and key are set when a start answers as ours
            url = settings.backend_url or "http://127.0.0.1"
            upstream = Backend(url, settings.backend_api_key if not managed else None, settings.backend_timeout_s)
        chosen = make_embedder(settings) if embedder is _FROM_SETTINGS else embedder
        semantic = SemanticRuntime(chosen, settings.semantic_layers)  # type: ignore[arg-type]
        gateway = Gateway(settings, registry, upstream, keys, metrics, audit, semantic)
        if managed:
            gateway.managed = VLLMSupervisor(settings, metrics, gateway.managed_up, gateway.managed_down)
        gateway.warm_semantic(snapshot)
        app.state.gateway = gateway
        gateway._tasks.append(asyncio.create_task(gateway.connect_backend()))
        if settings.policies.is_dir():
            gateway._tasks.append(asyncio.create_task(
                watch_policies(settings.policies, gateway.reload_policies, settings.reload_debounce_ms)))
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
    from service.routes import admin, health, moderations, openai
    from service.routes import metrics as metrics_routes

    app.include_router(health.router)
    app.include_router(openai.router)
    app.include_router(moderations.router)
    app.include_router(admin.router)
    app.include_router(metrics_routes.router)
    return app
