"""Find terms in text, one-shot or streaming, with spans in the original text.

Uses the same tries, the same NFA step (`TermAutomaton.advance`) and so the same contract as the decode-time
automaton (`filters.automaton`): word starts (including a lowercase letter followed by an uppercase one), stand-ins,
and each term's mode (word, prefix, inside). The streaming matcher holds back only the suffix that could still
become part of a match and releases everything before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from filters.automaton import SEP_CLASS, TermAutomaton
from filters.normalize import SEPARATOR, surface_char


@dataclass(frozen=True)
class Match:
    """One occurrence of a term: `text[start:end]` in the original (un-normalised) text."""

    term: str
    start: int
    end: int


@dataclass
class StreamMatcher:
    """Feed text chunk by chunk; `feed` returns newly confirmed matches, `safe_end` says how much can be released.

    Offsets are absolute positions in the concatenation of everything fed so far.
    """

    automaton: TermAutomaton
    _live: dict[int, int] = field(default_factory=dict)  # configuration -> start offset of its earliest match
    _last_end: dict[int, int] = field(default_factory=dict)  # configuration -> end offset of its last word char
    _reported: set[tuple[int, int]] = field(default_factory=set)  # (configuration, start) already reported
    _at_edge: bool = True
    _after_lower: bool = False
    _pos: int = 0
    _closed: bool = False

    @property
    def position(self) -> int:
        """Characters consumed so far."""
        return self._pos

    @property
    def safe_end(self) -> int:
        """Every character before this offset can never become part of a match."""
        if not self._live:
            return self._pos
        return min(self._live.values())

    def feed(self, text: str) -> list[Match]:
        if self._closed:
            raise RuntimeError("StreamMatcher.feed after finish()")
        found: list[Match] = []
        automaton = self.automaton
        fast = not automaton.has_inside
        for ch in text:
            pos = self._pos
            self._pos = pos + 1
            if (fast and not self._live and not self._at_edge and ch.isascii() and ch.isalnum()
                    and not (self._after_lower and ch.isupper())):  # fmt: skip
                # inside a word that started no term (a case change would be a word start: the slow path)
                self._after_lower = ch.islower()
                continue
            syms = surface_char(ch)
            if not syms:
                continue
            if self._after_lower and (ch.isupper() or ch.istitle()):
                syms = SEPARATOR + syms
            self._after_lower = ch.islower()
            for sym in syms:
                self._step(automaton.symbol_class(sym), pos, found)
        return found

    def _step(self, cls: int, pos: int, found: list[Match]) -> None:
        if cls == SEP_CLASS and not self._live and not self.automaton.patterns:  # a pattern may read a separator
            self._at_edge = True
            return
        automaton = self.automaton
        live, at_edge, matched, reached = automaton.advance(self._live, self._at_edge, cls, pos)
        last_end = {c: self._last_end[c] for c in live if c not in reached and c in self._last_end}
        last_end.update((c, pos + 1) for c in reached)
        children = automaton.trie.children
        for config, start in matched:
            by_edge = config not in reached
            if (config, start) not in self._reported:
                self._reported.add((config, start))
                found.append(Match(automaton.term_at(config, by_edge), start, last_end[config]))
            if config >= 0 and not children[config >> 1]:
                # a complete term with nothing longer to grow into can never match again
                live.pop(config, None)
        self._live, self._last_end, self._at_edge = live, last_end, at_edge
        if self._reported:
            self._reported = {(c, s) for c, s in self._reported if live.get(c) == s}

    def finish(self) -> list[Match]:
        """End of text is a word edge: confirm completed terms and release everything."""
        found: list[Match] = []
        self._step(SEP_CLASS, self._pos, found)
        self._live = {}
        self._last_end = {}
        self._reported = set()
        self._closed = True
        return found


def find_matches(automaton: TermAutomaton, text: str) -> list[Match]:
    """All matches in a complete text."""
    matcher = StreamMatcher(automaton)
    return matcher.feed(text) + matcher.finish()


def merge_spans(matches: list[Match]) -> Iterator[tuple[int, int]]:
    """Overlapping match spans merged, in order. Touching spans stay apart ("PeterParkerSpiderMan" is two matches
    under the case-change rule): a stream releases the first before it sees the second, and one-shot redaction must
    say the same."""
    spans = sorted((m.start, m.end) for m in matches)
    if not spans:
        return
    cur_start, cur_end = spans[0]
    for start, end in spans[1:]:
        if start < cur_end:
            cur_end = max(cur_end, end)
        else:
            yield cur_start, cur_end
            cur_start, cur_end = start, end
    yield cur_start, cur_end


def redact(text: str, matches: list[Match], placeholder: str = "[redacted]") -> str:
    """`text` with every matched span replaced by `placeholder`."""
    out, last = [], 0
    for start, end in merge_spans(matches):
        out.append(text[last:start])
        out.append(placeholder)
        last = end
    out.append(text[last:])
    return "".join(out)
