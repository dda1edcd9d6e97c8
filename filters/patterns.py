"""Identifier patterns: regular expressions compiled into the same automaton as the terms (`filters.automaton`).

What a pattern reads. Patterns see the text as the surface layer normalises it (`filters.normalize.surface_symbols`),
so they share the automaton, the decode-time token masks and the text backstop with the terms:
- letters are casefolded and look-alikes folded ("JOHN" and "јohn" read as "john"): write lowercase letters
  (`(?i)` is accepted and changes nothing);
- every other character that is not a letter or digit (space, line break, ".", "-", "/", "(", ",", ...) reads as one
  space, and a run of them reads as ONE space: "555-0100", "555 0100", "555\n0100" and "555 - 0100" all read as
  "555 0100". A separator right after a stand-in mark or at the start of the text is not read at all;
- the stand-in marks `@ $ ! |` read as themselves (no leetspeak for patterns: "0" is the digit zero);
- a lowercase letter followed by an uppercase one reads with a space between ("johnDoe" -> "john doe").
So a phone pattern that should see its digits whatever the model puts between them allows an optional space between
digits (`\\d( ?\\d){9}`: "5 5 5 0 1 0 0" and "555.010.0100" match alike). A pattern that names a character that never
appears in normalised text (`\\.`, `-`, `[A-Z]` alone) can never match and is rejected, with that reason.

Matching: a pattern may start anywhere (also inside a word) and matches as soon as the text read so far ends one of
its matches (so `\\d{10,}` acts like `\\d{10}`); there are no anchors.

The supported subset is what `interegular` (the regex-to-FSM library outlines uses) compiles: literals, classes,
`. | * + ? {m,n}`, groups, `\\d \\w \\s` and their negations, `(?i)`. Rejected at load with the reason: invalid syntax,
backreferences, lookaround, anchors (`^ $ \\b`), a pattern that matches the empty string, one whose shortest match is
under `MIN_PATTERN_SYMBOLS` symbols, one with more than `MAX_PATTERN_STATES` DFA states (refused before
determinising when its match lengths or its repeats written out already show it), and one that matches inside
ordinary text (`ORDINARY_TEXT`, "almost anything").
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import interegular
import numpy as np
from interegular.fsm import anything_else

from filters.normalize import SEPARATOR, STAND_IN_MARKS, is_word_char, surface_char, surface_symbols

MIN_PATTERN_SYMBOLS = 5
"""The shortest text a pattern matches must have at least this many symbols: shorter ones hit ordinary text."""
MAX_PATTERN_STATES = 2000
"""Determinised size budget per pattern (the lazy product with the terms multiplies states, so keep them small)."""
MAX_WRITTEN_SIZE = 4 * MAX_PATTERN_STATES
"""Budget on a pattern's size with its repeats written out, checked before determinising (which is slow on big
repeats); identifier patterns are tens of symbols."""
ORDINARY_TEXT = (
    "The meeting is on Tuesday, 3 May 2021 at 10:30 in room 42; about 1,500 people came and paid $25 each.",
    "In 1990 the population was 12,345 and by 2020 it had grown by 18 percent to 14,567.",
    "Step 1: add 2 cups of flour. Step 2: bake at 180 C for 35 minutes. Serves 4 to 6.",
    "Version 3.11.4 fixed 7 bugs; see pages 12-14 and chapter 5 of the manual (ISBN not given).",
    "Hello, how are you today? I would like to know more about the history of Rome and its emperors.",
)
"""Texts no pattern may match: a pattern that does matches "almost anything" and would mask ordinary answers."""

_LOOKAROUND = re.compile(r"\(\?<?[=!]")


class PatternError(ValueError):
    """A pattern is outside the supported subset or would match too much; the message says why."""


@dataclass(frozen=True)
class CompiledPattern:
    """One pattern as a DFA over interegular's symbols (`fsm`), with the characters it tells apart."""

    source: str
    fsm: Any  # interegular.fsm.FSM (untyped library)
    chars: frozenset[str]
    """The readable characters the pattern names explicitly; every other readable character is `anything_else`."""

    def table(self, class_chars: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, int]:
        """(delta, final, initial) over the automaton's symbol classes (`class_chars[c]` is class c's character,
        "" for the class of characters no pattern or term names): delta is int32 [states, classes], -1 = no match
        can continue; final is bool per state."""
        fsm = self.fsm
        states = sorted(fsm.states)
        index = {s: i for i, s in enumerate(states)}
        alphabet = fsm.alphabet
        symbols = [alphabet[ch] if ch and ch in self.chars else alphabet[anything_else] for ch in class_chars]
        delta = np.full((len(states), len(class_chars)), -1, dtype=np.int32)
        for state, moves in fsm.map.items():
            for cls, sym in enumerate(symbols):
                nxt = moves.get(sym)
                if nxt is not None:
                    delta[index[state], cls] = index[nxt]
        live = _live_states(fsm)
        dead = [index[s] for s in states if s not in live]
        if dead:  # a state no match can continue from is as good as none: fewer live sets, fewer DFA states
            delta[np.isin(delta, dead)] = -1
        final = np.array([s in fsm.finals for s in states], dtype=np.bool_)
        return delta, final, index[fsm.initial]

    def search(self, text: str) -> bool:
        """Whether `text` (any text, normalised here) contains a match: the reference the automaton must agree with."""
        symbols = _pattern_symbols(text)
        fsm = self.fsm
        alphabet = fsm.alphabet
        live: set[Any] = set()
        for ch in symbols:
            live.add(fsm.initial)
            sym = alphabet[ch] if ch in self.chars else alphabet[anything_else]
            live = {fsm.map[s][sym] for s in live if sym in fsm.map.get(s, {})}
            if live & fsm.finals:
                return True
        return False


def readable(ch: str) -> bool:
    """Whether a character can appear in normalised text as itself (what a pattern can read)."""
    return surface_char(ch) == ch and (ch == SEPARATOR or is_word_char(ch) or ch in STAND_IN_MARKS)


def _pattern_symbols(text: str) -> str:
    """The symbols a pattern reads (module docstring): separator runs as one space, none at the start or after a
    stand-in mark."""
    out: list[str] = []
    skip_sep = True
    for sym in surface_symbols(text)[0]:
        if sym == SEPARATOR and skip_sep:
            continue
        out.append(sym)
        skip_sep = sym == SEPARATOR or sym in STAND_IN_MARKS
    return "".join(out)


def _check_size_before_determinising(tree: Any) -> None:
    """Refuse a pattern that is over the state budget before determinising it, which takes seconds per thousand
    repeats and grows faster than the repeats (`\\d{20000}` took 48 s): a policy load must not stall on one line.

    Exact for lengths: a minimal DFA's states along a shortest match are all different, and so are those along a
    longest one when the language is finite, so either length reaching the budget means more states than it allows.
    For the rest (big repeats under `?` or `*`) a bound on the written size: repeats multiplied out."""
    shortest, longest = tree.lengths
    for what, length in (("shortest", shortest), ("longest", longest)):
        if length is not None and length >= MAX_PATTERN_STATES:
            raise PatternError(
                f"its {what} match has {length} symbols, so it needs more than {length} states, over the budget of "
                f"{MAX_PATTERN_STATES}"
            )
    written = _written_size(tree)
    if written > MAX_WRITTEN_SIZE:
        raise PatternError(
            f"its repeats multiply out to {written} symbols, over the budget of {MAX_WRITTEN_SIZE} "
            f"(write smaller repeats)"
        )


def _written_size(node: Any) -> int:
    """Symbols in the pattern with every repeat written out (`{m,n}` counts n times; `*` and `+` count once more
    than their minimum)."""
    if isinstance(node, interegular.patterns._Repeated):  # (the parse tree has no public classes)
        times = node.max if node.max is not None else node.min + 1
        return _written_size(node.base) * max(times, 1)
    children = getattr(node, "options", None) or getattr(node, "parts", None)
    if children is not None:
        return sum(_written_size(child) for child in children)
    inner = getattr(node, "inner", None)
    return _written_size(inner) if inner is not None else 1


@lru_cache(maxsize=1024)
def compile_pattern(source: str) -> CompiledPattern:
    """Parse, determinise and check one pattern; PatternError says what is wrong."""
    if not source:
        raise PatternError("the pattern is empty")
    if _LOOKAROUND.search(source):
        raise PatternError("lookaround ((?=, (?!, (?<=, (?<!) is not supported: patterns compile to a finite automaton")
    try:
        tree: Any = interegular.parse_pattern(source)  # untyped library
        _check_size_before_determinising(tree)
        fsm = tree.to_fsm().reduce()
    except interegular.patterns.Unsupported as exc:
        raise PatternError(f"unsupported regex feature: {exc} (backreferences and anchors are not supported)") from None
    except interegular.patterns.InvalidSyntax as exc:
        raise PatternError(f"invalid regex: {str(exc) or 'syntax error'}") from None
    except PatternError:
        raise
    except Exception as exc:  # noqa: BLE001 - the parser raises assorted errors on odd input; all mean "invalid"
        raise PatternError(f"invalid regex: {type(exc).__name__}: {exc}") from None
    if len(fsm.states) > MAX_PATTERN_STATES:
        raise PatternError(f"determinises to {len(fsm.states)} states, over the budget of {MAX_PATTERN_STATES}")
    explicit = {ch for ch in fsm.alphabet if ch is not anything_else}
    compiled = CompiledPattern(source, fsm, frozenset(ch for ch in explicit if readable(ch)))
    shortest = _shortest_match(compiled)
    if shortest is None:
        raise PatternError(
            "can never match normalised text: letters read lowercased, and every non-letter, non-digit character "
            "except @ $ ! | reads as one space (write ' ' for '.', '-', '/', ...)"
        )
    if shortest == 0:
        raise PatternError("matches the empty string, so it would match everywhere")
    if shortest < MIN_PATTERN_SYMBOLS:
        raise PatternError(f"its shortest match has {shortest} symbols; at least {MIN_PATTERN_SYMBOLS} are needed "
                           "(shorter patterns hit ordinary text)")  # fmt: skip
    for text in ORDINARY_TEXT:
        if compiled.search(text):
            raise PatternError(f"matches almost anything: it matches inside the ordinary sentence {text!r}")
    return compiled


def _live_states(fsm: Any) -> set[Any]:
    """States from which a final state can be reached."""
    back: dict[Any, set[Any]] = {}
    for state, moves in fsm.map.items():
        for nxt in moves.values():
            back.setdefault(nxt, set()).add(state)
    live = set(fsm.finals)
    queue = deque(live)
    while queue:
        for prev in back.get(queue.popleft(), ()):
            if prev not in live:
                live.add(prev)
                queue.append(prev)
    return live


def _shortest_match(pattern: CompiledPattern) -> int | None:
    """Length of the shortest readable text the pattern accepts (None: none)."""
    fsm = pattern.fsm
    by_symbol = fsm.alphabet.by_transition
    usable = {sym for sym, chars in by_symbol.items() if any(c is anything_else or readable(c) for c in chars)}
    seen = {fsm.initial}
    queue = deque([(fsm.initial, 0)])
    while queue:
        state, depth = queue.popleft()
        if state in fsm.finals:
            return depth
        for sym, nxt in fsm.map.get(state, {}).items():
            if sym in usable and nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, depth + 1))
    return None
