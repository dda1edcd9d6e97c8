"""The surface layer of a set of policies: which term belongs to which target, with which action."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from filters.automaton import TermAutomaton
from filters.decision import ACTION_RANK, Decision, Layer
from filters.normalize import word_chars
from filters.policy import Policy, SurfaceAction, TermMatch
from filters.text_matcher import find_matches


@dataclass(frozen=True)
class TermRule:
    policy_ref: str
    target_id: str
    action: SurfaceAction
    refusal: str


class SurfaceLayer:
    """All terms of the given policies (those that apply to `direction`), compiled into one automaton."""

    def __init__(self, policies: Sequence[Policy], direction: str | None = "output"):
        self._rules: dict[str, list[TermRule]] = {}
        terms: list[str] = []
        prefix: list[str] = []
        mask: list[str] = []
        mask_prefix: list[str] = []
        for policy in policies:
            if direction is not None and direction not in policy.applies_to:
                continue
            for target in policy.targets:
                rule = TermRule(policy.ref, target.id, target.on_surface, policy.refusal)
                is_prefix = target.match is TermMatch.PREFIX
                for term in target.terms:
                    self._rules.setdefault(word_chars(term), []).append(rule)
                    (prefix if is_prefix else terms).append(term)
                    if target.on_surface is SurfaceAction.MASK:
                        (mask_prefix if is_prefix else mask).append(term)
        self.automaton: TermAutomaton | None = TermAutomaton(terms, prefix=prefix) if terms or prefix else None
        self.mask_terms: tuple[str, ...] = tuple(dict.fromkeys(mask))
        """Terms for the decode-time plugin: only `mask` targets (other actions need to see the term to act)."""
        self.mask_prefix_terms: tuple[str, ...] = tuple(dict.fromkeys(mask_prefix))

    def decisions(self, text: str) -> list[Decision]:
        """Every match in a complete text as a decision with the strongest action among its targets."""
        if self.automaton is None:
            return []
        out = []
        for m in find_matches(self.automaton, text):
            rule = self.strongest(m.term)
            out.append(Decision(rule.policy_ref, rule.target_id, Layer.SURFACE, rule.action.value, 1.0, m.start, m.end))
        return out

    def rules_for(self, term: str) -> list[TermRule]:
        return self._rules.get(word_chars(term), [])

    def strongest(self, term: str) -> TermRule:
        return max(self.rules_for(term), key=lambda r: ACTION_RANK[r.action.value])
