"""Banned-token masks: toy vocabularies with hand-checked tables, then the real tokenizer against slow references.

References used here:
- `reference_end`: decode the token after the cursor's pending bytes with a fresh incremental decoder and run the
  `TermAutomaton` over the text (the slow path the kernel vectorises);
- the streaming text matcher over the whole decoded text, which knows nothing about tokens or DFA states.
"""

from __future__ import annotations

import codecs
import random

import numpy as np
import pytest

from filters.automaton import DEAD, START, MatchMode, TermAutomaton
from filters.text_matcher import StreamMatcher, find_matches
from filters.token_mask import Cursor, TokenMasks
from filters.vocab import VocabularyIndex
from service.eval.judge import term_read
from tests.procs import ROOT

MODEL_DIR = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"
TERMS = ["Spider-Man", "Pokémon", "Harry Potter", "Batman"]

TOY = [
    None,
    "spider",
    "-",
    "man",
    "Man",
    " man",
    ".",
    " ",
    "x",
    "spiderman.",
    "Pok",
    b"\xc3",
    b"\xa9",
    b"\xa9mon",
    "mon.",
    "bat",
    None,
]
EOS = 0


def toy_masks(width: int | None = None) -> TokenMasks:
    return TokenMasks(TermAutomaton(TERMS), VocabularyIndex.from_texts(TOY, eos_token_ids=[EOS]), width)


def cursor_after(masks: TokenMasks, prefix: list[int]) -> Cursor:
    cursor = Cursor(masks.automaton, masks.vocab)
    for token in prefix:
        cursor.advance(token)
    return cursor


def reference_end(masks: TokenMasks, cursor: Cursor, token: int) -> int:
    data = masks.vocab.token_bytes[token]
    if data is None:
        return cursor.state
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(cursor.tail, final=False)
    automaton = masks.automaton
    return automaton.run(cursor.state, automaton.classes(decoder.decode(data, final=False), cursor.after_lower))


def ids(*texts: str | bytes) -> list[int]:
    return [TOY.index(t) for t in texts]


@pytest.mark.parametrize(
    "prefix, banned, allowed",
    [
        ((), ["spiderman."], ["spider", "man", "-", ".", "x", "Pok", b"\xc3"]),
        (("spider",), [], ["-", "man", " man", " ", ".", "x"]),
        (("spider", "-", "Man"), [".", " ", " man"], ["x", "man", "spider"]),
        (("spider", " ", "man"), ["."], ["x"]),
        (("Pok", b"\xc3"), [], ["x", "."]),  # pending byte: nothing decided yet
        (("Pok", b"\xc3", b"\xa9"), ["mon."], ["x", "bat"]),  # "Poké" + "mon." spells "Pokémon."
        (("Pok", b"\xc3"), [], [b"\xa9mon", "x"]),  # "Pokémon" without its word edge yet: only pending
    ],
)
def test_toy_table(prefix: tuple, banned: list, allowed: list) -> None:
    masks = toy_masks()
    cursor = cursor_after(masks, ids(*prefix))
    mask = masks.banned(cursor.state, cursor.tail)
    for token in banned:
        assert mask[TOY.index(token)], f"{token!r} should be banned after {prefix}"
    for token in allowed:
        assert not mask[TOY.index(token)], f"{token!r} should be allowed after {prefix}"


def test_pending_term_bans_end_of_sequence_and_special_tokens() -> None:
    masks = toy_masks()
    pending = cursor_after(masks, ids("spider", "-", "Man"))
    assert masks.automaton.is_pending(pending.state)
    mask = masks.banned(pending.state, pending.tail)
    assert mask[EOS] and mask[len(TOY) - 1]
    clean = cursor_after(masks, ids("spider"))
    assert not masks.banned(clean.state, clean.tail)[EOS]


def test_byte_split_lookalike_is_caught() -> None:
    masks = toy_masks()
    cursor = cursor_after(masks, ids("Pok", b"\xc3", b"\xa9"))
    # "Poké" + "mon." spells "Pokémon." -> banned; only reachable through the byte-split path
    assert masks.banned(cursor.state, cursor.tail)[TOY.index("mon.")]
    cursor = cursor_after(masks, ids("Pok", b"\xc3"))
    assert cursor.tail == b"\xc3"
    assert not masks.banned(cursor.state, cursor.tail)[TOY.index(b"\xa9mon")]
    assert masks.banned(cursor.state, cursor.tail, last=True)[TOY.index(b"\xa9mon")]


def test_last_step_bans_tokens_that_leave_a_term_pending() -> None:
    masks = toy_masks()
    cursor = cursor_after(masks, ids("spider", "-"))
    assert not masks.banned(cursor.state)[TOY.index("Man")]
    assert masks.banned(cursor.state, last=True)[TOY.index("Man")]
    assert not masks.banned(cursor.state, last=True)[TOY.index("x")]


def test_pending_term_followed_by_an_unfinished_character_is_banned() -> None:
    """Leak bench regression: "Spider-Man" + F0 9F + 8C (every completion is an emoji, a separator) forced EOS."""
    vocab = VocabularyIndex.from_texts([None, "spider", "-", "Man", b"\xf0\x9f", b"\x8c", b"\x8c\x80", "x"], [0])
    masks = TokenMasks(TermAutomaton(["Spider-Man"]), vocab)
    cursor = Cursor(masks.automaton, vocab)
    for token in (1, 2, 3):
        cursor.advance(token)
    assert masks.automaton.is_pending(cursor.state)
    mask = masks.banned(cursor.state, cursor.tail)
    assert mask[4], "F0 9F after a pending term must be banned"
    assert not mask[7]
    # before the term is complete, the same bytes are harmless
    early = Cursor(masks.automaton, vocab)
    early.advance(1)
    assert not masks.banned(early.state, early.tail)[4]


def test_width_beyond_the_tokenizer_is_banned() -> None:
    masks = toy_masks(width=len(TOY) + 5)
    mask = masks.banned(START)
    assert mask.shape == (len(TOY) + 5,)
    assert mask[len(TOY) :].all()
    assert not mask[EOS]


def test_never_bans_everything() -> None:
    masks = TokenMasks(TermAutomaton(["ab"]), VocabularyIndex.from_texts([None, "ab."], eos_token_ids=[0]))
    cursor = cursor_after(masks, [])
    mask = masks.banned(cursor.state)
    assert mask[1] and not mask[0]


@pytest.mark.parametrize("seed", range(5))
def test_toy_masks_equal_reference_on_random_prefixes(seed: int) -> None:
    masks = toy_masks()
    rng = random.Random(seed)
    for _ in range(200):
        cursor = cursor_after(masks, [rng.randrange(1, len(TOY)) for _ in range(rng.randint(0, 5))])
        if cursor.matched:
            continue
        ends = masks.end_states(cursor.state, cursor.tail, cursor.after_lower)
        for token in range(len(TOY)):
            assert ends[token] == reference_end(masks, cursor, token)


# ---- the real tokenizer -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_vocab():
    transformers = pytest.importorskip("transformers")
    if not (MODEL_DIR / "tokenizer.json").exists():
        pytest.skip(f"model not prepared at {MODEL_DIR} (run `make setup`)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR))
    return tokenizer, VocabularyIndex.from_hf_tokenizer(tokenizer)


@pytest.fixture(scope="module", params=["word", "reader"])
def real(request, real_vocab):
    """The real tokenizer under the strict word-edge contract and under the default reader contract."""
    tokenizer, vocab = real_vocab
    automaton = TermAutomaton(TERMS) if request.param == "word" else TermAutomaton.reader(TERMS)
    return tokenizer, TokenMasks(automaton, vocab)


PREFIXES = ["", "Spider", "Spider-", "Spider-Man", "spider m", "Pok", "Poké", "Harry Pot", "BAT", "the ", "🕷", "x Pokémon",
            "team", "xX", "Sp1", "H4rry P0", "#Team", "b@", "teamBat"]  # fmt: skip


def _fragment_ids(tokenizer, rng: random.Random, text: str | None = None) -> list[int]:
    text = rng.choice(PREFIXES) if text is None else text
    tokens = tokenizer.encode(text, add_special_tokens=False)
    if "🕷" in text or "é" in text:
        tokens = tokens[: rng.randint(1, len(tokens))]  # may stop inside a multi-byte character
    return tokens


def test_real_masks_equal_reference(real) -> None:
    tokenizer, masks = real
    vocab = masks.vocab
    rng = random.Random(3)
    continuing = np.flatnonzero(vocab.continues_bytes).tolist()
    seen_tail = False
    for text in PREFIXES * 2:
        cursor = cursor_after(masks, _fragment_ids(tokenizer, rng, text))
        if cursor.matched:
            continue
        seen_tail |= bool(cursor.tail)
        ends = masks.end_states(cursor.state, cursor.tail, cursor.after_lower)
        mask = masks.banned(cursor.state, cursor.tail, after_lower=cursor.after_lower)
        last = masks.banned(cursor.state, cursor.tail, after_lower=cursor.after_lower, last=True)
        upper = np.flatnonzero(vocab.starts_upper).tolist()
        for token in (
            rng.sample(range(vocab.size), 300) + continuing[:40] + rng.sample(upper, 40) + [tokenizer.eos_token_id]
        ):
            end = reference_end(masks, cursor, token)
            assert ends[token] == end
            if vocab.token_bytes[token] is None:
                assert mask[token] == masks.automaton.is_pending(cursor.state)
            else:
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                decoder.decode(cursor.tail + vocab.token_bytes[token], final=False)
                trapped = masks.automaton.is_pending(end) and bool(decoder.getstate()[0])
                assert mask[token] == (end == DEAD or trapped)
                assert last[token] == (end == DEAD or masks.automaton.is_pending(end))
    assert seen_tail, "no prefix ended inside a multi-byte character; the byte path went untested"


def test_real_sampling_under_masks_never_produces_a_match(real) -> None:
    """Random walks that prefer tokens completing a term: with the masks, the decoded text never matches."""
    tokenizer, masks = real
    vocab = masks.vocab
    automaton = masks.automaton
    rng = random.Random(11)
    variants = ("{}", " {}", "{}.", "team{}", "xX{}Xx", "#Team{}", "🕷🌀", "\u200b")
    leet = str.maketrans("aeiost", "4310$7")
    lures = sorted(
        {
            t
            for term in TERMS
            for v in variants
            for w in (term, term.upper(), term.translate(leet))
            for t in tokenizer.encode(v.format(w), add_special_tokens=False)
        }
    )
    for _ in range(30):
        cursor = Cursor(automaton, vocab)
        out: list[int] = []
        length = rng.randint(1, 25)
        for step in range(length):
            mask = masks.banned(cursor.state, cursor.tail, after_lower=cursor.after_lower, last=step == length - 1)
            candidates = [t for t in lures if not mask[t]] if rng.random() < 0.8 else []
            if not candidates:
                candidates = [t for t in rng.sample(range(vocab.size), 50) if not mask[t]]
            token = rng.choice(candidates)
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
            cursor.advance(token)
            assert not cursor.matched
        text = tokenizer.decode(out, skip_special_tokens=True)
        assert find_matches(automaton, text) == [], text
        if automaton.modes and automaton.modes[0] is not MatchMode.WORD:
            assert not term_read(TERMS, text), text  # the eval's reader judge, written apart from the automaton


def test_real_unmasked_walks_do_match(real) -> None:
    """Control for the test above: the same lures without masks produce matches, so the test can fail."""
    tokenizer, masks = real
    text = tokenizer.decode(tokenizer.encode("Say Spider-Man. POKÉMON!", add_special_tokens=False))
    assert find_matches(masks.automaton, text)
    matcher = StreamMatcher(masks.automaton)
    assert matcher.feed(text)


def test_plugin_precomputes_start_masks_in_spare_time_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's precomputing thread must not take CPU from decode steps: it runs as Linux `SCHED_IDLE`, and the
    decoding thread keeps its own policy."""
    import os
    import threading

    pytest.importorskip("vllm")
    if not (MODEL_DIR / "tokenizer.json").exists():
        pytest.skip(f"model not prepared at {MODEL_DIR} (run `make setup`)")
    from filters import vllm_plugin
    from tests.filters.greedy_copier import processor_and_tokenizer

    policies: list[int] = []

    def record(self: TokenMasks, depth: int = 2, budget_s: float | None = None, stop: object = None) -> int:
        policies.append(os.sched_getscheduler(0))
        return 0

    monkeypatch.setattr(TokenMasks, "warm_start", record)
    proc, _ = processor_and_tokenizer(MODEL_DIR)
    before = os.sched_getscheduler(0)
    terms = vllm_plugin.parse_terms({"quell_terms": ["Spider-Man"]})
    proc._masks_for(vllm_plugin.term_set_key(terms), terms)
    for thread in threading.enumerate():
        if thread.name.startswith("quell-warm-"):
            thread.join(timeout=30)
    assert policies == [os.SCHED_IDLE]
    assert os.sched_getscheduler(0) == before != os.SCHED_IDLE


def test_plugin_logs_through_vllms_handlers() -> None:
    """In vLLM's worker only the `vllm` logger has handlers (vLLM configures them before it builds logits
    processors): the plugin's INFO lines must reach them. The handler here stands in for vLLM's stream handler."""
    import io
    import logging

    pytest.importorskip("vllm")
    if not (MODEL_DIR / "tokenizer.json").exists():
        pytest.skip(f"model not prepared at {MODEL_DIR} (run `make setup`)")
    from tests.filters.greedy_copier import processor_and_tokenizer

    vllm_log, package, stream = logging.getLogger("vllm"), logging.getLogger("filters"), io.StringIO()
    handler = logging.StreamHandler(stream)
    saved = (vllm_log.level, package.level, list(package.handlers))
    vllm_log.addHandler(handler)
    vllm_log.setLevel(logging.INFO)
    try:
        processor_and_tokenizer(MODEL_DIR)
        assert "Quell decode-time masking ready" in stream.getvalue()
    finally:
        vllm_log.removeHandler(handler)
        vllm_log.setLevel(saved[0])
        package.setLevel(saved[1])
        package.handlers[:] = saved[2]
