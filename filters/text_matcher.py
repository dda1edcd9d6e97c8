"""Find terms in text, one-shot or streaming, with spans in the original text.

Uses the same trie and the same semantics as the decode-time automaton (`filters.automaton`): a term starts at a
word edge, its word characters follow in order with any separators between them, and it ends at a word edge (a
separator or the end of text). The streaming matcher holds back only the suffix that could still become part of a
match and releases everything before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from filters.automaton import TermAutomaton
from filters.normalize import SEPARATOR, normalize_char


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
    _live: dict[int, int] = field(default_factory=dict)  # trie node -> start offset of its earliest partial match
    _last_word_end: dict[int, int] = field(default_factory=dict)  # trie node -> end offset of its last word char
    _at_edge: bool = True
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
        children = self.automaton.trie.children
        root = children[0]
        prefix_nodes = self.automaton.prefix_nodes
        live = self._live
        for ch in text:
            pos = self._pos
            self._pos = pos + 1
            if not live and not self._at_edge and ch.isalnum() and ch.isascii():
                continue  # fast path: inside a word that started no term
            for sym in normalize_char(ch):
                if sym == SEPARATOR:
                    if live:
                        self._confirm(found)
                    self._at_edge = True
                    continue
                nxt: dict[int, int] = {}
                nxt_end: dict[int, int] = {}
                for node, start in live.items():
                    child = children[node].get(sym)
                    if child is not None and (child not in nxt or start < nxt[child]):
                        nxt[child] = start
                        nxt_end[child] = pos + 1
                if self._at_edge:
                    child = root.get(sym)
                    if child is not None and child not in nxt:
                        nxt[child] = pos
                        nxt_end[child] = pos + 1
                if prefix_nodes and not prefix_nodes.isdisjoint(nxt):
                    self._confirm_prefix(nxt, nxt_end, found)
                live = self._live = nxt
                self._last_word_end = nxt_end
                self._at_edge = False
        return found

    def finish(self) -> list[Match]:
        """End of text is a word edge: confirm completed terms and release everything."""
        found: list[Match] = []
        self._confirm(found)
        self._live = {}
        self._last_word_end = {}
        self._closed = True
        return found

    def _confirm_prefix(self, nxt: dict[int, int], nxt_end: dict[int, int], found: list[Match]) -> None:
        """Prefix terms match the moment their last word character arrives; the node stays live only if a longer
        term can still grow from it."""
        trie, terms = self.automaton.trie, self.automaton.terms
        for node in [n for n in nxt if n in self.automaton.prefix_nodes]:
            found.append(Match(terms[trie.terminal[node][0]], nxt[node], nxt_end[node]))
            if not trie.children[node]:
                del nxt[node], nxt_end[node]

    def _confirm(self, found: list[Match]) -> None:
        terminal = self.automaton.trie.terminal
        terms = self.automaton.terms
        prefix_nodes = self.automaton.prefix_nodes
        for node, start in self._live.items():
            if terminal[node] and node not in prefix_nodes:  # several terms can share a node: one match
                found.append(Match(terms[terminal[node][0]], start, self._last_word_end[node]))
        # Completed nodes with no children can never match again; drop them so they stop holding text back.
        children = self.automaton.trie.children
        done = [node for node in self._live if terminal[node] and not children[node]]
        for node in done:
            del self._live[node]
            del self._last_word_end[node]


def find_matches(automaton: TermAutomaton, text: str) -> list[Match]:
    """All matches in a complete text."""
    matcher = StreamMatcher(automaton)
    return matcher.feed(text) + matcher.finish()


def merge_spans(matches: list[Match]) -> Iterator[tuple[int, int]]:
    """Overlapping or touching match spans merged, in order."""
    spans = sorted((m.start, m.end) for m in matches)
    if not spans:
        return
    cur_start, cur_end = spans[0]
    for start, end in spans[1:]:
        if start <= cur_end:
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
