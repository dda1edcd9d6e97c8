"""Run the text-level layers of some policies on a piece of text (admin tests, the CLI)."""

from __future__ import annotations

from collections.abc import Sequence

from filters.decision import Decision
from filters.policy import Policy
from service.policy_registry import surface_layer
from service.semantic_runtime import SemanticRuntime


def surface_decisions(policies: Sequence[Policy], text: str) -> list[Decision]:
    return surface_layer(list(policies), None).decisions(text)  # every direction: this inspects text


async def inspect_text(runtime: SemanticRuntime | None, policies: Sequence[Policy], text: str) -> list[Decision]:
    """Surface matches, plus the semantic layers' flagged windows when a runtime is given."""
    decisions = surface_decisions(policies, text)
    guard = await runtime.guard(policies) if runtime is not None else None
    if guard is not None:
        decisions += runtime.keep(await guard.check_async(text, direction=None))
    return decisions
