"""The moderation result: categories per target, scores only when detailed, each finding serialised by its own type."""

from __future__ import annotations

from typing import Any, cast

from filters.decision import Decision, Layer
from filters.moderation import moderation_result
from filters.policy import ConceptAction
from filters.protected_text import ProtectedRule, ProtectedRun
from filters.semantic import Detection

SURFACE = [Decision("names@1", "spider-man", Layer.SURFACE, "redact", 1.0, 15, 27, detail="pattern:alias")]
RUNS = [ProtectedRun(ProtectedRule("books@2", "two-cities", "mask", "", cast(Any, None)), 3, 40, 12,
                     "/srv/corpora/two-cities-opening.txt", 0)]  # fmt: skip
SEMANTIC = [
    Detection("concepts@3", "wizard", "classifier", 0.42, 0.6, ConceptAction.REFUSE, (0, 30)),
    Detection("concepts@3", "wizard", "classifier", 0.31, 0.6, ConceptAction.REFUSE, (30, 60)),
    Detection("concepts@3", "wizard", "embedding", -0.2, 0.5, ConceptAction.REFUSE, (0, 30)),
    Detection("concepts@3", "robot", "classifier", 0.9, 0.6, ConceptAction.FLAG, (0, 30)),
]
TARGETS = ["spider-man", "two-cities", "wizard", "robot", "unused"]


def test_detailed_result_reports_every_finding_with_span_and_the_best_window_per_layer() -> None:
    result = moderation_result(TARGETS, SURFACE, RUNS, SEMANTIC, detailed=True)
    assert result["categories"] == {"spider-man": True, "two-cities": True, "wizard": False, "robot": True,
                                    "unused": False}  # fmt: skip
    assert result["category_scores"] == {"spider-man": 1.0, "two-cities": 1.0, "wizard": 0.42, "robot": 0.9,
                                         "unused": 0.0}  # fmt: skip
    detections = cast(dict[str, list[dict[str, object]]], result["quell"])["detections"]
    by_layer = {(d["target"], d["layer"]): d for d in detections}
    assert len(detections) == len(by_layer) == 5  # the 0.31 window of wizard's classifier is not its best
    assert by_layer["spider-man", "surface"] == {"policy": "names@1", "target": "spider-man", "layer": "surface",
                                                 "action": "redact", "score": 1.0, "span": [15, 27],
                                                 "match": "pattern:alias"}  # fmt: skip
    run = by_layer["two-cities", "protected_text"]
    assert (run["source"], run["words"], run["span"], run["action"]) == ("two-cities-opening.txt", 12, [3, 40], "mask")
    wizard = by_layer["wizard", "classifier"]
    assert (wizard["score"], wizard["threshold"], wizard["flagged"], wizard["span"]) == (0.42, 0.6, False, [0, 30])
    assert by_layer["wizard", "embedding"]["score"] == -0.2  # clipped at 0 in category_scores only


def test_plain_result_has_flags_only() -> None:
    result = moderation_result(TARGETS, [], [], SEMANTIC, detailed=False)
    assert result == {"flagged": True,
                      "categories": {"spider-man": False, "two-cities": False, "wizard": False, "robot": True,
                                     "unused": False},
                      "category_scores": {"spider-man": 0.0, "two-cities": 0.0, "wizard": 0.0, "robot": 1.0,
                                          "unused": 0.0}}  # fmt: skip
    assert moderation_result(["a"], [], [], [], detailed=False)["flagged"] is False
