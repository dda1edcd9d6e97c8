"""One moderation result (OpenAI's `/v1/moderations` shape) from the text-level layers' findings on one text.

Categories are target ids. `category_scores` per target is the highest score any layer gave it: 1.0 for a surface
match or a protected run, the classifier's probability, or the embedding layer's cosine (clipped at 0). A category
is flagged when a layer reached its threshold. `detailed` adds a `quell` block: every detection with layer, span,
score and threshold, serialised by its own type (`Decision.as_dict`, `ProtectedRun.as_dict`, `Detection.as_dict`)
so the admin test route, audit and moderation say the same thing the same way. Without `detailed` the scores are
1.0 or 0.0: exact spans and thresholds would be an oracle for writing text that slips under them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from filters.decision import Decision
from filters.protected_text import ProtectedRun
from filters.semantic import Detection


def moderation_result(
    target_ids: Iterable[str],
    surface: Sequence[Decision],
    runs: Sequence[ProtectedRun],
    semantic: Sequence[Detection],
    *,
    detailed: bool,
) -> dict[str, object]:
    """`surface`: the surface layer's decisions on the text; `runs`: protected-text runs over their limit;
    `semantic`: every (target, layer) score, flagged or not (`SemanticGuard.scores`); the best window of each
    (target, layer) is reported."""
    categories: dict[str, bool] = dict.fromkeys(target_ids, False)
    scores: dict[str, float] = dict.fromkeys(categories, 0.0)
    detections: list[dict[str, object]] = []
    for target_id, detection in [(d.target_id, d.as_dict()) for d in surface] + [
        (r.rule.target_id, r.as_dict()) for r in runs
    ]:
        categories[target_id] = True
        scores[target_id] = 1.0
        detections.append(detection)
    seen: set[tuple[str, str]] = set()
    for d in sorted(semantic, key=lambda d: -d.score):
        if (d.target_id, d.layer) in seen:
            continue
        seen.add((d.target_id, d.layer))
        categories[d.target_id] = categories.get(d.target_id, False) or d.flagged
        scores[d.target_id] = max(scores.get(d.target_id, 0.0), round(max(0.0, float(d.score)), 4))
        detections.append(d.as_dict())
    flagged = any(categories.values())
    if not detailed:
        return {"flagged": flagged, "categories": categories,
                "category_scores": {t: float(flag) for t, flag in categories.items()}}  # fmt: skip
    return {"flagged": flagged, "categories": categories, "category_scores": scores,
            "quell": {"detections": detections}}  # fmt: skip
