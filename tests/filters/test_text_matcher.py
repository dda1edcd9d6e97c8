"""The streaming text matcher: any chunking finds exactly the one-shot matches and never releases a matched character."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from filters.automaton import TermAutomaton
from filters.text_matcher import Match, StreamMatcher, find_matches, redact

TERMS = ["Spider-Man", "Peter Parker", "Batman", "spider", "Mañana", "R2-D2"]
AUTOMATON = TermAutomaton(TERMS)

_PIECES = st.sampled_from(
    [
        "spider",
        "Spider",
        "-",
        "man",
        "MAN",
        "Man's",
        " ",
        "  ",
        ".",
        "\n",
        "bat",
        "peter",
        "parker",
        "\u200b",
        "\u00ad",
        "ma\u00f1ana",
        "man\u0303",
        "r2",
        "d2",
        "x",
        "the",
        "sp\u0456der",
        "ag",
    ]
)
texts = st.lists(_PIECES, max_size=25).map("".join)


def _chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def test_examples_with_spans() -> None:
    text = "Hi Spider\u2011Man's friend, not spidermanagement; S P I D E R - M A N"
    found = find_matches(AUTOMATON, text)
    assert [text[m.start : m.end] for m in found if m.term == "Spider-Man"] == [
        "Spider\u2011Man",
        "S P I D E R - M A N",
    ]
    assert redact(text, found).startswith("Hi [redacted]'s friend")


@settings(max_examples=400)
@given(text=texts, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_streaming_equals_one_shot_and_never_releases_a_match(text: str, cuts: list[int]) -> None:
    one_shot = find_matches(AUTOMATON, text)
    assert bool(one_shot) is AUTOMATON.matches(text)

    matcher = StreamMatcher(AUTOMATON)
    found: list[tuple[int, Match]] = []  # (time reported, match)
    released: list[int] = []  # safe_end after each chunk
    for step, chunk in enumerate(_chunked(text, cuts)):
        found += [(step, m) for m in matcher.feed(chunk)]
        released.append(matcher.safe_end)
        assert matcher.safe_end <= matcher.position
    found += [(len(released), m) for m in matcher.finish()]

    assert sorted((m.term, m.start, m.end) for _, m in found) == sorted((m.term, m.start, m.end) for m in one_shot)
    assert released == sorted(released), "safe_end went backwards"
    for reported_at, match in found:
        for safe_end in released[:reported_at]:
            assert safe_end <= match.start, f"released text[:{safe_end}] before {match} was reported"


@settings(max_examples=200)
@given(text=texts)
def test_everything_is_released_when_nothing_can_match(text: str) -> None:
    matcher = StreamMatcher(AUTOMATON)
    matcher.feed(text + " the end. ")
    assert matcher.safe_end == matcher.position
