"""Identifier patterns in the term automaton: what is rejected, what a pattern reads, agreement between the lazy DFA,
the streaming matcher and a reference search written on interegular's FSM, and decode-time masks on the real
tokenizer."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from filters.automaton import DEAD, TermAutomaton
from filters.patterns import PatternError, compile_pattern
from filters.text_matcher import StreamMatcher, find_matches
from filters.token_mask import Cursor, TokenMasks
from filters.vocab import VocabularyIndex

MODEL_DIR = Path(__file__).resolve().parents[2] / ".cache" / "models" / "SmolLM2-135M-Instruct"
PHONE = r"\d{3} ?\d{4}"
SPACED = r"\d( \d){6}"
EMAIL = r"[a-z0-9]+ ?@ ?[a-z0-9]+( [a-z0-9]+)* [a-z]{2,}"


@pytest.mark.parametrize(
    "regex, reason",
    [
        ("(ab", "invalid regex"),
        (r"(abc)\1", "unsupported regex feature"),
        (r"(?=abc)abcde", "lookaround"),
        (r"(?<!x)abcde", "lookaround"),
        (r"^abcde", "unsupported regex feature"),
        (r"abcde\b", "unsupported regex feature"),
        (r"\d*", "matches the empty string"),
        (r"\d{3}", "shortest match has 3 symbols"),
        (r"[A-Z]{2}\d{5}", "can never match normalised text"),
        (r"\d{3}-\d{4}", "can never match normalised text"),
        (r"[a-z ]{5}", "matches almost anything"),
        (r"(a|b)*a(a|b){10}", "determinises to 2048 states, over the budget"),
        # refused before determinising (which took 3 s for the first and 48 s for the second)
        (r"(a|b|c|d|e|f|g|h|i|j)(\d){5000}", "shortest match has 5001 symbols, so it needs more than 5001 states"),
        (r"\d{20000}", "shortest match has 20000 symbols"),
        (r"x\d{5,30000}", "longest match has 30001 symbols"),
        (r"(\d{20000})?x*abcde", "repeats multiply out to 20006 symbols"),
    ],
)
def test_rejected_with_reason(regex: str, reason: str) -> None:
    with pytest.raises(PatternError, match=reason.replace("(", r"\(")):
        compile_pattern(regex)


@pytest.mark.parametrize(
    "text, pattern, hit",
    [
        ("call 555 0100", PHONE, True),
        ("call 555-0100 now", PHONE, True),
        ("555.0100", PHONE, True),
        ("(555)\n0100", PHONE, True),
        ("555 - 0100", PHONE, True),  # a run of separators reads as one
        ("5550100", PHONE, True),
        ("55 50 100", PHONE, False),
        ("5 5 5 0 1 0 0", SPACED, True),
        ("5\n5\n5\n0\n1\n0\n0", SPACED, True),
        ("5, 5, 5, 0, 1, 0, 0", SPACED, True),
        ("In 1990 there were 12,345 people", PHONE, False),
        ("mail JOHN.DOE@Example.COM please", EMAIL, True),
        ("john @ example . com", EMAIL, True),
        ("johnDoe@example.com", EMAIL, True),
        ("no address here", EMAIL, False),
        ("x555 0100x", PHONE, True),  # patterns may start and end inside words
    ],
)
def test_what_a_pattern_reads(text: str, pattern: str, hit: bool) -> None:
    automaton = TermAutomaton(patterns=[pattern])
    assert automaton.matches(text) is hit
    assert bool(find_matches(automaton, text)) is hit
    assert compile_pattern(pattern).search(text) is hit


def test_match_names_the_pattern_and_its_span() -> None:
    automaton = TermAutomaton(["Spiderman"], patterns=[PHONE])
    text = "Spider-Man's number is 555-0100."
    found = find_matches(automaton, text)
    assert [(m.term, text[m.start : m.end]) for m in found] == [("Spiderman", "Spider-Man"), (PHONE, "555-0100")]


ALPHABET = list("0123456789") + [" ", " ", "-", ".", "\n", "@", "a", "b", "x", "(", ")"]


@pytest.mark.parametrize("seed", range(4))
def test_dfa_stream_and_reference_agree_on_random_texts(seed: int) -> None:
    rng = random.Random(seed)
    patterns = [PHONE, SPACED, r"ab ?@ ?\d{3}", r"\d\d( \d\d){2}"]
    automaton = TermAutomaton(["abba", "xab"], patterns=patterns)
    references = [compile_pattern(p) for p in patterns]
    hits = 0
    for _ in range(300):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 30)))
        expected_patterns = any(r.search(text) for r in references)
        whole = find_matches(automaton, text)
        assert {m.term for m in whole if m.term in patterns} == {
            p for p, r in zip(patterns, references) if r.search(text)
        }
        assert automaton.matches(text) == bool(whole)
        # streaming in random chunks finds the same matches
        matcher = StreamMatcher(automaton)
        found = []
        i = 0
        while i < len(text):
            j = i + rng.randint(1, 5)
            found += matcher.feed(text[i:j])
            i = j
        found += matcher.finish()
        assert sorted(found, key=lambda m: (m.start, m.end, m.term)) == sorted(
            whole, key=lambda m: (m.start, m.end, m.term)
        )
        hits += expected_patterns
    assert 20 < hits < 280, "the random texts should both match and not match"


def test_pii_pack_catches_faker_identifiers_in_several_locales() -> None:
    faker = pytest.importorskip("faker")
    from filters.policy_loader import load_policy_file
    from filters.surface import SurfaceLayer

    policy = load_policy_file(Path(__file__).resolve().parents[2] / "policies" / "examples" / "pii.yaml")
    automaton = SurfaceLayer([policy]).automaton
    assert automaton is not None
    missed = []
    for locale in ("en_US", "en_GB", "de_DE", "fr_FR"):
        fake = faker.Faker(locale)
        fake.seed_instance(99)  # the pack was written against seed 7
        for _ in range(10):
            for value in (fake.email(), fake.phone_number(), fake.credit_card_number(), fake.iban()):
                if not automaton.matches(f"It is {value}."):
                    missed.append(value)
    assert len(missed) <= 4, missed
    for text in ("The meeting is on 3 May 2021 at 10:30 in room 42.", "Sales rose 12% between 2019 and 2021.",
                 "Pages 12-14, chapter 5; it costs $1,234.", "Call the front desk."):  # fmt: skip
        assert not automaton.matches(text), text


# ---- decode time, real tokenizer ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real():
    transformers = pytest.importorskip("transformers")
    if not (MODEL_DIR / "tokenizer.json").exists():
        pytest.skip(f"model not prepared at {MODEL_DIR} (run `make setup`)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR))
    automaton = TermAutomaton(["Spiderman"], patterns=[r"\d{3} ?\d{3} ?\d{4}", SPACED, EMAIL])
    return tokenizer, TokenMasks(automaton, VocabularyIndex.from_hf_tokenizer(tokenizer))


def test_masks_equal_the_automaton_on_the_real_vocabulary(real) -> None:
    tokenizer, masks = real
    vocab = masks.vocab
    rng = random.Random(5)
    for prefix in ("", "Call 555", "Call 555-01", "5 5 5 0 1", "john.doe@exam", "x"):
        cursor = Cursor(masks.automaton, vocab)
        for token in tokenizer.encode(prefix, add_special_tokens=False):
            cursor.advance(token)
        assert not cursor.matched
        banned = masks.banned(cursor.state, cursor.tail, after_lower=cursor.after_lower)
        for token in rng.sample(range(vocab.size), 400):
            data = vocab.token_bytes[token]
            if data is None:
                continue
            text = data.decode("utf-8", errors="replace")
            expected = masks.automaton.run(cursor.state, masks.automaton.classes(text, cursor.after_lower)) == DEAD
            assert banned[token] == expected, (prefix, text)


def test_sampling_under_masks_never_emits_an_identifier(real) -> None:
    """Random walks that prefer digit, separator and e-mail tokens: with the masks no pattern ever matches the text;
    without them (the control) the same lures do."""
    tokenizer, masks = real
    vocab, automaton = masks.vocab, masks.automaton
    lures = sorted({t for s in ("555-010-0100 ", "5 5 5 0 1 0 0\n", "john.doe@example.com ", "(0)", "123 4567 89")
                    for t in tokenizer.encode(s, add_special_tokens=False)})  # fmt: skip
    rng = random.Random(17)
    unmasked_hits = 0
    for _ in range(40):
        cursor, free = Cursor(automaton, vocab), Cursor(automaton, vocab)
        out: list[int] = []
        for _ in range(30):
            mask = masks.banned(cursor.state, cursor.tail, after_lower=cursor.after_lower)
            token = rng.choice(lures)
            free.advance(token)
            if mask[token]:
                token = rng.choice([t for t in lures + rng.sample(range(vocab.size), 20) if not mask[t]])
            out.append(token)
            cursor.advance(token)
            assert not cursor.matched
        unmasked_hits += free.matched
        text = tokenizer.decode(out, skip_special_tokens=True)
        assert find_matches(automaton, text) == [], text
    assert unmasked_hits > 10


def test_mask_table_is_a_bool_per_token(real) -> None:
    _, masks = real
    banned = masks.banned(1)
    assert banned.dtype == np.bool_ and banned.shape == (masks.width,)
