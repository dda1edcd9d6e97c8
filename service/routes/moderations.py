"""`/v1/moderations` in OpenAI's shape, over the text-level layers of the selected policies.

Categories are target ids. `category_scores` per target is the highest score any layer gave it: 1.0 for a surface
match, the classifier's probability, or the embedding layer's cosine (clipped at 0). A category is flagged when a
layer reached its threshold. Each result also carries a `quell` block: every detection with layer, span and score.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.deps import GatewayDep, TenantDep
from service.inspect import surface_decisions
from service.routes.openai import PoliciesHeader, select_policies
from service.schemas import QuellOptions

router = APIRouter(tags=["openai"])

Text = Annotated[str, Field(max_length=100_000)]


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=64)]
    model: str | None = None
    quell: QuellOptions | None = None


@router.post("/v1/moderations")
async def moderations(body: ModerationRequest, gateway: GatewayDep, tenant: TenantDep,
                      x_quell_policies: PoliciesHeader = None) -> dict:  # fmt: skip
    requested = [p.strip() for p in (x_quell_policies or "").split(",") if p.strip()]
    requested += body.quell.policies if body.quell else []
    policies = select_policies(gateway.registry.snapshot, tenant, requested)
    texts = [body.input] if isinstance(body.input, str) else body.input
    runtime = gateway.semantic
    guard = await runtime.guard(policies) if runtime.enabled else None
    semantic: list[list] = [[] for _ in texts]
    if guard is not None:
        with gateway.metrics.time_layer("semantic"):
            for direction in ("output", "input"):
                if guard.models_for(direction):
                    for i, found in enumerate(await guard.scores_async(texts, direction)):
                        semantic[i] += found
    results = []
    for text, found in zip(texts, semantic, strict=True):
        categories: dict[str, bool] = {t.id: False for p in policies for t in p.targets}
        scores: dict[str, float] = dict.fromkeys(categories, 0.0)
        detections = []
        for d in surface_decisions(policies, text):
            categories[d.target_id] = True
            scores[d.target_id] = 1.0
            detections.append({"policy": d.policy_ref, "target": d.target_id, "layer": "surface", "action": d.action,
                               "score": 1.0, "threshold": 1.0, "span": [d.start, d.end]})  # fmt: skip
        seen = set()
        for d in sorted(found, key=lambda d: -d.score):
            if (d.target_id, d.layer) in seen:
                continue
            seen.add((d.target_id, d.layer))
            categories[d.target_id] |= d.flagged
            scores[d.target_id] = max(scores[d.target_id], round(max(0.0, float(d.score)), 4))
            detections.append({"policy": d.policy_ref, "target": d.target_id, "layer": d.layer,
                               "action": d.action.value, "score": round(float(d.score), 4),
                               "threshold": round(float(d.threshold), 4), "flagged": d.flagged,
                               "span": list(d.span)})  # fmt: skip
        results.append({"flagged": any(categories.values()), "categories": categories, "category_scores": scores,
                        "quell": {"detections": detections}})  # fmt: skip
    return {"id": f"modr-{uuid.uuid4().hex}", "model": body.model or "quell",
            "policies": [p.ref for p in policies], "results": results}  # fmt: skip
