"""OpenAI-compatible routes: thin, the work is in service.completions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from service.completions import handle
from service.deps import GatewayDep, TenantDep
from service.endpoints import CHAT, COMPLETION
from service.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(tags=["openai"])
PoliciesHeader = Annotated[
    str | None, Header(alias="x-quell-policies", description="extra policy ids, comma-separated")
]


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
    return await handle(CHAT, body, gateway, tenant, x_quell_policies)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, gateway: GatewayDep, tenant: TenantDep,
                      x_quell_policies: PoliciesHeader = None):  # fmt: skip
    return await handle(COMPLETION, body, gateway, tenant, x_quell_policies)
