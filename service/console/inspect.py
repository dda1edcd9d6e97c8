"""Try it: every detection of one policy on a text, with its layer, score and threshold, and the text cut into
highlighted segments (what the admin `:test` route computes, plus the semantic layers' thresholds)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from filters.policy import Policy
from service.inspect import protected_runs, surface_decisions
from service.semantic_runtime import SemanticRuntime


@dataclass(frozen=True)
class Hit:
    target: str
    layer: str
    action: str
    score: float
    threshold: str  # how the layer decides ("exact match", "> 12 words", "0.83")
    start: int
    end: int


@dataclass(frozen=True)
class Segment:
    text: str
    layers: tuple[str, ...]  # empty: not detected
    title: str


async def hits(runtime: SemanticRuntime | None, policy: Policy, text: str) -> list[Hit]:
    found = [Hit(d.target_id, str(d.layer), str(d.action), d.score, "term match", d.start or 0, d.end or 0)
             for d in surface_decisions([policy], text)]  # fmt: skip
    for run in protected_runs([policy], text):
        found.append(Hit(run.rule.target_id, "protected_text", str(run.rule.action), 1.0,
                         f"{run.words} words quoted, over the limit", run.start, run.end))  # fmt: skip
    guard = await runtime.guard([policy]) if runtime is not None else None
    if guard is not None:
        for det in await guard.check_async(text, direction=None):
            found.append(Hit(det.target_id, det.layer, det.action.value, round(float(det.score), 4),
                             f"{det.threshold:.4g}", det.span[0], det.span[1]))  # fmt: skip
    return sorted(found, key=lambda h: (h.start, h.end, h.layer))


def segments(text: str, found: list[Hit]) -> list[Segment]:
    """The text cut at every span edge; each piece names the layers whose spans cover it."""
    edges = sorted({0, len(text), *(max(0, min(len(text), x)) for h in found for x in (h.start, h.end))})
    out: list[Segment] = []
    for a, b in itertools.pairwise(edges):
        over = [h for h in found if h.start <= a and b <= h.end]
        layers = tuple(sorted({h.layer for h in over}))
        title = "; ".join(f"{h.layer} {h.target} {h.action} score {h.score:g} (threshold {h.threshold})" for h in over)
        out.append(Segment(text[a:b], layers, title))
    return out
