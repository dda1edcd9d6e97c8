"""Run the text-level layers of some policies on a piece of text (admin tests, the CLI)."""

from __future__ import annotations

from collections.abc import Sequence

from filters.decision import Decision, Layer
from filters.output_pipeline import semantic_decisions
from filters.policy import Policy
from filters.protected_text import ProtectedRun, find_runs
from service.policy_registry import surface_layer
from service.semantic_runtime import SemanticRuntime


def surface_decisions(policies: Sequence[Policy], text: str) -> list[Decision]:
    return surface_layer(list(policies), None).decisions(text)  # every direction: this inspects text


def protected_runs(policies: Sequence[Policy], text: str) -> list[ProtectedRun]:
    """Quotes of protected text longer than their target allows, merged into maximal runs, with their source."""
    return find_runs(surface_layer(list(policies), None).protected, text)


def run_decision(run: ProtectedRun) -> Decision:
    """What the text backstop does about a run (a `mask` target's run that reaches text is redacted)."""
    action = "redact" if run.rule.action == "mask" else run.rule.action
    return Decision(run.rule.policy_ref, run.rule.target_id, Layer.SURFACE, action, 1.0, run.start, run.end)


async def inspect_text(runtime: SemanticRuntime | None, policies: Sequence[Policy], text: str) -> list[Decision]:
    """Surface matches, plus the semantic layers' flagged windows when a runtime is given."""
    decisions = surface_decisions(policies, text) + [run_decision(r) for r in protected_runs(policies, text)]
    guard = await runtime.guard(policies) if runtime is not None else None
    if guard is not None:
        decisions += semantic_decisions(await guard.check_async(text, direction=None))
    return decisions
