"""Run the text-level layers of some policies on a piece of text (admin tests, the CLI)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from filters.decision import Decision, Layer
from filters.judge import Judges
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


async def inspect_text(
    runtime: SemanticRuntime | None, policies: Sequence[Policy], text: str, judges: Judges | None = None
) -> list[Decision]:
    """Surface matches, plus the semantic layers' flagged windows when a runtime is given (and the judge's verdict
    on the uncertain ones of concepts that have a judge, when `judges` is given)."""
    decisions = surface_decisions(policies, text) + [run_decision(r) for r in protected_runs(policies, text)]
    guard = await runtime.guard(policies) if runtime is not None else None
    if guard is not None:
        found = await guard.check_async(text, direction=None, judge_band=judges is not None)
        if judges is not None:
            found = await judges.resolve(text, found)
        decisions += semantic_decisions(found)
    return decisions


async def concept_notes(runtime: SemanticRuntime | None, policies: Sequence[Policy], k: int = 5) -> list[dict]:
    """Per concept target with a classifier, what an operator needs before trusting it (issue 14's operator aid):
    its threshold, its cross-validated recall on its own examples, whether it is ready to `refuse` on (and what to do
    when not), its judge band, and the `k` background / own texts its classifier scores nearest its threshold."""
    guard = await runtime.guard(policies) if runtime is not None else None
    if guard is None:
        return []
    warnings = {(w.policy_ref, w.target_id): w.message for w in guard.warnings()}
    notes = []
    for model in guard.models:
        if model.classifier is None:
            continue
        warning = warnings.get((model.policy.ref, model.target.id))
        nearest = await asyncio.to_thread(guard.boundary, model.target.id, k)  # embeds: off the event loop
        notes.append({"policy": model.policy.ref, "target": model.target.id, "on_concept": str(model.target.on_concept),
                      "threshold": round(model.classifier.threshold, 4),
                      "cv_recall": None if model.classifier.cv_recall is None else round(model.classifier.cv_recall, 3),
                      "refuse_ready": warning is None, "warning": warning,
                      "judge_band": None if model.band is None else [round(x, 4) for x in model.band],
                      "boundary": [{"text": b.text, "source": b.source, "score": round(b.score, 4),
                                    "flagged": b.flagged} for b in nearest]})  # fmt: skip
    return notes
