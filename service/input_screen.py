"""The input screen: policies that apply to `input` check the prompt before the backend is called.

Each policy reads its `semantic.input_scope` (the last user message by default, or the whole conversation); the
surface layer and the semantic layers both look at that text. Any detection whose action is not `flag` blocks the
request: HTTP 400 with code `content_filter`, and no backend call.
"""

from __future__ import annotations

from collections.abc import Sequence

from filters.decision import CONCEPT_LAYERS, Decision
from filters.output_pipeline import semantic_decisions
from filters.policy import InputScope, Policy
from filters.semantic import input_text
from service.endpoints import Endpoint
from service.errors import APIError
from service.policy_registry import surface_layer
from service.semantic_runtime import SemanticRuntime


async def screen(
    endpoint: Endpoint, body: dict, policies: Sequence[Policy], runtime: SemanticRuntime
) -> tuple[list[Decision], str]:
    """Decisions on the input, and the text they were made on (for the audit)."""
    inbound = [p for p in policies if "input" in p.applies_to]
    if not inbound:
        return [], ""
    messages = endpoint.prompt_messages(body)
    decisions: list[Decision] = []
    texts: list[str] = []
    for scope in InputScope:
        group = [p for p in inbound if p.semantic.input_scope == scope]
        if not group:
            continue
        text = input_text(messages, scope)
        texts.append(text)
        decisions += surface_layer(group, "input").decisions(text)
    guard = await runtime.guard(runtime.relevant(inbound, "input"))
    if guard is not None:
        decisions += semantic_decisions(await guard.check_messages_async(messages))
    return decisions, "\n".join(texts)


def recognised_targets(decisions: Sequence[Decision]) -> frozenset[tuple[str, str]]:
    """(policy ref, target id) of the targets the semantic layers recognised in the prompt, whatever their action:
    a person described rather than named has their facts armed all the same (`filters.facts`)."""
    return frozenset((d.policy_ref, d.target_id) for d in decisions if d.layer in CONCEPT_LAYERS)


def blocked_error(decisions: list[Decision], content_filter_results: dict) -> APIError:
    first = next(d for d in decisions if d.action.blocks)
    return APIError(400, f"the prompt was blocked by policy {first.policy_ref} (target {first.target_id}, layer "
                         f"{first.layer})", param="messages", code="content_filter",
                    extra={"content_filter_results": content_filter_results})  # fmt: skip
