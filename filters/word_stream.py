"""A text stage that reads words as they stream and acts on runs of them: the shared part of the protected-text stage
(`filters.protected_text.ProtectedStream`) and the near-spelling stage (`filters.near_names.NearNameStream`).

Words are read as the surface layer reads them (`filters.normalize.normalize_char`: case and look-alikes folded; every
separator ends a word). A subclass says what a closed word completes (`_on_word`: hits, as decisions) and which of
the last words a later word could still join (`_may_join`); this class holds back exactly those, redacts what a
redacting hit covers, and cuts or refuses on a stopping one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from filters.decision import Action, Decision
from filters.normalize import SEPARATOR, normalize_char
from filters.text_matcher import Match, merge_spans, redact

if TYPE_CHECKING:
    from filters.stream_guard import GuardStep


@dataclass
class Word:
    start: int
    end: int
    text: str  # normalised symbols


@dataclass
class WordHit:
    """One finding on the words: the decision (its span is the text to redact or cut at) and, for `refuse`, the
    refusal text."""

    decision: Decision
    refusal: str | None = None


@dataclass(kw_only=True)
class WordStream:
    """Feed text chunk by chunk (or `pipe` another stage's steps through it). Subclasses set `keep` (how many
    closed words `_on_word` may look back at) and implement `_on_word` and `_may_join`."""

    keep: int = 0
    split_case: bool = False
    """A case change inside a word ("DemiMoore") ends the word, as the surface layer reads it."""
    seconds: float = 0.0
    _buffer: str = ""
    _base: int = 0
    _pos: int = 0
    _words: list[Word] = field(default_factory=list)  # the last closed words (at most `keep`)
    _current: Word | None = None
    _pending: list[Match] = field(default_factory=list)
    _stopped: bool = False
    _after_lower: bool = False

    def _on_word(self, word: Word, previous: list[Word]) -> list[WordHit]:
        """What closing `word` (after the `previous` closed words, oldest first) completes."""
        raise NotImplementedError

    def _may_join(self, word: Word) -> bool:
        """Whether a later word could still complete a hit that starts at or before this held word."""
        raise NotImplementedError

    def pipe(self, step: GuardStep, final: bool) -> GuardStep:
        """Run an earlier stage's released text through this one; `final` (or a stop there) ends the text."""
        from filters.stream_guard import GuardStep  # stream_guard -> surface -> policy -> the subclasses' modules

        started = time.perf_counter()
        own = self.feed(step.text)
        if (final or step.stopped) and not own.stopped:
            end = self.finish()
            own = GuardStep(own.text + end.text, own.decisions + end.decisions, end.stopped, end.refusal)
        self.seconds += time.perf_counter() - started
        stopped = step.stopped or own.stopped
        return GuardStep(own.text, step.decisions + own.decisions, stopped, step.refusal or own.refusal)

    def feed(self, text: str) -> GuardStep:
        if self._stopped:
            return _step("", stopped=True)
        self._buffer += text
        hits: list[WordHit] = []
        for ch in text:
            pos = self._pos
            self._pos += 1
            symbols = normalize_char(ch)
            if self.split_case and symbols:
                if self._after_lower and (ch.isupper() or ch.istitle()):
                    self._close(hits)
                self._after_lower = ch.islower()
            for sym in symbols:
                if sym == SEPARATOR:
                    self._close(hits)
                elif self._current is None:
                    self._current = Word(pos, pos + 1, sym)
                else:
                    self._current.text += sym
                    self._current.end = pos + 1
        return self._decide(hits, final=False)

    def finish(self) -> GuardStep:
        if self._stopped:
            return _step("", stopped=True)
        hits: list[WordHit] = []
        self._close(hits)
        return self._decide(hits, final=True)

    def _close(self, hits: list[WordHit]) -> None:
        word, self._current = self._current, None
        if word is None:
            return
        hits += self._on_word(word, self._words)
        self._words.append(word)
        del self._words[: -self.keep or None]

    def _hold_from(self) -> int:
        """Offset of the earliest word a later word could still join into a hit."""
        hold = self._current.start if self._current is not None else self._pos
        for word in reversed(self._words):
            if not self._may_join(word):
                break
            hold = word.start
        return hold

    def _decide(self, hits: list[WordHit], final: bool) -> GuardStep:
        decisions = tuple(h.decision for h in hits)
        terminal = [h for h in hits if h.decision.action in (Action.STOP, Action.REFUSE)]
        if terminal:
            self._stopped = True
            refusal = next((h.refusal for h in terminal if h.decision.action is Action.REFUSE), None)
            return _step(self._take(min(h.decision.start or 0 for h in terminal)), decisions, True, refusal)
        spans = [(m.start, m.end) for m in self._pending] + [
            (h.decision.start or 0, h.decision.end or 0) for h in hits if h.decision.action.blocks
        ]
        self._pending = [Match("", a, b) for a, b in merge_spans([Match("", a, b) for a, b in spans])]
        boundary = self._pos if final else self._hold_from()
        for m in self._pending:
            if m.end > boundary:
                boundary = min(boundary, m.start)
        return _step(self._take(boundary), decisions)

    def _take(self, upto: int) -> str:
        upto = max(upto, self._base)
        inside = [m for m in self._pending if m.end <= upto]
        self._pending = [m for m in self._pending if m.end > upto]
        chunk = self._buffer[: upto - self._base]
        from filters.stream_guard import REDACTION

        shifted = [Match("", max(m.start, self._base) - self._base, m.end - self._base) for m in inside]
        text = redact(chunk, shifted, REDACTION)
        self._buffer = self._buffer[upto - self._base :]
        self._base = upto
        return text


def _step(text: str, decisions: tuple[Decision, ...] = (), stopped: bool = False,
          refusal: str | None = None) -> GuardStep:  # fmt: skip
    from filters.stream_guard import GuardStep

    return GuardStep(text, decisions, stopped, refusal)
