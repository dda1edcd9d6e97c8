from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import GatewayDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """The gateway process is up (says nothing about the backend)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(gateway: GatewayDep) -> JSONResponse:
    """Ready only when the backend answers; also reports which surface layer is active."""
    body = {"backend": gateway.backend.base_url, "surface_layer": gateway.capability,
            "policies": [lp.policy.ref for lp in gateway.registry.snapshot.policies.values()]}  # fmt: skip
    if gateway.backend_error:
        return JSONResponse({"status": "failed", "error": gateway.backend_error, **body}, status_code=503)
    if not gateway.connected or not await gateway.backend.ready():
        return JSONResponse({"status": "waiting for backend", **body}, status_code=503)
    return JSONResponse({"status": "ready", **body})
