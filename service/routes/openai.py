"""OpenAI-compatible routes: thin, the work is in service.completions."""

from __future__ import annotations

from fastapi import APIRouter

from service.completions import GuardedRequest, Kind, respond_json, respond_stream
from service.deps import GatewayDep
from service.errors import APIError, backend_unavailable
from service.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(tags=["openai"])


@router.get("/v1/models")
async def list_models(gateway: GatewayDep) -> dict:
    return await gateway.backend.models_payload()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, gateway: GatewayDep):
    return await _complete("chat", body.model_dump(exclude_unset=True), gateway)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, gateway: GatewayDep):
    return await _complete("completion", body.model_dump(exclude_unset=True), gateway)


async def _complete(kind: Kind, body: dict, gateway: GatewayDep):
    if not gateway.connected:
        raise backend_unavailable(gateway.backend_error or "still starting (see /readyz)")
    models = await gateway.backend.models()
    if body["model"] not in models:
        raise APIError(404, f"model {body['model']!r} does not exist; available: {', '.join(models)}",
                       param="model", code="model_not_found")  # fmt: skip
    policies = gateway.registry.snapshot.select()
    req = GuardedRequest(kind, body, policies, gateway.decode_mask, gateway.settings.text_backstop)
    if body.get("stream"):
        return await respond_stream(gateway.backend, req)
    return await respond_json(gateway.backend, req)
