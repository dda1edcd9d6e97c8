"""What a layer decided about a piece of text: one frozen record per detection, carried to the client and audit."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum


class Layer(StrEnum):
    DECODE_MASK = "decode_mask"  # vLLM plugin: the term could not be emitted
    SURFACE = "surface"  # gateway text matcher (backstop, or the only surface layer without the plugin)
    EMBEDDING = "embedding"
    CLASSIFIER = "classifier"


ACTION_RANK = {"flag": 0, "mask": 1, "redact": 1, "stop": 2, "refuse": 3}
"""When several detections disagree, the strongest action wins."""


@dataclass(frozen=True)
class Decision:
    policy_ref: str  # "id@version"
    target_id: str
    layer: Layer
    action: str
    score: float = 1.0
    start: int | None = None  # span in the response text, when the layer has one
    end: int | None = None

    @property
    def policy_id(self) -> str:
        return self.policy_ref.split("@", 1)[0]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["layer"] = str(self.layer)
        out["policy"] = out.pop("policy_ref")
        out["target"] = out.pop("target_id")
        return out
