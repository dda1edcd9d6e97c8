"""The gateway's semantic layers: one embedder per process, guards compiled per policy set and cached.

Building a `SemanticGuard` embeds the concept anchors and trains the classifiers (about a second on CPU for a
policy); the `ClassifierCache` keeps trained targets across reloads, keyed by encoder and policy digest, so only
edited policies retrain and a classifier never meets another encoder's vectors. Guards for the default policy set
are warmed after every reload, off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from cachetools import LRUCache

from filters.concept_classifier import ClassifierCache
from filters.embedding import Embedder, Encoder, RemoteEmbedder
from filters.policy import Policy
from filters.semantic import SemanticGuard
from service.settings import Settings

log = logging.getLogger("quell.semantic")

GUARD_CACHE_SIZE = 32


def make_embedder(settings: Settings) -> Embedder | None:
    if not settings.semantic_layers:
        return None
    if settings.embeddings_url:
        return RemoteEmbedder(settings.embeddings_url, settings.embeddings_model, api_key=settings.embeddings_api_key)
    return Encoder(settings.embeddings_encoder).embedder()


class SemanticRuntime:
    def __init__(self, embedder: Embedder | None, layers: frozenset[str], vectors_dir: Path | None = None):
        """`vectors_dir`: where embedded background texts are kept across processes (`ClassifierCache.directory`)."""
        self.embedder = embedder
        self.layers = layers
        self._cache = ClassifierCache(directory=vectors_dir)
        self._guards: LRUCache[tuple[str, ...], SemanticGuard] = LRUCache(maxsize=GUARD_CACHE_SIZE)
        self._building: dict[tuple[str, ...], asyncio.Future] = {}

    @property
    def enabled(self) -> bool:
        return self.embedder is not None and bool(self.layers)

    def relevant(self, policies: Sequence[Policy], direction: str) -> list[Policy]:
        """Policies with a concept target that apply in `direction` (the ones the semantic layers must see)."""
        if not self.enabled:
            return []
        return [p for p in policies if direction in p.applies_to and any(t.concept for t in p.targets)]

    async def guard(self, policies: Sequence[Policy]) -> SemanticGuard | None:
        """The guard for exactly these policies (None when no concept target is among them)."""
        policies = [p for p in policies if any(t.concept for t in p.targets)]
        if not self.enabled or not policies:
            return None
        key = tuple(sorted(p.digest for p in policies))
        guard = self._guards.get(key)
        if guard is not None:
            return guard
        building = self._building.get(key)
        if building is None:  # one build per policy set, however many requests wait for it
            building = asyncio.ensure_future(self._build(key, policies))
            self._building[key] = building
        return await asyncio.shield(building)

    async def _build(self, key: tuple[str, ...], policies: list[Policy]) -> SemanticGuard:
        started = time.perf_counter()
        try:
            guard = await asyncio.to_thread(SemanticGuard, policies, self.embedder, self._cache, layers=self.layers)
        finally:
            self._building.pop(key, None)
        log.info("semantic layers ready for %s in %.2f s", ", ".join(p.ref for p in policies),
                 time.perf_counter() - started)  # fmt: skip
        self._guards[key] = guard
        return guard
