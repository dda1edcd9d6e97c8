"""The per-choice output pipeline (filters.output_pipeline): surface, protected text and concept stages decide the
same way for a whole text and for any chunking of it, with the real embedding model and a real protected corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from filters.decision import Action, Layer
from filters.output_pipeline import OutputPipeline
from filters.policy import Policy
from filters.policy_loader import load_policy_file
from filters.semantic import SemanticGuard
from filters.stream_guard import REDACTION, OutputGuard
from filters.surface import SurfaceLayer
from tests.semantic_support import shared_cache, shared_embedder, spiderman_policy

ROOT = Path(__file__).resolve().parents[2]
DICKENS = ROOT / "policies" / "examples" / "dickens-quotes.yaml"
COPIED = "Sure:\nIT WAS THE BEST OF TIMES,\nIT WAS THE WORST OF TIMES,\nIT WAS THE AGE OF WISDOM.\nDone."
DESCRIBED = ("The young photographer from Queens was bitten by a radioactive spider and now swings between "
             "skyscrapers, fighting a goblin in a green costume.")  # fmt: skip
BENIGN = "Sourdough needs a lively starter, flour, water and salt, and a long slow rise overnight."


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pipeline(policies: list[Policy], semantic: SemanticGuard | None = None) -> OutputPipeline:
    return OutputPipeline(OutputGuard(SurfaceLayer(policies)), semantic, {p.ref: p.refusal for p in policies})


async def streamed(make, text: str, chunk: int) -> tuple[str, OutputPipeline]:
    p, out = make(), ""
    for i in range(0, len(text), chunk):
        step = await p.feed(text[i : i + chunk])
        out += step.refusal if step.refusal is not None else step.text
    last = await p.finish()
    out += last.refusal if last.refusal is not None else last.text
    return out, p


@pytest.fixture
def dickens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("QUELL_INDEX_DIR", str(tmp_path / "indexes"))
    shutil.copytree(DICKENS.parent / "corpora", tmp_path / "corpora")

    def load(action: str = "mask") -> Policy:
        path = tmp_path / "dickens-quotes.yaml"
        path.write_text(DICKENS.read_text().replace("on_protected: mask", f"on_protected: {action}"))
        return load_policy_file(path)

    return load


@pytest.mark.anyio
@pytest.mark.parametrize("chunk", [1, 4, 1000])
async def test_a_copied_passage_is_redacted_whole_and_streamed(dickens, chunk: int) -> None:
    policy = dickens()
    whole, cut = await pipeline([policy]).whole(COPIED)
    out, p = await streamed(lambda: pipeline([policy]), COPIED, chunk)
    assert whole == out == f"Sure:\n{REDACTION}.\nDone." and not cut
    assert {(d.target_id, d.layer) for d in p.decisions} == {("two-cities", Layer.PROTECTED_TEXT)}


@pytest.mark.anyio
async def test_a_refuse_target_replaces_the_whole_answer(dickens) -> None:
    out, cut = await pipeline([dickens("refuse")]).whole("Here: it was the best of times, it was the worst of times.")
    assert cut and out == "Sorry, I can't reproduce that text."


@pytest.mark.anyio
@pytest.mark.parametrize("chunk", [3, 1000])
async def test_a_named_term_is_redacted_by_the_surface_stage_before_the_concept_stage_sees_it(chunk: int) -> None:
    policy = spiderman_policy()
    semantic = SemanticGuard([policy], shared_embedder(), shared_cache())
    text = "My favourite comic is Spider-Man. " + BENIGN
    out, p = await streamed(lambda: pipeline([policy], semantic), text, chunk)
    assert "Spider-Man" not in out and REDACTION in out and BENIGN in out
    assert [d.layer for d in p.decisions] == [Layer.SURFACE] and p.decisions[0].action is Action.REDACT


@pytest.mark.anyio
@pytest.mark.parametrize("chunk", [5, 1000])
async def test_a_described_concept_is_refused_whole_and_streamed_and_benign_text_passes(chunk: int) -> None:
    policy = spiderman_policy()  # on_concept: refuse
    semantic = SemanticGuard([policy], shared_embedder(), shared_cache())
    whole, cut = await pipeline([policy], semantic).whole(DESCRIBED)
    out, p = await streamed(lambda: pipeline([policy], semantic), DESCRIBED, chunk)
    assert whole == out == policy.refusal and cut and p.stopped
    assert any(d.layer in (Layer.CLASSIFIER, Layer.EMBEDDING) and d.action is Action.REFUSE for d in p.decisions)
    benign, cut = await pipeline([policy], semantic).whole(BENIGN)
    assert benign == BENIGN and not cut
