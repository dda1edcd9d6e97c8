"""One compiled automaton over normalised symbols for all active terms.

Shared by the streaming text matcher (`filters.text_matcher`) and the decode-time token masks (`filters.token_mask`).

The matching contract, as a reader reads (DESIGN.md, "Surface layer"). A term's word characters must appear in
order, with any separators between them, and at least one of them read as itself (not through a stand-in). Where
the term may begin and end depends on its mode (`MatchMode`):
- `word`: from a word start to a word edge ("Spiderman", not "Spidermanagement");
- `prefix`: from a word start, whatever follows ("Spidermanizzato", "Spiderman2018");
- `inside`: anywhere, also inside a word ("#TeamSpiderman" is a word start anyway; "xxspidermanxx" is inside).
A word start is the start of text, a separator, a stand-in mark read as a separator, or a lowercase letter followed
by an uppercase one (`filters.normalize.surface_symbols`). Stand-ins (`filters.normalize.STAND_INS`) may be read as
any of their letters ("Sp1derman", "H4rry P0773r"); a match needs one character read as itself, so plain numbers never
spell a term. `reader_mode` is the default: `prefix`, and `inside` for terms of at least `INSIDE_MIN_CHARS`.

Patterns (`filters.patterns`: regular expressions for identifiers such as e-mail addresses or card numbers) run in
the same automaton: each is a small DFA over the same symbol classes, and a DFA state also holds the set of pattern
states live so far (a pattern may start at any symbol). A pattern reads separators (a run of them as one, none at the
start or right after a stand-in mark) where terms skip them; a pattern that reaches a final state is a match (`DEAD`)
like a term. Configurations of patterns are negative numbers, `-(global pattern state + 1)`.

Structure: two tries (terms that need a word start; `inside` terms, which may start anywhere), immutable once built,
and a deterministic automaton over them, determinised lazily. An NFA configuration is a trie node plus one bit (a
character was read as itself); a DFA state is a set of configurations plus whether the last symbol was a word edge.
State `DEAD` is absorbing: "a match has happened".
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import numpy as np

from filters.normalize import SEPARATOR, STAND_IN_MARKS, STAND_INS, surface_symbols, word_chars
from filters.patterns import compile_pattern

DEAD = 0
START = 1

SEP_CLASS = 0
OTHER_CLASS = 1
"""Symbol classes: every separator is class 0, a word character that occurs in no term (and stands in for no letter
of one) is class 1, then one class per character that matters."""

INSIDE_MIN_CHARS = 7
"""`reader_mode`: terms with at least this many word characters match inside words too (chosen from over-blocking
measured on benign text, `bench.term_overblocking`; see docs/suppression-results.md)."""

P = TypeVar("P")


class TermError(ValueError):
    """A term cannot be compiled (empty once normalised, for example)."""


class MatchMode(StrEnum):
    WORD = "word"
    PREFIX = "prefix"
    INSIDE = "inside"


def reader_mode(term: str) -> MatchMode:
    """The default mode of a term: any ending, and also inside a word when it is long enough not to hit ordinary
    words."""
    return MatchMode.INSIDE if len(word_chars(term)) >= INSIDE_MIN_CHARS else MatchMode.PREFIX


@dataclass(frozen=True)
class Trie:
    """Two tries in one node table: root `EDGE_ROOT` holds the terms that need a word start, `INSIDE_ROOT` the
    `inside` terms."""

    children: tuple[dict[str, int], ...]
    terminal: tuple[tuple[int, ...], ...]
    """Term indices that end at each node."""


EDGE_ROOT = 0
INSIDE_ROOT = 1


def _build_trie(edge_keys: Sequence[tuple[int, str]], inside_keys: Sequence[tuple[int, str]]) -> Trie:
    children: list[dict[str, int]] = [{}, {}]
    terminal: list[list[int]] = [[], []]
    for root, keys in ((EDGE_ROOT, edge_keys), (INSIDE_ROOT, inside_keys)):
        for index, key in keys:
            node = root
            for ch in key:
                nxt = children[node].get(ch)
                if nxt is None:
                    nxt = len(children)
                    children[node][ch] = nxt
                    children.append({})
                    terminal.append([])
                node = nxt
            terminal[node].append(index)
    return Trie(tuple(children), tuple(tuple(t) for t in terminal))


def _readings(ch: str) -> tuple[tuple[str, bool], ...]:
    """(letter, read as itself) for each way a normalised word character or stand-in mark can be read."""
    out = [] if ch in STAND_IN_MARKS else [(ch, True)]
    out += [(letter, False) for letter in STAND_INS.get(ch, "")]
    return tuple(out)


class TermAutomaton:
    """All terms of a term set compiled once; thread-safe (lazy DFA growth happens under a lock)."""

    def __init__(self, terms: Iterable[str] = (), prefix: Iterable[str] = (), inside: Iterable[str] = (),
                 patterns: Iterable[str] = ()):  # fmt: skip
        """`terms` match between word edges, `prefix` terms from a word start whatever follows, `inside` terms
        anywhere (see the module docstring). A term given in several modes gets the widest. `patterns` are regular
        expressions (`filters.patterns`; `PatternError`, a ValueError, for one outside the subset)."""
        modes: dict[str, MatchMode] = {}
        for mode, group in ((MatchMode.WORD, terms), (MatchMode.PREFIX, prefix), (MatchMode.INSIDE, inside)):
            for term in group:
                modes[term] = mode  # later groups are wider
        self.terms: tuple[str, ...] = tuple(modes)
        self.modes: tuple[MatchMode, ...] = tuple(modes.values())
        keys = []
        for term in self.terms:
            key = word_chars(term)
            if not key:
                raise TermError(f"term {term!r} has no letters or digits once normalised, so it can never match")
            keys.append(key)
        self.keys: tuple[str, ...] = tuple(keys)
        edge = [(i, k) for i, k in enumerate(keys) if self.modes[i] is not MatchMode.INSIDE]
        inside_keys = [(i, k) for i, k in enumerate(keys) if self.modes[i] is MatchMode.INSIDE]
        self.trie = _build_trie(edge, inside_keys)
        self.patterns: tuple[str, ...] = tuple(dict.fromkeys(patterns))
        compiled = [compile_pattern(p) for p in self.patterns]
        self.has_inside = bool(inside_keys) or bool(compiled)
        """Whether a match may start inside a word (an `inside` term or any pattern)."""
        terminal = self.trie.terminal
        # Nodes where a term is complete: `any_end` matches at once, `word_end` waits for a word edge.
        self.any_end: frozenset[int] = frozenset(
            n for n, ends in enumerate(terminal) if any(self.modes[i] is not MatchMode.WORD for i in ends)
        )
        self.word_end: frozenset[int] = frozenset(
            n for n, ends in enumerate(terminal) if any(self.modes[i] is MatchMode.WORD for i in ends)
        )
        alphabet = {ch for key in keys for ch in key}
        relevant = set(alphabet)
        relevant |= {s for s, letters in STAND_INS.items() if alphabet.intersection(letters)}
        relevant |= STAND_IN_MARKS  # always their own class: as letters they may be nothing, but never "other"
        relevant |= {ch for p in compiled for ch in p.chars if ch != SEPARATOR}
        symbols = sorted(relevant)
        self.class_of: dict[str, int] = {ch: i + 2 for i, ch in enumerate(symbols)}
        self.class_char: tuple[str, ...] = (SEPARATOR, "", *symbols)
        self.num_classes = len(self.class_char)
        self._class_readings = tuple(_readings(ch) if ch else () for ch in self.class_char)
        self._class_is_sep = tuple(ch == SEPARATOR or ch in STAND_IN_MARKS for ch in self.class_char)
        # Every pattern's DFA over these classes, in one table of global pattern states (-1: no match continues).
        tables = [p.table(self.class_char) for p in compiled]
        offsets = np.cumsum([0] + [len(t[0]) for t in tables])
        self._pat_next = np.full((int(offsets[-1]), self.num_classes), -1, dtype=np.int32)
        self._pat_final = np.zeros(int(offsets[-1]), dtype=np.bool_)
        self._pat_owner = np.zeros(int(offsets[-1]), dtype=np.int32)
        for i, (delta, final, _) in enumerate(tables):
            lo = int(offsets[i])
            self._pat_next[lo : lo + len(delta)] = np.where(delta >= 0, delta + lo, -1)
            self._pat_final[lo : lo + len(delta)] = final
            self._pat_owner[lo : lo + len(delta)] = i
        self._pat_starts: tuple[int, ...] = tuple(-(int(offsets[i]) + t[2] + 1) for i, t in enumerate(tables))
        """The start configuration of every pattern."""
        # Lazily determinised DFA. States are interned (configurations, at_edge); DEAD has no key.
        self._lock = threading.RLock()
        self._state_key: list[tuple[frozenset[int], bool] | None] = [None, (frozenset(), True)]
        self._state_id: dict[tuple[frozenset[int], bool], int] = {(frozenset(), True): START}
        # Transition table as a growable numpy int32 array (-1 = not computed yet), so the mask kernel
        # (`filters.token_mask`) can gather from it for the whole vocabulary at once. Rows past `num_states` are spare.
        self._num_states = 2
        self._delta = np.full((64, self.num_classes), -1, dtype=np.int32)
        self._delta[DEAD] = DEAD
        self._pending = np.zeros(64, dtype=np.bool_)

    @classmethod
    def reader(cls, terms: Iterable[str]) -> TermAutomaton:
        """Every term in its default (`reader_mode`) mode."""
        terms = list(terms)
        modes = {t: reader_mode(t) for t in terms}
        return cls(prefix=[t for t in terms if modes[t] is MatchMode.PREFIX],
                   inside=[t for t in terms if modes[t] is MatchMode.INSIDE])  # fmt: skip

    # ---- symbols -------------------------------------------------------------------------------------------
    def symbol_class(self, sym: str) -> int:
        """The class of one normalised symbol (a word character, a stand-in mark or `SEPARATOR`)."""
        if sym == SEPARATOR:
            return SEP_CLASS
        return self.class_of.get(sym, OTHER_CLASS)

    def classes(self, text: str, after_lower: bool = False) -> list[int]:
        """Symbol classes of a text, separators collapsed (a run of separators acts as one). `after_lower`: the text
        before it ended on a lowercase letter (see `filters.normalize.surface_symbols`)."""
        out: list[int] = []
        for ch in surface_symbols(text, after_lower)[0]:
            cls = self.symbol_class(ch)
            if cls == SEP_CLASS and out and out[-1] == SEP_CLASS:
                continue
            out.append(cls)
        return out

    # ---- the NFA step, shared with the streaming matcher ---------------------------------------------------
    def advance(
        self, live: Mapping[int, P], at_edge: bool, cls: int, start: P
    ) -> tuple[dict[int, P], bool, list[tuple[int, P]], dict[int, P]]:
        """One symbol from configurations `live` (config -> payload, e.g. where its match began).

        Returns the next configurations, whether the next position is at a word edge, the configurations that
        completed a match with this symbol (a word-mode term confirmed by a separator, or another term spelled out),
        and the configurations this symbol moved to (read as a letter; the others were kept by a separator).
        Payloads are kept (the smallest wins when two paths meet); new starts get `start`. A configuration is
        `node * 2 + literal`, where `literal` says a character was read as itself.
        """
        children = self.trie.children
        nxt: dict[int, P] = {}
        matched: list[tuple[int, P]] = []
        reached: dict[int, P] = {}
        is_sep = self._class_is_sep[cls]
        if self._pat_starts:
            patterns = {c: p for c, p in live.items() if c < 0}
            live = {c: p for c, p in live.items() if c >= 0}
            self._advance_patterns(patterns, at_edge, cls, start, nxt, matched, reached)
        if is_sep:
            for config, payload in live.items():
                if config & 1 and config >> 1 in self.word_end:
                    matched.append((config, payload))
                nxt[config] = payload
        readings = self._class_readings[cls]
        if readings:
            for config, payload in live.items():
                node, literal = config >> 1, config & 1
                for letter, itself in readings:
                    child = children[node].get(letter)
                    if child is not None:
                        _keep_min(reached, child * 2 + (literal | itself), payload)
            roots = (EDGE_ROOT, INSIDE_ROOT) if at_edge else (INSIDE_ROOT,)
            for root in roots:
                for letter, itself in readings:
                    child = children[root].get(letter)
                    if child is not None:
                        _keep_min(reached, child * 2 + int(itself), start)
            for config, payload in reached.items():
                if config & 1 and config >> 1 in self.any_end:
                    matched.append((config, payload))
                _keep_min(nxt, config, payload)
        return nxt, is_sep, matched, reached

    def _advance_patterns(self, live: dict[int, P], at_edge: bool, cls: int, start: P, nxt: dict[int, P],
                          matched: list[tuple[int, P]], reached: dict[int, P]) -> None:  # fmt: skip
        """`advance` for pattern configurations (negative). A separator after a separator, a stand-in mark or at the
        start (`at_edge`) is not read: the configurations stay. Otherwise every pattern may also start here."""
        if cls == SEP_CLASS and at_edge:
            nxt.update(live)
            return
        candidates = dict(live)
        for config in self._pat_starts:
            _keep_min(candidates, config, start)
        table, final = self._pat_next, self._pat_final
        for config, payload in candidates.items():
            moved = int(table[-config - 1, cls])
            if moved < 0:
                continue
            if final[moved]:
                matched.append((-moved - 1, payload))
                _keep_min(reached, -moved - 1, payload)
            else:
                _keep_min(nxt, -moved - 1, payload)
                if cls != SEP_CLASS:
                    _keep_min(reached, -moved - 1, payload)

    # ---- DFA -----------------------------------------------------------------------------------------------
    @property
    def num_states(self) -> int:
        return self._num_states

    @property
    def delta(self) -> np.ndarray:
        """The transition table so far, `[num_states, num_classes]` int32, -1 where not computed yet (a view)."""
        return self._delta[: self._num_states]

    @property
    def pending(self) -> np.ndarray:
        """`is_pending` for every state so far, as a bool array (a view)."""
        return self._pending[: self._num_states]

    def is_pending(self, state: int) -> bool:
        """A term is complete and waits only for its word edge: the end of text here would be a match."""
        return bool(self._pending[state])

    def step(self, state: int, cls: int) -> int:
        nxt = int(self._delta[state, cls])
        if nxt < 0:
            with self._lock:
                nxt = int(self._delta[state, cls])
                if nxt < 0:
                    nxt = self._compute(state, cls)
                    self._delta[state, cls] = nxt
        return nxt

    def gather(self, states: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """`delta[states, classes]` (int32 arrays of equal shape), -1 where not computed yet: a flat `take`, about
        three times faster than two-array fancy indexing on the mask kernel's path."""
        table = self._delta
        width = self.num_classes
        index = states * np.int32(width) if table.size < 2**31 else states.astype(np.int64) * width
        out: np.ndarray = table.ravel().take(index + classes)
        return out

    def fill(self, states: np.ndarray, classes: np.ndarray, known: np.ndarray | None = None) -> None:
        """Compute every unknown transition among the (state, class) pairs given (arrays of equal shape); `known`
        may hold `delta[states, classes]` already gathered (-1 where unknown)."""
        unknown = (self._delta[states, classes] if known is None else known) < 0
        if not unknown.any():
            return
        # one int64 key per pair: a 1-D unique is an order of magnitude faster than unique(axis=0) on pairs
        keys = np.unique(states[unknown].astype(np.int64) * self.num_classes + classes[unknown])
        for key in keys.tolist():
            self.step(*divmod(key, self.num_classes))

    def run(self, state: int, classes: Iterable[int]) -> int:
        for cls in classes:
            state = self.step(state, cls)
            if state == DEAD:
                break
        return state

    def term_at(self, config: int, confirmed_by_edge: bool) -> str:
        """A term that ends at a configuration's node (a word-mode one if a word edge confirmed it); for a pattern
        configuration, the pattern."""
        if config < 0:
            return self.patterns[int(self._pat_owner[-config - 1])]
        ends = self.trie.terminal[config >> 1]
        for index in ends:
            if (self.modes[index] is MatchMode.WORD) is confirmed_by_edge:
                return self.terms[index]
        return self.terms[ends[0]]

    def matches(self, text: str) -> bool:
        """Whether the whole text contains a match (one-shot, end of text counts as a word edge)."""
        state = self.run(START, self.classes(text))
        return state == DEAD or self.is_pending(state)

    def _intern(self, configs: frozenset[int], at_edge: bool) -> int:
        key = (configs, at_edge)
        sid = self._state_id.get(key)
        if sid is None:
            sid = self._num_states
            if sid == len(self._delta):
                grown = np.full((2 * sid, self.num_classes), -1, dtype=np.int32)
                grown[:sid] = self._delta
                pending = np.zeros(2 * sid, dtype=np.bool_)
                pending[:sid] = self._pending
                self._delta, self._pending = grown, pending
            self._pending[sid] = any(c >= 0 and c & 1 and c >> 1 in self.word_end for c in configs)
            self._state_key.append(key)
            self._state_id[key] = sid
            self._num_states = sid + 1
        return sid

    def _compute(self, state: int, cls: int) -> int:
        key = self._state_key[state]
        if key is None:
            return DEAD
        configs, at_edge = key
        nxt, edge, matched, _ = self.advance(dict.fromkeys(configs), at_edge, cls, None)
        if matched:
            return DEAD
        return self._intern(frozenset(nxt), edge)


def _keep_min(into: dict[int, P], config: int, payload: P) -> None:
    old = into.get(config, payload)
    into[config] = payload if old is None or payload is None or payload <= old else old  # type: ignore[operator]
