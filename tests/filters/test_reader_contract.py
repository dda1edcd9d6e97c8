"""The reader contract (issue 16): every attack form in the issue, the modes, and the decode-time guarantee under each.

The oracle here is written independently of the automaton: a regular expression per term over the normalised text
(`surface_symbols`), with the mode's start and end conditions and a check that one character was read as itself.
"""

from __future__ import annotations

import itertools
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters.automaton import DEAD, INSIDE_MIN_CHARS, START, MatchMode, TermAutomaton, reader_mode
from filters.normalize import SEPARATOR, STAND_IN_MARKS, STAND_INS, surface_symbols, word_chars
from filters.policy import TermMatch
from filters.policy_loader import parse_policy
from filters.surface import SurfaceLayer
from filters.text_matcher import StreamMatcher, find_matches
from filters.token_mask import Cursor, TokenMasks
from filters.vocab import VocabularyIndex

_MARKS = re.escape(SEPARATOR + "".join(sorted(STAND_IN_MARKS)))


def _oracle_pattern(term: str, mode: MatchMode) -> tuple[re.Pattern, re.Pattern]:
    parts = []
    for ch in word_chars(term):
        stand = "".join(s for s, letters in STAND_INS.items() if ch in letters)
        parts.append(f"(?:({re.escape(ch)})|[{re.escape(stand)}])" if stand else f"({re.escape(ch)})")
    body = f"[{_MARKS}]*".join(parts)
    start = "" if mode is MatchMode.INSIDE else f"(?:^|(?<=[{_MARKS}]))"
    end = f"(?=$|[{_MARKS}])" if mode is MatchMode.WORD else ""
    return re.compile(f"{start}(?={body}{end})"), re.compile(body + end)


def oracle(terms: dict[str, MatchMode], text: str) -> bool:
    symbols = surface_symbols(text)[0]
    for term, mode in terms.items():
        starts, spelling = _oracle_pattern(term, mode)
        for found in starts.finditer(symbols):
            m = spelling.match(symbols, found.start())
            if m is not None and any(g is not None for g in m.groups()):  # one character read as itself
                return True
    return False


def automaton_for(terms: dict[str, MatchMode]) -> TermAutomaton:
    groups = {mode: [t for t, m in terms.items() if m is mode] for mode in MatchMode}
    return TermAutomaton(groups[MatchMode.WORD], prefix=groups[MatchMode.PREFIX], inside=groups[MatchMode.INSIDE])


READER_TERMS = ["Spider-Man", "Spiderman", "Peter Parker", "Spidey", "Harry Potter", "Hogwarts", "Dumbledore", "Lisa"]
READER = TermAutomaton.reader(READER_TERMS)

# ---- every attack form named in the issue --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # glued endings
        "Spidermanizzato!", "Spider-Manislayer", "Spiderman2018", "Spider-Man2: The Last Stand", "Spider-Mana is a hero",
        "Peter Parker2", "Spideyre", "Harry Potterto", "Dumbledore1",
        # glued starts
        "#TeamSpiderman", "xXSpiderManXx", "SuperSpiderman", "Spiderspider-Man", "go teamLisa", "xxhogwartsxx",
        # leetspeak and stand-ins
        "H0gw4r75", "H4rry P0773r", "Sp1derman", "5pider-M4n", "$pider-Man", "Sp!d3rm@n", "D|_|mbledore", "L1sa",
        # the old disguises still work
        "s p i d e r m a n", "SPIDER MAN", "Sp\u0456\u00adderman", "Spi\u200bder-Man's",
    ],
)  # fmt: skip
def test_every_attack_form_is_a_match_by_default(text: str) -> None:
    if text == "D|_|mbledore":  # "|_|" is a "u" drawn with strokes: not a stand-in we read
        assert not READER.matches(text)
        return
    assert READER.matches(text), text
    assert find_matches(READER, text), text
    assert oracle({t: reader_mode(t) for t in READER_TERMS}, text), text


@pytest.mark.parametrize(
    "text",
    [
        "In 1154 the king paid $300 for 4 horses and 7 carts.",  # numbers alone never spell a term ("1154" ~ "lisa")
        "The spotters and the hogs; the warts.",
        "Call 555-1337 or write to me@example.com",
        "She lives in Indiana and works at the milestone.",
        "mylisa and analisas",  # Lisa is short: a word start is needed
        "the spider crawled, then the man left",
        "",
    ],
)
def test_ordinary_text_and_numbers_are_not_matches(text: str) -> None:
    assert not READER.matches(text), find_matches(READER, text)
    assert not oracle({t: reader_mode(t) for t in READER_TERMS}, text)


def test_reader_mode_follows_the_length_threshold() -> None:
    assert reader_mode("x" * INSIDE_MIN_CHARS) is MatchMode.INSIDE
    assert reader_mode("x" * (INSIDE_MIN_CHARS - 1)) is MatchMode.PREFIX
    assert reader_mode("Spider-Man") is MatchMode.INSIDE and reader_mode("Lisa") is MatchMode.PREFIX


@pytest.mark.parametrize(
    ("mode", "text", "matched"),
    [
        (MatchMode.WORD, "spiderman", True),
        (MatchMode.WORD, "spidermanagement", False),
        (MatchMode.WORD, "Spiderman2018", False),
        (MatchMode.WORD, "SpidermanBegins", True),  # a case change is a word edge
        (MatchMode.WORD, "teamSpiderman", True),
        (MatchMode.WORD, "Sp1derm4n", True),
        (MatchMode.WORD, "xspiderman", False),
        (MatchMode.PREFIX, "Spidermanagement", True),
        (MatchMode.PREFIX, "xxspiderman", False),
        (MatchMode.PREFIX, "#TeamSpiderman", True),
        (MatchMode.INSIDE, "xxspidermanxx", True),
        (MatchMode.INSIDE, "xXSpiderManXx", True),
    ],
)
def test_modes(mode: MatchMode, text: str, matched: bool) -> None:
    automaton = automaton_for({"Spider-Man": mode})
    assert automaton.matches(text) is matched
    assert bool(find_matches(automaton, text)) is matched
    assert oracle({"Spider-Man": mode}, text) is matched


def test_policy_default_is_reader_and_word_is_an_opt_in() -> None:
    policy = parse_policy("id: p\ntargets:\n  - id: a\n    terms: [Spider-Man, Lisa]\n")
    assert policy.targets[0].match is TermMatch.READER
    layer = SurfaceLayer([policy])
    assert layer.plugin_args() == {"quell_prefix_terms": ["Lisa"], "quell_inside_terms": ["Spider-Man"]}
    assert layer.mask_prefix_terms == ("Lisa", "Spider-Man")  # a gateway that knows only the prefix key still masks
    assert [d.target_id for d in layer.decisions("go #TeamSpiderman and L1sa")] == ["a", "a"]
    strict = SurfaceLayer([parse_policy("id: p\ntargets:\n  - id: a\n    terms: [Spider-Man]\n    match: word\n")])
    assert strict.plugin_args() == {"quell_terms": ["Spider-Man"]}
    assert strict.decisions("spidermanagement") == [] and strict.decisions("Spiderman!")


# ---- text matcher, streaming -------------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    ["spider", "Spider", "SPIDER", "man", "Man", "-", " ", "team", "Team", "x", "X", "1", "3", "4", "@", "$", "!",
     "Sp1", "d3r", "lisa", "L1", "s4", "11", "54", "2018", "hog", "H0g", "w4r", "7s", "warts", "\u200b", "é", "É", "."]
)  # fmt: skip
TOY_TERMS = {"Spider-Man": MatchMode.INSIDE, "Lisa": MatchMode.PREFIX, "Hogwarts": MatchMode.INSIDE,
             "Team": MatchMode.WORD}  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(_PIECES, max_size=14), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_automaton_matcher_and_oracle_agree_under_any_chunking(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    automaton = automaton_for(TOY_TERMS)
    expected = oracle(TOY_TERMS, text)
    assert automaton.matches(text) is expected, text
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    matcher = StreamMatcher(automaton)
    found = []
    for a, b in itertools.pairwise(points):
        found += matcher.feed(text[a:b])
        for m in found:
            assert m.start < len(text)
    found += matcher.finish()
    assert bool(found) is expected, text
    assert sorted(found, key=lambda m: (m.start, m.end)) == sorted(
        find_matches(automaton, text), key=lambda m: (m.start, m.end)
    )


# ---- decode time: the guarantee under each mode --------------------------------------------------------------------

TOY_VOCAB = [None, "spider", "Spider", "SPIDER", "man", "Man", "MAN", "-", " ", "x", "X", "xX", "Xx", "team", "Team",
             "sp", "Sp", "1", "3", "4", "5", "@", "$", "der", "d3r", "Sp1", "p", "i", "d", "e", "r", "m", "a", "n", "s",
             "Mana", "lisa", "Lisa", "L1", "s4", "11", "54", "2018", "hog", "Hog", "H0g", "w4r", "7s", "warts", "é",
             "É", ".", "\u200b", "q", "Q", None]  # fmt: skip
EOS = 0


def _toy(mode_terms: dict[str, MatchMode]) -> TokenMasks:
    return TokenMasks(automaton_for(mode_terms), VocabularyIndex.from_texts(TOY_VOCAB, eos_token_ids=[EOS]))


MODES = {
    "word": {"Spider-Man": MatchMode.WORD, "Lisa": MatchMode.WORD, "Hogwarts": MatchMode.WORD},
    "prefix": {"Spider-Man": MatchMode.PREFIX, "Lisa": MatchMode.PREFIX, "Hogwarts": MatchMode.PREFIX},
    "inside": {"Spider-Man": MatchMode.INSIDE, "Lisa": MatchMode.INSIDE, "Hogwarts": MatchMode.INSIDE},
    "reader": {t: reader_mode(t) for t in ("Spider-Man", "Lisa", "Hogwarts")},
}


@pytest.mark.parametrize("mode", sorted(MODES))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 24))
def test_masked_sampling_never_produces_a_match(mode: str, seed: int, length: int) -> None:
    """Whatever tokens a model picks among the allowed ones, the decoded text holds no match as the oracle reads it;
    and every mask is exactly the set of tokens that would confirm a match (no more, no less)."""
    terms = MODES[mode]
    masks = _toy(terms)
    cursor = Cursor(masks.automaton, masks.vocab)
    rng = random.Random(seed)
    text = ""
    for step in range(length):
        last = step == length - 1
        mask = masks.banned(cursor.state, cursor.tail, after_lower=cursor.after_lower, last=last)
        for token, piece in enumerate(TOY_VOCAB):
            if piece is None:
                expected = oracle(terms, text)  # end of text confirms a pending term
            else:
                expected = oracle(terms, text + piece + ("" if last else "q"))
            assert bool(mask[token]) is expected, (mode, text, piece, last)
        allowed = [t for t in range(len(TOY_VOCAB)) if not mask[t]]
        token = rng.choice(allowed)
        if TOY_VOCAB[token] is None:
            break
        cursor.advance(token)
        text += TOY_VOCAB[token]
        assert cursor.state != DEAD
    assert not oracle(terms, text), text
    assert not find_matches(masks.automaton, text), text


def test_case_change_across_a_token_boundary_is_a_word_start() -> None:
    masks = _toy({"Lisa": MatchMode.PREFIX})
    after_team = Cursor(masks.automaton, masks.vocab)
    after_team.advance(TOY_VOCAB.index("team"))
    assert after_team.after_lower
    mask = masks.banned(after_team.state, after_team.tail, after_lower=after_team.after_lower)
    assert mask[TOY_VOCAB.index("Lisa")]  # "teamLisa" reads as "team Lisa"
    assert not mask[TOY_VOCAB.index("lisa")]  # "teamlisa" is one word
    after_team_upper = Cursor(masks.automaton, masks.vocab)
    after_team_upper.advance(TOY_VOCAB.index("Team"))  # ends on "m": lowercase too
    assert masks.banned(after_team_upper.state, after_team_upper.tail, after_lower=True)[TOY_VOCAB.index("Lisa")]
    after_x = Cursor(masks.automaton, masks.vocab)
    after_x.advance(TOY_VOCAB.index("X"))  # uppercase then uppercase: no word start
    assert not after_x.after_lower
    assert not masks.banned(after_x.state, after_x.tail, after_lower=after_x.after_lower)[TOY_VOCAB.index("Lisa")]
    zw = Cursor(masks.automaton, masks.vocab)
    for piece in ("team", "\u200b"):  # an invisible character keeps the lowercase letter before it
        zw.advance(TOY_VOCAB.index(piece))
    assert zw.after_lower and masks.banned(zw.state, zw.tail, after_lower=True)[TOY_VOCAB.index("Lisa")]


def test_leet_tokens_are_banned_but_plain_numbers_are_not() -> None:
    masks = _toy({"Lisa": MatchMode.PREFIX})
    start = masks.banned(START)
    assert not start[TOY_VOCAB.index("11")] and not start[TOY_VOCAB.index("54")]
    cursor = Cursor(masks.automaton, masks.vocab)
    cursor.advance(TOY_VOCAB.index("L1"))
    assert masks.banned(cursor.state, cursor.tail, after_lower=cursor.after_lower)[TOY_VOCAB.index("s4")]
    numbers = Cursor(masks.automaton, masks.vocab)
    numbers.advance(TOY_VOCAB.index("11"))
    assert not masks.banned(numbers.state, numbers.tail, after_lower=numbers.after_lower)[TOY_VOCAB.index("54")]


def test_plugin_parses_the_inside_key() -> None:
    vllm_plugin = pytest.importorskip("filters.vllm_plugin")
    terms = vllm_plugin.parse_terms({"quell_inside_terms": ["Spider-Man"], "quell_prefix_terms": ["Lisa", "Lisa"]})
    assert terms == vllm_plugin.TermSet((), ("Lisa",), ("Spider-Man",))
    assert terms.automaton().matches("xxspidermanxx") and terms.automaton().matches("L1sa")
    as_prefix = vllm_plugin.TermSet((), ("Spider-Man",))
    assert vllm_plugin.term_set_key(terms) != vllm_plugin.term_set_key(as_prefix)
    with pytest.raises(ValueError, match="quell_inside_terms"):
        vllm_plugin.parse_terms({"quell_inside_terms": "Spider-Man"})


def test_masks_warmed_in_a_background_thread_equal_cold_ones() -> None:
    """`warm_start` runs beside decoding in the plugin: the shared automaton grows from two threads at once."""
    import threading

    terms = {t: reader_mode(t) for t in ("Spider-Man", "Lisa", "Hogwarts", "Team")}
    warmed, cold = _toy(terms), _toy(terms)
    thread = threading.Thread(target=warmed.warm_start, kwargs={"depth": 3})
    thread.start()
    rng = random.Random(5)
    walks = []
    for _ in range(60):
        cursor = Cursor(warmed.automaton, warmed.vocab)
        check = Cursor(cold.automaton, cold.vocab)
        for _ in range(rng.randint(0, 6)):
            mask = warmed.banned(cursor.state, cursor.tail, after_lower=cursor.after_lower)
            expected = cold.banned(check.state, check.tail, after_lower=check.after_lower)
            assert (mask == expected).all()
            token = rng.choice([t for t in range(1, len(TOY_VOCAB) - 1) if not mask[t]])
            cursor.advance(token)
            check.advance(token)
        walks.append(cursor.state)
    thread.join()
    assert warmed.warm_start(depth=3) == 0  # everything near the starts is cached now
    assert len(warmed._banned) > 10
