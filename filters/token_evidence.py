"""What a response says besides its text: token ids and log-probabilities, judged by the surface layer.

A layer that changed a choice's text must not leave the same words readable another way. The chosen tokens' ids and
logprobs spell the text exactly, so they go whenever the text changed (the service drops them). The `top_logprobs`
alternatives are words the model could have said instead: each one is dropped when, appended to what was said
before it, it would complete a listed term, whatever the chosen text was. Only the stretch of context that could
still be part of a match is kept (the streaming matcher's `safe_end`), so checking an alternative costs a few dozen
characters, not the whole answer.
"""

from __future__ import annotations

from filters.automaton import TermAutomaton
from filters.text_matcher import StreamMatcher, find_matches


class AlternativeFilter:
    """Walk one choice's chosen tokens in order; `allowed` judges an alternative at the current position."""

    def __init__(self, automaton: TermAutomaton | None):
        self._automaton = automaton
        self._matcher = StreamMatcher(automaton) if automaton is not None else None
        self._said = ""  # chosen token texts so far, from the matcher's safe_end on

    def allowed(self, alternative: str) -> bool:
        """False when `alternative`, said next, would complete a term (a match ending inside it)."""
        if self._automaton is None or not alternative:
            return True
        context = self._said
        return not any(m.end > len(context) for m in find_matches(self._automaton, context + alternative))

    def advance(self, chosen: str) -> None:
        """The model said `chosen`: move past it."""
        if self._matcher is None or not chosen:
            return
        before = self._matcher.position - len(self._said)
        self._matcher.feed(chosen)
        self._said += chosen
        keep_from = self._matcher.safe_end - before
        if keep_from > 0:
            self._said = self._said[keep_from:]
