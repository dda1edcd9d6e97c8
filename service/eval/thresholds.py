"""Semantic layers across thresholds, from the unfiltered outputs (config `none`).

Under greedy decoding an output-side semantic layer (decode mask and backstop off) sees exactly what the model says
without a policy, so scoring the `none` outputs with the policy's own `SemanticGuard` (same embedder, same trained
classifier, same windows) tells what the layer would do at any threshold:
- leak at t: the unfiltered output leaked and its best window scores below t;
- over-blocking at t: a neighbour or benign output scores t or more.
The policy's `auto` thresholds (picked at load for its `target_fpr`, never on these texts) are marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from filters.policy import Policy

CURVE_POINTS = 41


@dataclass(frozen=True)
class LayerScores:
    layer: str
    threshold: float  # the policy's threshold for this layer (resolved "auto")
    scores: dict[str, float]  # result key -> best window score (-inf for an empty output)


def semantic_scores(policy: Policy, rows: Sequence[dict], embedder=None) -> list[LayerScores]:
    """Best-window score per row and layer for every concept layer of `policy` (first target with a concept)."""
    if not any(t.concept for t in policy.targets):
        return []
    from filters.embedding import DEFAULT_ENCODER
    from filters.semantic import SemanticGuard

    guard = SemanticGuard([policy], embedder or DEFAULT_ENCODER.embedder())
    model = guard.models[0]
    texts = [r.get("output") or "" for r in rows]
    per_text = guard.scores(texts, "output") if texts else []
    out: list[LayerScores] = []
    for layer, component in (("embedding", model.blocklist), ("classifier", model.classifier)):
        if component is None:
            continue
        scores = {}
        for row, detections in zip(rows, per_text, strict=True):
            best = [d.score for d in detections if d.layer == layer and d.target_id == model.target.id]
            scores[row["key"]] = max(best) if best else float("-inf")
        out.append(LayerScores(layer, float(component.threshold), scores))
    return out


def curve(layer: LayerScores, leaked: dict[str, bool], innocent: Sequence[str]) -> list[dict]:
    """Leak and over-blocking counts at CURVE_POINTS thresholds spanning the observed scores (and the auto one).
    `leaked`: probe result key -> did the unfiltered output leak; `innocent`: neighbour and benign keys."""
    finite = [s for s in layer.scores.values() if np.isfinite(s)]
    if not finite:
        return []
    low, high = min(finite) - 1e-3, max(finite) + 1e-3  # from "flag everything" to "flag nothing"
    grid = set(np.linspace(low, high, CURVE_POINTS).round(4).tolist()) | {layer.threshold}
    points = []
    for t in sorted(grid):
        leaks = sum(1 for key, leak in leaked.items() if leak and layer.scores.get(key, float("-inf")) < t)
        blocks = sum(1 for key in innocent if layer.scores.get(key, float("-inf")) >= t)
        points.append({"threshold": round(float(t), 4), "leak_k": leaks, "leak_n": len(leaked),
                       "over_k": blocks, "over_n": len(innocent)})  # fmt: skip
    return points
