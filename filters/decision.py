"""What a layer decided about a piece of text: one frozen record per detection, carried to the client and audit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Layer(StrEnum):
    DECODE_MASK = "decode_mask"  # vLLM plugin: the term could not be emitted
    SURFACE = "surface"  # gateway text matcher (backstop, or the only surface layer without the plugin)
    EMBEDDING = "embedding"
    CLASSIFIER = "classifier"
    PROTECTED_TEXT = "protected_text"  # a run of protected corpus words longer than the policy allows
    JUDGE = "judge"  # a judge model's yes (or its time-out, failing closed) on a window the classifier was unsure of


CONCEPT_LAYERS = frozenset({Layer.EMBEDDING, Layer.CLASSIFIER, Layer.JUDGE})
"""The layers that recognise a target by what the text says about it rather than by its name."""


class Action(StrEnum):
    """What a detection does to a response, weakest first. A StrEnum, so it compares equal to its value."""

    FLAG = "flag"  # annotate, audit and count; the text passes
    MASK = "mask"  # decode time: the term cannot be emitted (a text match of a mask term is redacted)
    REDACT = "redact"
    STOP = "stop"
    REFUSE = "refuse"

    @property
    def rank(self) -> int:
        """When several detections disagree, the strongest action wins (mask and redact rank alike)."""
        return _RANK[self]

    @property
    def blocks(self) -> bool:
        """True for every action that changes what the client gets."""
        return self is not Action.FLAG


_RANK = {Action.FLAG: 0, Action.MASK: 1, Action.REDACT: 1, Action.STOP: 2, Action.REFUSE: 3}
ACTION_RANK: dict[str, int] = {str(a): r for a, r in _RANK.items()}
"""The ranks by action name, for callers holding plain strings."""


@dataclass(frozen=True)
class Decision:
    policy_ref: str  # "id@version"
    target_id: str
    layer: Layer
    action: Action
    score: float = 1.0
    start: int | None = None  # span in the response text, when the layer has one
    end: int | None = None
    detail: str = ""
    """What matched, where a target has several kinds of surface evidence: `pattern:<name>`, `fact` or `near` (a
    near spelling of a name, `filters.near_names`); "" for terms and the other layers, left out of `as_dict`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))  # callers may pass the plain name

    @property
    def policy_id(self) -> str:
        return self.policy_ref.split("@", 1)[0]

    def as_dict(self) -> dict[str, object]:
        """The one client-facing form of a decision (`/v1/moderations`, the admin test route): `span` is null where
        the layer has none, `match` names a pattern or fact (left out for terms and the other layers)."""
        out: dict[str, object] = {"policy": self.policy_ref, "target": self.target_id, "layer": str(self.layer),
                                  "action": str(self.action), "score": round(self.score, 4),
                                  "span": None if self.start is None else [self.start, self.end]}  # fmt: skip
        if self.detail:
            out["match"] = self.detail
        return out


def content_filter_results(decisions: Iterable[Decision]) -> dict[str, dict[str, object]]:
    """The one client-facing summary of decisions (a choice's `content_filter_results`, a blocked prompt's error):
    per target, the strongest action taken, by which layer and policy version, and how many detections."""
    out: dict[str, dict[str, object]] = {}
    strongest: dict[str, Decision] = {}
    for d in decisions:
        best = strongest.get(d.target_id)
        if best is None or d.action.rank > best.action.rank:
            strongest[d.target_id] = d
            count = out[d.target_id]["detections"] if d.target_id in out else 0
            out[d.target_id] = {"filtered": d.action.blocks, "policy": d.policy_ref, "layer": str(d.layer),
                                "action": str(d.action), "score": round(d.score, 4), "detections": count}  # fmt: skip
        out[d.target_id]["detections"] = int(out[d.target_id]["detections"]) + 1  # type: ignore[call-overload]
    return out
