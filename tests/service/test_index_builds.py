"""Protected-text indexes built ahead of time (`quell index build`) and in the background on a reload: the last
good policies serve while a new corpus is indexed, and /readyz shows the build's progress."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from filters.protected_text import BUILDS, ProtectedIndex, default_index_dir, scan_sources
from service.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "examples" / "dickens-quotes.yaml"
CORPUS = ROOT / "policies" / "examples" / "corpora"


@pytest.fixture(autouse=True)
def _index_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QUELL_INDEX_DIR", str(tmp_path / "indexes"))
    return tmp_path / "indexes"


def _corpus_policy(folder: Path, words: int = 2000) -> Path:
    """A policy over a corpus of `words` invented words (several read blocks: progress is reported between them)."""
    (folder / "corpora").mkdir(parents=True, exist_ok=True)
    text = " ".join(f"w{(i * 7919) % 1543}" for i in range(words))
    (folder / "corpora" / "big.txt").write_text(text)
    path = folder / "big.yaml"
    path.write_text("id: big\ndefault: true\nrefusal: nope\ntargets:\n  - id: big\n    protected_text:\n"
                    "      sources: [corpora/big.txt]\n      max_quote_words: 5\n")  # fmt: skip
    return path


def test_index_build_cli_builds_then_finds_on_disk(tmp_path: Path, _index_dir: Path) -> None:
    shutil.copytree(CORPUS, tmp_path / "corpora")
    shutil.copy(EXAMPLE, tmp_path / "dickens.yaml")
    _corpus_policy(tmp_path)
    runner = CliRunner(env={"COLUMNS": "220"})  # the table is not cut to a narrow terminal
    first = runner.invoke(app, ["index", "build", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert first.output.count("built") == 2 and "two-cities" in first.output
    digests = [p.name for p in _index_dir.iterdir()]
    assert len(digests) == 2 and all(len(d) == 64 for d in digests)
    again = runner.invoke(app, ["index", "build", str(tmp_path / "dickens.yaml"), str(tmp_path / "big.yaml")])
    assert again.exit_code == 0 and again.output.count("on disk") == 2, again.output
    # The gateway (and the plugin) find what the command wrote: same folder, same content hash.
    corpus = scan_sources(["corpora/big.txt"], tmp_path, 5)
    assert ProtectedIndex.load(default_index_dir(), corpus.digest).k == 5


def test_index_build_cli_names_the_broken_policy(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("id: bad\nrefusal: nope\ntargets:\n  - id: t\n    protected_text:\n"
                                       "      sources: [missing/*.txt]\n      max_quote_words: 5\n")  # fmt: skip
    done = CliRunner().invoke(app, ["index", "build", str(tmp_path / "bad.yaml")])
    assert done.exit_code == 1
    assert "bad.yaml" in done.output and "matches no file" in done.output
    assert CliRunner().invoke(app, ["index", "build", str(tmp_path / "nowhere")]).exit_code == 2


def test_reload_indexes_in_the_background_last_good_serving_and_readyz_shows_progress(
    gateway_for, policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict] = []
    real_build = ProtectedIndex.build.__func__  # the real build, observed part-way (a spy, not a fake)

    def observed(cls, corpus, progress=None):
        def during(done: int) -> None:
            if progress is not None:
                progress(done)
            if not seen and 0 < done < corpus.words:  # part-way: ask the running gateway what it says now
                ready = client.get("/readyz")
                moderated = client.post("/v1/moderations", json={"input": "Spider-Man"})
                seen.append({"ready": ready.status_code, "body": ready.json(), "policies": moderated.status_code,
                             "active": [b.digest for b in BUILDS.active()]})  # fmt: skip

        return real_build(cls, corpus, during)

    monkeypatch.setattr(ProtectedIndex, "build", classmethod(observed))
    monkeypatch.setattr("filters.protected_text._BLOCK_CHARS", 4096)  # several blocks, so progress comes part-way
    with gateway_for(admin_token="op") as (client, _):
        before = client.get("/readyz").json()
        assert "index_builds" not in before
        _corpus_policy(policy_dir, words=20_000)
        resp = client.post("/admin/reload", headers={"authorization": "Bearer op"})
        assert resp.status_code == 200, resp.text
        after = client.get("/readyz").json()
    assert seen, "the build never reported progress part-way"
    (during,) = seen
    assert during["ready"] == 200  # the last good policies serve while the corpus is indexed
    assert not any(ref.startswith("big@") for ref in during["body"]["policies"])  # not live yet
    (build,) = during["body"]["index_builds"]
    assert 0 < build["words_read"] < build["words"] and 0 < build["percent"] < 100 and build["files"] == 1
    assert during["active"][0].startswith(build["index"])
    assert during["policies"] == 200
    assert any(ref.startswith("big@") for ref in after["policies"]) and "index_builds" not in after
