"""Embedding blocklist: a window scores its highest cosine similarity to a target's description and examples.

No training: the anchors are the embedded description and examples. `threshold: auto` is the cosine that at most
`target_fpr` of the negatives (the target's counterexamples plus the shipped background set) reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from filters.concept_classifier import pick_threshold


@dataclass(frozen=True, eq=False)
class EmbeddingBlocklist:
    anchors: np.ndarray  # (n, dim) unit vectors: description first, then examples
    threshold: float
    threshold_auto: bool

    @classmethod
    def build(
        cls,
        anchors: np.ndarray,
        negatives: np.ndarray,
        *,
        threshold: float | str,
        target_fpr: float,
    ) -> EmbeddingBlocklist:
        if anchors.ndim != 2 or anchors.shape[0] == 0:
            raise ValueError(f"expected a non-empty (n, dim) array of anchor vectors, got shape {anchors.shape}")
        if threshold == "auto":
            negative_scores = (negatives @ anchors.T).max(axis=1)
            return cls(anchors, pick_threshold(negative_scores, target_fpr), True)
        return cls(anchors, float(threshold), False)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Highest cosine of each row of `vectors` (unit length) to any anchor."""
        if len(vectors) == 0:
            return np.zeros(0, dtype=np.float32)
        best: np.ndarray = (vectors @ self.anchors.T).max(axis=1)
        return best
