"""OpenAI-compatible routes: thin, the work is in service.completions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from filters.decision import content_filter_results
from service import input_screen
from service.auth import Tenant
from service.completions import (
    GuardedRequest,
    Kind,
    reject_side_channels,
    respond_json,
    respond_stream,
)
from service.deps import GatewayDep, TenantDep
from service.errors import APIError, backend_unavailable
from service.schemas import ChatCompletionRequest, CompletionRequest, check_sendable

router = APIRouter(tags=["openai"])
PoliciesHeader = Annotated[str | None, Header(alias="x-quell-policies", description="extra policy ids, comma-separated")]


@router.get("/v1/models")
async def list_models(gateway: GatewayDep, _: TenantDep) -> dict:
    payload = await gateway.backend.models_payload()
    for card in payload.get("data") or []:
        if isinstance(card, dict) and "root" in card:
            card["root"] = card.get("id")  # vLLM puts the server's model folder here: not the client's business
    return payload


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, gateway: GatewayDep, tenant: TenantDep,
                           x_quell_policies: PoliciesHeader = None):  # fmt: skip
    return await _complete("chat", body, gateway, tenant, x_quell_policies)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, gateway: GatewayDep, tenant: TenantDep,
                      x_quell_policies: PoliciesHeader = None):  # fmt: skip
    return await _complete("completion", body, gateway, tenant, x_quell_policies)


async def _complete(kind: Kind, request: ChatCompletionRequest | CompletionRequest, gateway: GatewayDep,
                    tenant: Tenant, header_policies: str | None):  # fmt: skip
    requested = [p.strip() for p in (header_policies or "").split(",") if p.strip()]
    if request.quell is not None:
        requested += request.quell.policies
    policies = gateway.registry.snapshot.for_tenant(tenant, requested)
    if not gateway.connected:
        raise backend_unavailable(gateway.backend_error or "still starting (see /readyz)")
    models = await gateway.backend.models()
    if request.model not in models:
        raise APIError(404, f"model {request.model!r} does not exist; available: {', '.join(models)}",
                       param="model", code="model_not_found")  # fmt: skip
    body = request.model_dump(exclude_unset=True, exclude={"quell"})
    check_sendable(body)
    reject_side_channels(kind, body, policies)
    runtime = gateway.semantic
    req = GuardedRequest(kind, body, policies, gateway.decode_mask, gateway.settings.text_backstop, runtime)
    req.report = lambda decisions, text: gateway.report(decisions, text, req.request_id, tenant.id)
    req.observe_layer = gateway.metrics.observe_layer
    with gateway.metrics.time_layer("input_screen"):
        inbound, screened = await input_screen.screen(kind, body, policies, runtime)
    req.decided(inbound, screened)
    if any(d.action != "flag" for d in inbound):
        raise input_screen.blocked_error(inbound, content_filter_results(inbound))
    req.semantic = await runtime.guard(runtime.relevant(policies, "output"))
    with gateway.metrics.time_backend(kind):  # for streams: until the response starts
        if request.stream:
            return await respond_stream(gateway.backend, req)
        return await respond_json(gateway.backend, req)
