"""`/v1/moderations` in OpenAI's shape, over the text-level layers of the selected policies (the result's shape:
`filters.moderation`). Tenants allowed to see detections (`see_detections` in the keys file; the keyless loopback
mode) also get a `quell` block per result; everyone else gets categories and flags only.

Bounded: at most `moderation_max_chars` characters in all per request (413 beyond), scored in small batches under a
deadline (`moderation_timeout_s`, 504 beyond), so one large request cannot hold the embedder from chat requests.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from filters.moderation import moderation_result
from service.deps import GatewayDep, TenantDep
from service.errors import APIError
from service.inspect import protected_runs, surface_decisions
from service.routes.openai import PoliciesHeader
from service.schemas import QuellOptions

router = APIRouter(tags=["openai"])

Text = Annotated[str, Field(max_length=100_000)]


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=64)]
    model: str | None = None
    quell: QuellOptions | None = None


BATCH = 8
"""Texts scored per embedder call: small enough that a deadline or a cancellation takes effect between batches."""


async def _semantic_scores(guard, texts: list[str]) -> list[list]:
    semantic: list[list] = [[] for _ in texts]
    for direction in ("output", "input"):
        if not guard.models_for(direction):
            continue
        for first in range(0, len(texts), BATCH):
            for i, found in enumerate(await guard.scores_async(texts[first : first + BATCH], direction)):
                semantic[first + i] += found
    return semantic


@router.post("/v1/moderations")
async def moderations(body: ModerationRequest, gateway: GatewayDep, tenant: TenantDep,
                      x_quell_policies: PoliciesHeader = None) -> dict:  # fmt: skip
    requested = [p.strip() for p in (x_quell_policies or "").split(",") if p.strip()]
    requested += body.quell.policies if body.quell else []
    policies = gateway.registry.snapshot.for_tenant(tenant, requested)
    texts = [body.input] if isinstance(body.input, str) else body.input
    limit = gateway.settings.moderation_max_chars
    if sum(len(t) for t in texts) > limit:
        raise APIError(413, f"input: {sum(len(t) for t in texts)} characters in all, more than the {limit} this "
                            "gateway moderates per request; split the request", param="input",
                       code="input_too_large")  # fmt: skip
    runtime = gateway.semantic
    guard = await runtime.guard(policies) if runtime.enabled else None
    semantic: list[list] = [[] for _ in texts]
    if guard is not None:
        with gateway.metrics.time_layer("semantic"):
            try:
                semantic = await asyncio.wait_for(_semantic_scores(guard, texts),
                                                  gateway.settings.moderation_timeout_s)  # fmt: skip
            except TimeoutError:
                raise APIError(504, f"moderation did not finish within {gateway.settings.moderation_timeout_s:g} s; "
                                    "send fewer or shorter texts", type="timeout_error",
                               code="moderation_timeout") from None  # fmt: skip
    target_ids = [t.id for p in policies for t in p.targets]
    results = [
        moderation_result(target_ids, surface_decisions(policies, text), protected_runs(policies, text), found,
                          detailed=tenant.see_detections)
        for text, found in zip(texts, semantic, strict=True)
    ]  # fmt: skip
    return {"id": f"modr-{uuid.uuid4().hex}", "model": body.model or "quell",
            "policies": [p.ref for p in policies] if tenant.see_detections else [p.id for p in policies],
            "results": results}  # fmt: skip
