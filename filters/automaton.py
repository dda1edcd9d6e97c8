"""One compiled automaton over normalised symbols for all active terms.

Shared by the streaming text matcher (`filters.text_matcher`) and the decode-time token masks (`filters.token_mask`).

Structure: a trie over the terms' word characters (immutable once built) and a deterministic automaton over it,
determinised lazily: a DFA state is the set of trie nodes that are live (a term begun at a word edge whose word
characters so far match) plus whether the last symbol was a word edge. Separators keep partial matches alive (a term
may be spelled with any separators between its word characters); a separator or the end of text confirms a
completed term (its word edge), and that is a match. State `DEAD` is absorbing: "a match has happened".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from filters.normalize import SEPARATOR, normalize, word_chars

DEAD = 0
START = 1

SEP_CLASS = 0
OTHER_CLASS = 1
"""Symbol classes: every separator is class 0, a word character that occurs in no term is class 1."""


class TermError(ValueError):
    """A term cannot be compiled (empty once normalised, for example)."""


@dataclass(frozen=True)
class Trie:
    children: tuple[dict[str, int], ...]
    terminal: tuple[tuple[int, ...], ...]
    """Term indices that end at each node."""


def _build_trie(keys: Sequence[str]) -> Trie:
    children: list[dict[str, int]] = [{}]
    terminal: list[list[int]] = [[]]
    for index, key in enumerate(keys):
        node = 0
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


class TermAutomaton:
    """All terms of a term set compiled once; thread-compatible (lazy DFA growth is append-only)."""

    def __init__(self, terms: Iterable[str], prefix: Iterable[str] = ()):
        """`terms` must end on a word edge; `prefix` terms match as soon as they are spelled out at a word start,
        whatever follows ("Spider-Mane", "Dumbledore1"), at the price of also matching longer words that begin
        with them."""
        prefix = tuple(prefix)
        self.terms: tuple[str, ...] = tuple(dict.fromkeys([*terms, *prefix]))
        keys = []
        for term in self.terms:
            key = word_chars(term)
            if not key:
                raise TermError(f"term {term!r} has no letters or digits once normalised, so it can never match")
            keys.append(key)
        self.keys: tuple[str, ...] = tuple(keys)
        self.trie = _build_trie(keys)
        prefix_keys = {word_chars(term) for term in prefix}
        self.prefix_nodes: frozenset[int] = frozenset(
            node for node, ends in enumerate(self.trie.terminal) if any(keys[i] in prefix_keys for i in ends)
        )
        alphabet = sorted({ch for key in keys for ch in key})
        # Class ids: 0 separator, 1 other word character, 2.. the characters that occur in terms.
        self.class_of: dict[str, int] = {ch: i + 2 for i, ch in enumerate(alphabet)}
        self.class_char: tuple[str, ...] = (SEPARATOR, "") + tuple(alphabet)
        self.num_classes = len(self.class_char)
        # Lazily determinised DFA. States are interned (live trie nodes, at_edge); DEAD has no key.
        self._state_key: list[tuple[frozenset[int], bool] | None] = [None, (frozenset(), True)]
        self._state_id: dict[tuple[frozenset[int], bool], int] = {(frozenset(), True): START}
        # Transition table as a growable numpy int32 array (-1 = not computed yet), so the mask kernel
        # (`filters.token_mask`) can gather from it for the whole vocabulary at once. Rows past `num_states` are spare.
        self._num_states = 2
        self._delta = np.full((64, self.num_classes), -1, dtype=np.int32)
        self._delta[DEAD] = DEAD
        self._pending = np.zeros(64, dtype=np.bool_)

    # ---- symbols -------------------------------------------------------------------------------------------
    def classes(self, text: str) -> list[int]:
        """Symbol classes of a text, separators collapsed (a run of separators acts as one)."""
        out: list[int] = []
        for ch in normalize(text):
            if ch == SEPARATOR:
                if out and out[-1] == SEP_CLASS:
                    continue
                out.append(SEP_CLASS)
            else:
                out.append(self.class_of.get(ch, OTHER_CLASS))
        return out

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
            nxt = self._compute(state, cls)
            self._delta[state, cls] = nxt
        return nxt

    def fill(self, states: np.ndarray, classes: np.ndarray) -> None:
        """Compute every unknown transition among the (state, class) pairs given (arrays of equal shape)."""
        unknown = self._delta[states, classes] < 0
        if not unknown.any():
            return
        pairs = np.unique(np.stack([states[unknown], classes[unknown]], axis=1), axis=0)
        for state, cls in pairs.tolist():
            self.step(state, cls)

    def run(self, state: int, classes: Iterable[int]) -> int:
        for cls in classes:
            state = self.step(state, cls)
            if state == DEAD:
                break
        return state

    def matches(self, text: str) -> bool:
        """Whether the whole text contains a match (one-shot, end of text counts as a word edge)."""
        state = self.run(START, self.classes(text))
        return state == DEAD or self.is_pending(state)

    def _intern(self, nodes: frozenset[int], at_edge: bool) -> int:
        key = (nodes, at_edge)
        sid = self._state_id.get(key)
        if sid is None:
            sid = self._num_states
            if sid == len(self._delta):
                grown = np.full((2 * sid, self.num_classes), -1, dtype=np.int32)
                grown[:sid] = self._delta
                self._delta = grown
                self._pending = np.concatenate([self._pending, np.zeros(sid, dtype=np.bool_)])
            self._num_states = sid + 1
            self._state_id[key] = sid
            self._state_key.append(key)
            terminal = self.trie.terminal
            self._pending[sid] = any(terminal[n] for n in nodes)
        return sid

    def _compute(self, state: int, cls: int) -> int:
        key = self._state_key[state]
        assert key is not None  # DEAD's row is fully filled at construction
        nodes, at_edge = key
        if cls == SEP_CLASS:
            if self._pending[state]:
                return DEAD
            return self._intern(nodes, True)
        if cls == OTHER_CLASS:
            return self._intern(frozenset(), False)
        ch = self.class_char[cls]
        children = self.trie.children
        nxt = {children[n][ch] for n in nodes if ch in children[n]}
        if at_edge and ch in children[0]:
            nxt.add(children[0][ch])
        if self.prefix_nodes and not self.prefix_nodes.isdisjoint(nxt):
            return DEAD  # a prefix term is complete: no word edge needed
        return self._intern(frozenset(nxt), False)
