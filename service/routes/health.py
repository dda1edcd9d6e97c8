from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from filters.protected_text import BUILDS
from service.deps import GatewayDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """The gateway process is up (says nothing about the backend: a dead managed vLLM is restarted by the gateway,
    not by restarting the gateway)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(gateway: GatewayDep, request: Request) -> JSONResponse:
    """Ready only when the backend answers (and, when managed, is the child this gateway started); also reports which
    surface layer is active and, for the managed vLLM, its state, restarts, and its log tail while it is down; while a
    reload builds a protected-text index in the background, its progress (`index_builds`)."""
    body = {"backend": gateway.backend.base_url, "surface_layer": gateway.capability,
            "policies": [lp.policy.ref for lp in gateway.registry.snapshot.policies.values()]}  # fmt: skip
    if gateway.managed is not None:
        body["managed"] = gateway.managed.status()
    builds = BUILDS.active()
    if builds:  # a reload indexing a protected corpus in the background; the last good policies serve meanwhile
        body["index_builds"] = [b.as_dict() for b in builds]
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:
        return JSONResponse({"status": "shutting down", **body}, status_code=503)
    if gateway.managed is not None:
        if not gateway.connected:
            phase = gateway.managed.state.phase
            return JSONResponse({"status": phase, "error": gateway.backend_error, **body}, status_code=503)
    elif gateway.backend_error:
        return JSONResponse({"status": "failed", "error": gateway.backend_error, **body}, status_code=503)
    if not gateway.connected or not await gateway.backend.ready():
        return JSONResponse({"status": "waiting for backend", **body}, status_code=503)
    return JSONResponse({"status": "ready", **body})
