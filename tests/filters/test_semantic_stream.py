"""Windows and the streaming semantic check (safe and fast modes), with the real embedding model."""

from __future__ import annotations

import asyncio

import pytest

from filters.policy import Window
from filters.semantic import SemanticGuard, unit_spans, window_spans
from filters.semantic_stream import SemanticStream
from tests.semantic_support import shared_cache, shared_embedder, spiderman_variant

SPIDER = "Then a teenager bitten by a radioactive spider swung between the skyscrapers, shooting webs. "
BEFORE = "We walked along the river in the morning. The bakery sold fresh bread. "
AFTER = "We took the train home. Dinner was pasta with tomatoes. "


def _guard(**semantic) -> SemanticGuard:
    return SemanticGuard([spiderman_variant(**semantic)], shared_embedder(), shared_cache())


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# ---- windows (pure) ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "window", "expected"),
    [
        ("One. Two! Three? Four", Window(size=2, overlap=1), ["One. Two! ", "Two! Three? ", "Three? Four"]),
        ("One. Two. Three.", Window(size=3, overlap=1), ["One. Two. Three."]),
        ("One. Two. Three. Four. ", Window(size=3, overlap=1), ["One. Two. Three. ", "Two. Three. Four. "]),
        ("One.  Two.\n\nThree. ", Window(size=1, overlap=0), ["One. ", " Two.\n", "\nThree. "]),
        ("One. Two.   ", Window(size=1, overlap=0), ["One. ", "Two.   "]),
        ("One. Two. Three. Four. ", Window(size=3, overlap=0), ["One. Two. Three. ", "Two. Three. Four. "]),
        ("Pi is 3.14 exactly. Next", Window(size=1, overlap=0), ["Pi is 3.14 exactly. ", "Next"]),
        ("line one\nline two\n", Window(size=1, overlap=0), ["line one\n", "line two\n"]),
        ("a b c d e", Window(unit="words", size=3, overlap=1), ["a b c ", "c d e"]),
        ("", Window(), []),
    ],
)
def test_window_spans(text, window, expected):
    assert [text[s:e] for s, e in window_spans(text, window)] == expected


def test_a_sentence_longer_than_max_chars_is_cut_at_a_space():
    text = "word " * 30  # 150 characters, no sentence end
    spans = unit_spans(text, Window(max_chars=40))
    assert all(e - s <= 40 for s, e in spans)
    assert "".join(text[s:e] for s, e in spans) == text
    assert all(text[e - 1] == " " for s, e in spans)


@pytest.mark.parametrize("chunk", [1, 3, 7, 40, 1000])
def test_stream_checks_exactly_the_windows_of_the_whole_text(chunk):
    """Same windows, whatever the chunking: the stream's detections equal check() on the finished text."""
    guard = _guard(stream_mode="fast", on_concept="flag")  # flag: nothing blocks, every window gets checked
    text = BEFORE + SPIDER + AFTER
    stream = SemanticStream(guard)
    found = [d for part in _chunks(text, chunk) for d in stream.feed(part)] + stream.finish()
    assert found, "the Spider-Man sentence was not detected"
    merged: list[tuple[int, int]] = []  # check() merges overlapping flagged windows; the stream reports each
    for start, end in sorted(d.span for d in found):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    assert merged == [d.span for d in guard.check(text)]


# ---- safe mode --------------------------------------------------------------------------------------------------


def test_safe_mode_releases_a_sentence_only_after_its_window_passed():
    stream = SemanticStream(_guard(stream_mode="safe"))
    assert stream.mode == "safe"
    first, second = "We walked along the river. ", "The bakery sold fresh bread. "
    stream.feed(first)
    assert stream.safe_end == 0  # window (2 sentences) not complete yet
    stream.feed(second[:-1])
    assert stream.safe_end == 0  # "bread." may still go on ("bread.com")
    stream.feed(" ")
    assert stream.safe_end == len(first + second)
    stream.feed("And then")
    assert stream.safe_end == len(first + second)
    assert stream.finish() == []
    assert stream.safe_end == stream.position


@pytest.mark.parametrize("chunk", [5, 50])
def test_safe_mode_never_releases_the_concept(chunk):
    stream = SemanticStream(_guard(stream_mode="safe"))
    found = []
    for part in _chunks(BEFORE + SPIDER + AFTER, chunk):
        found += stream.feed(part)
        assert "radioactive" not in stream.text[: stream.safe_end]
    found += stream.finish()
    assert "radioactive" not in stream.text[: stream.safe_end]
    assert stream.blocked and found and found[0].action == "refuse"
    assert stream.text[: stream.safe_end] == BEFORE  # what passed before the detection stays released


def test_last_partial_window_is_checked_on_finish():
    stream = SemanticStream(_guard(stream_mode="safe"))
    tail = "A teenager bitten by a radioactive spider swings between skyscrapers shooting webs"
    assert stream.feed(BEFORE) == []
    assert stream.feed(tail) == []  # no sentence end yet: nothing new to check
    found = stream.finish()
    assert found and "radioactive" in stream.text[found[0].span[0] : found[0].span[1]]
    assert stream.blocked and "radioactive" not in stream.text[: stream.safe_end]


def test_flag_action_reports_but_does_not_hold_back():
    stream = SemanticStream(_guard(stream_mode="safe", on_concept="flag"))
    found = [d for part in _chunks(BEFORE + SPIDER + AFTER, 9) for d in stream.feed(part)] + stream.finish()
    assert found and all(d.action == "flag" for d in found)
    assert not stream.blocked and stream.safe_end == stream.position


# ---- fast mode --------------------------------------------------------------------------------------------------


def test_fast_mode_releases_at_once_and_reports_the_detection():
    stream = SemanticStream(_guard(stream_mode="fast"))
    assert stream.mode == "fast"
    found = []
    for part in _chunks(BEFORE + SPIDER + AFTER, 11):
        found += stream.feed(part)
        if not found:
            assert stream.safe_end == stream.position
    assert found and found[0].target_id == "spider-man"
    assert stream.blocked  # the caller cuts here; nothing more is checked


def test_mode_argument_overrides_the_policy():
    assert SemanticStream(_guard(stream_mode="safe"), mode="fast").mode == "fast"


def test_stream_without_output_targets_releases_everything():
    stream = SemanticStream(_guard(applies_to=["input"]))
    assert stream.feed(SPIDER) == [] and stream.safe_end == stream.position
    assert stream.finish() == []


def test_feed_after_finish_is_an_error():
    stream = SemanticStream(_guard())
    stream.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        stream.feed("more")


def test_async_stream_matches_sync():
    guard = _guard(stream_mode="safe")
    text = BEFORE + SPIDER + AFTER

    async def run():
        stream = SemanticStream(guard)
        found = [d for part in _chunks(text, 13) for d in await stream.feed_async(part)]
        return found + await stream.finish_async(), stream.safe_end

    sync = SemanticStream(guard)
    expected = [d for part in _chunks(text, 13) for d in sync.feed(part)] + sync.finish()
    assert asyncio.run(run()) == (expected, sync.safe_end)


def test_a_layer_left_out_never_scores_or_blocks_a_stream() -> None:
    policy = spiderman_variant(stream_mode="safe", layers=["classifier"])
    only_embedding = SemanticGuard([policy], shared_embedder(), shared_cache(), layers=["embedding"])
    assert all(m.classifier is None for m in only_embedding.models)
    stream = SemanticStream(only_embedding)
    found = stream.feed("A teenager bitten by a radioactive spider gains the ability to cling to walls. He swings on.")
    found += stream.finish()
    assert found == [] and not stream.blocked
