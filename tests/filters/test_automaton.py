"""The compiled term automaton against the matching contract (DESIGN.md, "Surface layer").

The property tests compare it with an independent oracle: a regular expression over the normalised text, which says
what the contract says (a term's word characters in order, any separators between them, word edges at both ends).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters.automaton import DEAD, START, TermAutomaton, TermError
from filters.normalize import SEPARATOR, normalize, word_chars
from filters.text_matcher import find_matches

TERMS = ["Spider-Man", "Peter Parker", "Pokémon", "Batman", "Harry Potter", "R2-D2", "Mañana"]

SEPARATORS = [" ", "-", "\u2011", "_", ".", "\n", "\t", "'", "/", "  ", "\u00a0"]
FORMAT_CHARS = ["\u200b", "\u200d", "\u00ad", "\ufeff", "\u2060"]
LOOKALIKES = {"a": "а", "e": "е", "o": "ο", "p": "р", "c": "с", "i": "і", "k": "κ", "t": "т", "x": "х", "y": "у"}


def oracle(terms: list[str], text: str) -> bool:
    symbols = normalize(text)
    for term in terms:
        pattern = (
            f"(?<![^{SEPARATOR}])" + f"{SEPARATOR}*".join(map(re.escape, word_chars(term))) + f"(?![^{SEPARATOR}])"
        )
        if re.search(pattern, symbols):
            return True
    return False


@st.composite
def disguised(draw: st.DrawFn, term: str) -> str:
    """`term` under random casing, lookalike letters, separators between letters and invisible format characters."""
    out = []
    letters = word_chars(term)
    for i, ch in enumerate(letters):
        if ch in LOOKALIKES and draw(st.booleans()):
            ch = LOOKALIKES[ch]
        ch = ch.upper() if draw(st.booleans()) else ch
        out.append(ch)
        if i + 1 < len(letters):
            out.append(draw(st.sampled_from(["", "", "", *SEPARATORS, *FORMAT_CHARS])))
    return "".join(out)


benign_words = st.lists(
    st.sampled_from(
        ["the", "spider", "managed", "a", "mane", "pot", "harrying", "bat", "pokes", "mon", "42", "über", "peter"]
    ),
    max_size=8,
).map(" ".join)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("spiderman", True),
        ("SPIDER MAN", True),
        ("Spider\u2011Man's", True),
        ("s p i d e r m a n", True),
        ("Sp\u0456\u00adderman", True),
        ("#SpiderMan!", True),
        ("the spider managed", False),
        ("spidermanagement", False),
        ("aspiderman", False),
        ("POKEMON", True),
        ("Poke\u0301mon cards", True),
        ("r2 d2", True),
        ("r2d2x", False),
        ("", False),
    ],
)
def test_contract_examples(text: str, expected: bool) -> None:
    automaton = TermAutomaton(TERMS)
    assert automaton.matches(text) is expected
    assert oracle(TERMS, text) is expected


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), before=benign_words, after=benign_words)
def test_disguised_terms_are_matched(data: st.DataObject, before: str, after: str) -> None:
    term = data.draw(st.sampled_from(TERMS))
    hidden = data.draw(disguised(term))
    left = data.draw(st.sampled_from(SEPARATORS)) if before else ""
    right = data.draw(st.sampled_from(SEPARATORS)) if after else ""
    text = f"{before}{left}{hidden}{right}{after}"
    assert TermAutomaton(TERMS).matches(text), text


_ALPHABET = st.sampled_from(list("spidermanbtkhoyc2ñé ") + SEPARATORS + FORMAT_CHARS + list(LOOKALIKES.values()))


@settings(max_examples=500)
@given(text=st.lists(_ALPHABET, max_size=40).map("".join))
def test_agrees_with_oracle_on_random_text(text: str) -> None:
    terms = ["Spider-Man", "Batman", "Mañana", "R2-D2", "spider"]
    assert TermAutomaton(terms).matches(text) is oracle(terms, text)


@settings(max_examples=200)
@given(text=st.text(max_size=60))
def test_agrees_with_oracle_on_arbitrary_unicode(text: str) -> None:
    assert TermAutomaton(TERMS).matches(text) is oracle(TERMS, text)


@settings(max_examples=200)
@given(text=benign_words)
def test_text_without_terms_is_not_matched(text: str) -> None:
    assert not TermAutomaton(TERMS).matches(text)


def test_dead_is_absorbing_and_start_is_clean() -> None:
    automaton = TermAutomaton(TERMS)
    for cls in range(automaton.num_classes):
        assert automaton.step(DEAD, cls) == DEAD
    assert not automaton.is_pending(START)
    state = automaton.run(START, automaton.classes("batman"))
    assert automaton.is_pending(state)
    assert automaton.run(state, automaton.classes(" ")) == DEAD


def test_delta_table_is_lazy_and_fill_completes_pairs() -> None:
    automaton = TermAutomaton(TERMS)
    assert (automaton.delta[START] == -1).all()
    states = np.full(automaton.num_classes, START, dtype=np.int32)
    classes = np.arange(automaton.num_classes, dtype=np.int32)
    automaton.fill(states, classes)
    assert (automaton.delta[START] >= 0).all()
    assert automaton.pending.shape == (automaton.num_states,)


def test_many_terms_grow_the_table() -> None:
    terms = [f"name{i}x" for i in range(3000)]
    automaton = TermAutomaton(terms)
    for term in terms[::97]:
        assert automaton.matches(f"say {term} now")
    assert not automaton.matches("name12 y and aname12x")
    assert automaton.num_states > 64  # past the initial capacity


@pytest.mark.parametrize("term", ["", "!!", " - ", "\u200b"])
def test_terms_without_word_characters_are_rejected(term: str) -> None:
    with pytest.raises(TermError, match="no letters or digits"):
        TermAutomaton(["fine", term])


@pytest.mark.parametrize(
    ("text", "matched"),
    [
        ("Spider-Mane is here", True),
        ("spidermanx", True),
        ("S p i d e r - M a n s", True),
        ("the spider man", True),
        ("spider", False),
        ("a spidey", False),
        ("xspiderman", False),  # still needs a word edge before the term
        ("Peter Parkers", False),  # a word-edge term next to it is unaffected
        ("Peter Parker.", True),
    ],
)
def test_prefix_terms_match_whatever_follows(text: str, matched: bool) -> None:
    automaton = TermAutomaton(["Peter Parker"], prefix=["Spider-Man"])
    assert automaton.matches(text) is matched
    spans = find_matches(automaton, text)
    assert bool(spans) is matched
