"""Shared, real parts for the semantic-layer tests: each embedding model is loaded once per test session.

`shared_embedder()` is the product's default encoder (what a deployment gets); `shared_minilm()` the other one."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from filters.concept_classifier import ClassifierCache
from filters.embedding import DEFAULT_ENCODER, Embedder, LocalEmbedder
from filters.policy import Policy
from filters.policy_loader import load_policy_file, parse_policy

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / ".cache" / "vectors"
"""Embedded background texts, kept across test runs and shared by every test gateway (`ClassifierCache.directory`)."""


@lru_cache(maxsize=1)
def shared_embedder() -> Embedder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    embedder = DEFAULT_ENCODER.embedder()
    embedder.load()
    return embedder


@lru_cache(maxsize=1)
def shared_minilm() -> LocalEmbedder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    embedder = LocalEmbedder()
    embedder.load()
    return embedder


@lru_cache(maxsize=1)
def shared_cache() -> ClassifierCache:
    return ClassifierCache(directory=VECTORS)


def spiderman_policy() -> Policy:
    """The shipped example, refusing on concepts (it ships with `on_concept: flag`; these tests need a block)."""
    data = load_policy_file(ROOT / "policies" / "spiderman.yaml").model_dump(mode="json")
    data["targets"][0]["on_concept"] = "refuse"
    return Policy.model_validate(data)


def spiderman_variant(**semantic) -> Policy:
    """The example policy with other `semantic:` settings (and optionally concept layers / on_concept)."""
    data = spiderman_policy().model_dump(mode="json")
    layers = semantic.pop("layers", None)
    on_concept = semantic.pop("on_concept", None)
    applies_to = semantic.pop("applies_to", None)
    if layers is not None:
        data["targets"][0]["concept"]["layers"] = layers
    if on_concept is not None:
        data["targets"][0]["on_concept"] = on_concept
    if applies_to is not None:
        data["applies_to"] = applies_to
    data["semantic"].update(semantic)
    return Policy.model_validate(data)


def parse(yaml_text: str) -> Policy:
    return parse_policy(yaml_text, "test.yaml")


def cache_with_vectors(tmp_path: Path) -> Path:
    """A test gateway's own cache folder whose `vectors/` is the shared one: the gateway reads the embedded
    background instead of embedding it again, and keeps everything else (logs, term sets) to itself."""
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    VECTORS.mkdir(parents=True, exist_ok=True)
    (cache / "vectors").symlink_to(VECTORS, target_is_directory=True)
    return cache
