"""GET /metrics: the gateway's Prometheus collectors (`gateway.metrics`, a `service.metrics.Metrics`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import GatewayDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(gateway: GatewayDep) -> Response:
    body, content_type = gateway.metrics.render()
    return Response(body, media_type=content_type)
