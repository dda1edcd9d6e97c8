"""Banned-token masks per automaton state, and the per-request cursor that tracks the state through sampled tokens.

Split three ways (STYLE.md, "Take" 3): `VocabularyIndex` (per tokenizer, immutable), `TermAutomaton` (per term set,
shared, grows lazily), `TokenMasks` (per term set x tokenizer: the mask kernel and its cache) and `Cursor` (per
request: automaton state, the UTF-8 bytes still pending, and whether the text so far ends on a lowercase letter).

A token is banned from cursor (q, pending bytes, after_lower) when its text, fed from there, reaches `DEAD` (a confirmed match).
Text-less (special) tokens, end-of-sequence included, are banned while q is pending: they either end the text (end of
text is a word edge, so the waiting term would match) or are invisible and change nothing. On the step where
generation will be cut (`banned_last`), tokens that end in a pending state are banned too.

The kernel runs the DFA over the whole vocabulary at once: a [token, position] table of symbol classes, one numpy
gather per position, unknown transitions computed on demand. Cursors with pending bytes (a token ended inside a
multi-byte character) reuse the clean-stream result for every token that does not start with a continuation byte
(the pending bytes become U+FFFD, a separator, before it) and decode the few others one by one. A lowercase letter
followed by an uppercase one is a word start (`filters.normalize.surface_symbols`), and that crosses token
boundaries: after text ending on a lowercase letter, a token whose first visible character is uppercase reads as a
separator and then its own symbols, so its end state is taken from the clean-stream result of (q, separator). The
cursor carries that bit; masks are exact for it, never approximated.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from filters.automaton import DEAD, OTHER_CLASS, SEP_CLASS, START, TermAutomaton
from filters.normalize import surface_symbols
from filters.vocab import VocabularyIndex

log = logging.getLogger(__name__)

MAX_CACHED_MASKS = 1024
"""Masks kept per term set (one bool per token id: 48 KiB for a 49k vocabulary); cleared when full."""
MAX_CACHED_END_STATES = 128
PATTERN_WARM_DIGITS = 12
"""`warm_start` with patterns also walks runs of up to this many digits (phone and card numbers)."""
"""End-state arrays kept per term set (one int32 per token id); cleared when full."""


class TokenMasks:
    """Masks for one term set over one vocabulary, computed lazily per cursor position and cached.

    `width` is the number of logits per row (the model's vocabulary, which may exceed the tokenizer's); ids without a
    token are always banned.
    """

    def __init__(self, automaton: TermAutomaton, vocab: VocabularyIndex, width: int | None = None):
        width = vocab.size if width is None else width
        if width < vocab.size:
            raise ValueError(f"mask width {width} is smaller than the tokenizer's vocabulary of {vocab.size} tokens")
        self.automaton = automaton
        self.vocab = vocab
        self.width = width
        table = vocab.char_table
        class_of_char = np.array([automaton.symbol_class(ch) for ch in vocab.alphabet], dtype=np.int32)
        self._classes = class_of_char[table.chars]
        self._order = table.order
        self._active = table.active.tolist()
        self._special = np.flatnonzero(~vocab.has_text)
        self._continuing = np.flatnonzero(vocab.continues_bytes)
        self._has_tail = np.array([bool(t) for t in vocab.tails], dtype=np.bool_)
        self._upper = np.flatnonzero(vocab.starts_upper)
        # The same table restricted to those tokens (a few thousand of ~50k), for the after-lowercase case.
        upper_rows = np.flatnonzero(vocab.starts_upper[self._order])
        upper_lengths = np.array([len(vocab.symbols[t]) for t in self._order[upper_rows].tolist()], dtype=np.int64)
        self._upper_order = self._order[upper_rows]
        self._upper_classes = self._classes[upper_rows]
        self._upper_active = [int((upper_lengths > p).sum()) for p in range(self._classes.shape[1])]
        self._upper_ends: dict[int, np.ndarray] = {}
        self._ends: dict[int, np.ndarray] = {}
        self._banned: dict[tuple[int, bytes, bool, bool], np.ndarray] = {}

    # ---- public -------------------------------------------------------------------------------------------
    def banned(self, state: int, tail: bytes = b"", *, after_lower: bool = False, last: bool = False) -> np.ndarray:
        """Bool per token id: sampling it from (state, tail, after_lower) would produce a match (`last`: or leave
        one pending).

        Never bans every id: if it would, the end-of-sequence ids stay open (and that is logged).
        The returned array is cached and shared: do not modify it.
        """
        key = (state, tail, after_lower, last)
        mask = self._banned.get(key)
        if mask is None:
            if len(self._banned) >= MAX_CACHED_MASKS:
                self._banned.clear()
            mask = self._compute_banned(state, tail, after_lower, last)
            self._banned[key] = mask
        return mask

    def warm_start(self, depth: int = 2, budget_s: float | None = None, stop: threading.Event | None = None) -> int:
        """Precompute the masks decoding meets first: at a word start and inside a word that began no term, then
        after each term's first `depth` characters from there, breadth first (with patterns, also along a run of
        digits). Stops after `budget_s` seconds, when
        `stop` is set, or when the mask cache is full. Returns the number of masks it computed (not found cached).

        Meant for a background thread at compile time (`filters.vllm_plugin`): first visits to these states would
        otherwise compute their masks on the decode step."""
        automaton = self.automaton
        deadline = None if budget_s is None else time.monotonic() + budget_s
        following: dict[str, set[str]] = {}
        for key in automaton.keys:
            for i in range(min(depth, len(key))):
                following.setdefault(key[:i], set()).add(key[i])
        if automaton.patterns:  # identifiers: the states of a digit run (one digit stands for all), and after a space
            following.setdefault("", set()).update("05")
            for run in range(1, PATTERN_WARM_DIGITS):
                following.setdefault("5" * run, set()).update("5 ")
        # (state, after_lower, the term characters that led there)
        frontier = [(START, False, ""), (automaton.step(START, OTHER_CLASS), True, "")]
        seen: set[tuple[int, bool]] = set()
        done = 0
        while frontier:
            nxt: list[tuple[int, bool, str]] = []
            for state, after_lower, path in frontier:
                if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() > deadline):
                    return done
                if state != DEAD and (state, after_lower) not in seen:
                    if len(self._banned) >= MAX_CACHED_MASKS - 1:
                        return done
                    seen.add((state, after_lower))
                    if (state, b"", after_lower, False) not in self._banned:
                        self.banned(state, after_lower=after_lower)
                        done += 1
                for ch in sorted(following.get(path, ())):
                    nxt.append((automaton.run(state, automaton.classes(ch)), ch.islower(), path + ch))
            frontier = nxt
        return done

    def end_states(self, state: int, tail: bytes = b"", after_lower: bool = False) -> np.ndarray:
        """int32 per tokenizer id: the state after its text from the cursor; text-less tokens keep `state`."""
        return self._ends_and_tails(state, tail, after_lower)[0]

    def _ends_and_tails(self, state: int, tail: bytes, after_lower: bool) -> tuple[np.ndarray, np.ndarray]:
        """End states, and whether each token leaves bytes of an unfinished character pending."""
        if not tail:
            ends = self._clean_ends(state)
            if after_lower and len(self._upper):
                ends = ends.copy()
                ends[self._upper_order] = self._upper_clean_ends(self.automaton.step(state, SEP_CLASS))
            return ends, self._has_tail
        # The pending bytes come out as U+FFFD (a separator) before any token that does not continue them.
        ends = self._clean_ends(self.automaton.step(state, SEP_CLASS)).copy()
        ends[self._special] = state
        tails = self._has_tail.copy()
        for token in self._continuing.tolist():
            decoder = _decoder_after(tail)
            text = decoder.decode(self.vocab.token_bytes[token], final=False)
            ends[token] = self.automaton.run(state, self.automaton.classes(text, after_lower))
            tails[token] = bool(decoder.getstate()[0])
        return ends, tails

    # ---- kernel -------------------------------------------------------------------------------------------
    def _clean_ends(self, state: int) -> np.ndarray:
        ends = self._ends.get(state)
        if ends is not None:
            return ends
        ends = np.full(self.vocab.size, state, dtype=np.int32)
        ends[self._order] = self._run_table(state, self._classes, self._active)
        if len(self._ends) >= MAX_CACHED_END_STATES:
            self._ends.clear()
        self._ends[state] = ends
        return ends

    def _upper_clean_ends(self, state: int) -> np.ndarray:
        """End states of the upper-starting tokens (in `_upper_order`) from `state`."""
        ends = self._upper_ends.get(state)
        if ends is None:
            if len(self._upper_ends) >= MAX_CACHED_END_STATES:
                self._upper_ends.clear()
            ends = self._upper_ends[state] = self._run_table(state, self._upper_classes, self._upper_active)
        return ends

    def _run_table(self, state: int, table: np.ndarray, active: list[int]) -> np.ndarray:
        """The DFA over every row of a [token, position] class table at once, from `state`."""
        automaton = self.automaton
        states = np.full(len(table), state, dtype=np.int32)
        for position, count in enumerate(active):
            if not count:
                break
            current = states[:count]
            classes = table[:count, position]
            nxt = automaton.gather(current, classes)
            if nxt.min() < 0:
                automaton.fill(current, classes, nxt)
                nxt = automaton.gather(current, classes)
            states[:count] = nxt
        return states

    def _compute_banned(self, state: int, tail: bytes, after_lower: bool, last: bool) -> np.ndarray:
        ends, tails = self._ends_and_tails(state, tail, after_lower)
        mask = np.ones(self.width, dtype=np.bool_)
        pending = self.automaton.pending[ends]
        text_banned = (ends == DEAD) | (pending & tails)
        if last:
            text_banned |= pending
        mask[: self.vocab.size] = text_banned
        mask[self._special] = self.automaton.is_pending(state)
        if mask.all():
            eos = sorted(self.vocab.eos_token_ids)
            log.warning("every token would complete a listed term from state %d; leaving end-of-sequence open", state)
            mask[eos] = False
        return mask


def _decoder_after(tail: bytes) -> codecs.IncrementalDecoder:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(tail, final=False)
    return decoder


@dataclass
class Cursor:
    """One request's position: the automaton state after the text so far, the UTF-8 bytes still pending, and whether
    the text so far ends on a lowercase letter (an uppercase letter next would start a word)."""

    automaton: TermAutomaton
    vocab: VocabularyIndex
    state: int = START
    after_lower: bool = False
    consumed: int = 0
    """Output token ids advanced over so far."""
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    @property
    def tail(self) -> bytes:
        return self._decoder.getstate()[0]

    @property
    def matched(self) -> bool:
        return self.state == DEAD

    def advance(self, token_id: int) -> int:
        """Feed one sampled token; returns the new state. Ids outside the tokenizer are treated as text-less."""
        self.consumed += 1
        data = self.vocab.token_bytes[token_id] if 0 <= token_id < self.vocab.size else None
        if data is None or self.state == DEAD:
            return self.state
        text = self._decoder.decode(data, final=False)
        classes = self.automaton.classes(text, self.after_lower)
        self.after_lower = surface_symbols(text, self.after_lower)[1]
        self.state = self.automaton.run(self.state, classes)
        return self.state
