"""Near spellings of a person's name in text: what a model writes when the decode-time mask keeps it from writing
the name itself ("Werner Herzöog", "Patricia Arquelle", "Harrison F. Ford", "DemiMoJo" for Demi Moore).

Measured on real people in context (`python -m bench.real_people`): with the names masked at decode time, a reader
still recognised the person in a near spelling in 11 of 16 RETURN answers and 9 of 32 RWKU ones. The mask cannot
prevent this (it bans the listed spelling, and a model has many others), so the text backstop catches them: a target
with `near_names: true` has each of its terms of two or more words (at least `MIN_LETTERS` letters) also matched
near-spelled, and such a match takes the target's `on_surface` action (`mask` redacts it), decision detail `near`.

A run of words is a near spelling of a name of n words when, words read as the surface layer reads them (case,
accents and look-alikes folded; a case change inside a word starts a new one: "DemiMoJo" is "demi mo jo"):
- it has n words, or n + 1 with a one-letter word (an initial) inside, which is dropped;
- each word starts with the letter its word of the name starts with ("Parkland" for Parkman, not "Bacon"; in a
  name of three or more words, one changed word may start otherwise: "Arthur Conan Boyle"), and the last is more
  than an initial ("Larry B." is not Larry Bird);
- at least one word is the name's own, every other word is similar to its word of the name (`WORD_RATIO`), and
  the words joined are similar to the name (`NEAR_RATIO`; difflib's ratio: matching characters over the two
  lengths), without being the name itself (the automaton's matches are the surface layer's).
In a stream, the stage holds back the last words that could still begin such a run (at most the longest name's word
count plus one): a few words of latency, and none for text that no name's initials could start.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from filters.decision import Action, Decision, Layer
from filters.normalize import SEPARATOR, surface_symbols
from filters.word_stream import Word, WordHit, WordStream

NEAR_RATIO = 0.8
"""The whole run against the whole name (difflib's ratio)."""
WORD_RATIO = 0.65
"""Each changed word against its word of the name. Both were chosen with `python -m bench.near_names` (texts that
name nobody: benign prompts, neighbour and ConceptVectors probes) against the near spellings models were seen to
write; the choice and what it costs are in docs/suppression-results.md."""
MIN_LETTERS = 7
"""Shorter names ("Al Gore") have too many near neighbours among ordinary names."""
DETAIL = "near"


@dataclass(frozen=True)
class NearName:
    """One name to catch near-spelled, with what to do about it."""

    policy_ref: str
    target_id: str
    action: Action  # the target's on_surface action in the text backstop (mask -> redact)
    refusal: str
    term: str
    words: tuple[str, ...]  # as the surface layer reads them

    @classmethod
    def of(cls, policy_ref: str, target_id: str, action: str, refusal: str, term: str) -> NearName | None:
        """None for a term that is not a name of two or more words with enough letters."""
        words = tuple(w for w in surface_symbols(term)[0].split(SEPARATOR) if w)
        if len(words) < 2 or sum(len(w) for w in words) < MIN_LETTERS:
            return None
        return cls(policy_ref, target_id, Action.REDACT if action == "mask" else Action(action), refusal, term, words)


def is_near(words: Sequence[str], name: Sequence[str]) -> bool:
    """Whether these words (as read) are a near spelling of `name` (module docstring)."""
    initial = len(words) == len(name) + 1 and any(len(w) == 1 for w in words[1:-1])
    if initial:  # "Harrison F. Ford": the name itself with an initial put in is a near spelling too
        words = [w for i, w in enumerate(words) if not (0 < i < len(words) - 1 and len(w) == 1)]
    if len(words) != len(name):
        return False
    changed = [i for i, (w, n) in enumerate(zip(words, name, strict=True)) if w != n]
    # every word keeps its initial, except where a name of three or more words keeps all its other words as they are
    # ("Arthur Conan Boyle")
    if any(words[i][0] != name[i][0] for i in changed) and not (len(name) >= 3 and len(changed) == 1):
        return False
    if len(words[-1]) == 1 < len(name[-1]):  # "Larry B.": an initial, not a spelling of the surname
        return False
    joined, target = " ".join(words), " ".join(name)
    if joined == target:
        return initial
    pairs = list(zip(words, name, strict=True))
    if not any(w == n for w, n in pairs):  # a near spelling changes a word, not the whole name ("be Elon")
        return False
    if any(w != n and _ratio(w, n) < WORD_RATIO for w, n in pairs):  # "that more" is not Thomas More
        return False
    return _ratio(joined, target) >= NEAR_RATIO


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


@dataclass
class NearNameStream(WordStream):
    """The near-spelling stage of the text backstop (module docstring)."""

    names: Sequence[NearName] = ()

    def __post_init__(self) -> None:
        self.split_case = True  # "DemiMoJo" reads as three words, as the surface layer reads it
        self.keep = max((len(n.words) for n in self.names), default=0) + 1
        self._initials = {w[0] for n in self.names for w in n.words}
        # A closed word can only end a name whose last word starts with its letter, or, in a name of three or more
        # words whose other words stay as they are, one whose word before the last is the word before this one.
        self._by_last_initial: dict[str, list[NearName]] = {}
        self._by_word_before: dict[str, list[NearName]] = {}
        for name in self.names:
            self._by_last_initial.setdefault(name.words[-1][0], []).append(name)
            if len(name.words) >= 3:
                self._by_word_before.setdefault(name.words[-2], []).append(name)

    def _on_word(self, word: Word, previous: list[Word]) -> list[WordHit]:
        hits = []
        candidates = self._by_last_initial.get(word.text[0], [])
        if previous and previous[-1].text in self._by_word_before:
            candidates = list(dict.fromkeys([*candidates, *self._by_word_before[previous[-1].text]]))
        for name in candidates:
            for size in (len(name.words), len(name.words) + 1):
                if len(previous) + 1 < size:
                    continue
                window = [*previous[len(previous) - size + 1 :], word]
                if is_near([w.text for w in window], name.words):
                    decision = Decision(name.policy_ref, name.target_id, Layer.SURFACE, name.action, 1.0,
                                        window[0].start, word.end, DETAIL)  # fmt: skip
                    hits.append(WordHit(decision, name.refusal if name.action is Action.REFUSE else None))
                    break
        return hits

    def _may_join(self, word: Word) -> bool:
        return len(word.text) == 1 or word.text[0] in self._initials


def find_near_names(names: Sequence[NearName], text: str) -> list[Decision]:
    """Every near spelling in a complete text (the stream's decisions, for moderation and the admin test route)."""
    if not names:  # every SurfaceLayer.decisions call comes here: most layers have no near names to read for
        return []
    stream = NearNameStream(names=names)
    return list(stream.feed(text).decisions + stream.finish().decisions)
