"""The surface layer of a set of policies: which term belongs to which target, with which action."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from filters.automaton import MatchMode, TermAutomaton, reader_mode
from filters.decision import ACTION_RANK, Action, Decision, Layer
from filters.facts import FactGroup
from filters.near_names import NearName, find_near_names
from filters.normalize import word_chars
from filters.policy import Policy, ProtectedAction, SurfaceAction
from filters.protected_text import ProtectedRule, cached_index
from filters.term_sets import by_hash
from filters.text_matcher import find_matches


@dataclass(frozen=True)
class TermRule:
    policy_ref: str
    target_id: str
    action: SurfaceAction
    refusal: str


class SurfaceLayer:
    """All terms of the given policies (those that apply to `direction`), compiled into one automaton."""

    def __init__(self, policies: Sequence[Policy], direction: str | None = "output",
                 armed: frozenset[tuple[str, str]] = frozenset()):  # fmt: skip
        """`armed`: (policy ref, target id) of the targets whose facts are terms here (`armed_by`)."""
        self._policies, self._direction, self._armed_targets = tuple(policies), direction, armed
        self._armed: dict[frozenset[tuple[str, str]], SurfaceLayer] = {}
        self._fact_terms: set[str] = set()
        self._rules: dict[str, list[TermRule]] = {}
        self._plugin_args: dict[str, list[str]] | None = None
        by_mode: dict[MatchMode, list[str]] = {mode: [] for mode in MatchMode}
        mask: dict[MatchMode, list[str]] = {mode: [] for mode in MatchMode}
        protected: list[ProtectedRule] = []
        patterns: list[str] = []
        self._pattern_rules: dict[str, list[TermRule]] = {}
        self._pattern_names: dict[str, str] = {}
        mask_patterns: list[str] = []
        facts: list[tuple[FactGroup, TermRule]] = []
        near_names: list[NearName] = []
        for policy in policies:
            if direction is not None and direction not in policy.applies_to:
                continue
            for target in policy.targets:
                if target.protected_text is not None:  # the index is built once per corpus, then read from disk
                    corpus = target.protected_text.corpus
                    index = cached_index(corpus.digest, corpus=corpus)
                    protected.append(ProtectedRule(policy.ref, target.id, target.on_protected.value, policy.refusal,
                                                   index))  # fmt: skip
                rule = TermRule(policy.ref, target.id, target.on_surface, policy.refusal)
                for pattern in target.patterns:
                    patterns.append(pattern.regex)
                    self._pattern_rules.setdefault(pattern.regex, []).append(rule)
                    self._pattern_names.setdefault(pattern.regex, pattern.name)
                    if target.on_surface is SurfaceAction.MASK:
                        mask_patterns.append(pattern.regex)
                if target.facts:
                    group = FactGroup.of(target.id, target.terms, target.facts)
                    facts.append((group, rule))
                    if (policy.ref, target.id) in armed:  # read as the fact decisions read them: reader mode
                        for fact in group.facts:
                            self._rules.setdefault(word_chars(fact), []).append(rule)
                            self._fact_terms.add(word_chars(fact))
                            by_mode[reader_mode(fact)].append(fact)
                for term in target.terms:
                    near = NearName.of(policy.ref, target.id, target.on_surface.value, policy.refusal, term)
                    if target.near_names and near is not None:
                        near_names.append(near)
                    mode = target.match.mode_for(term)
                    self._rules.setdefault(word_chars(term), []).append(rule)
                    by_mode[mode].append(term)
                    if target.on_surface is SurfaceAction.MASK:
                        mask[mode].append(term)
        groups = [by_mode[MatchMode.WORD], by_mode[MatchMode.PREFIX], by_mode[MatchMode.INSIDE]]
        patterns = list(dict.fromkeys(patterns))
        self.automaton: TermAutomaton | None = (
            TermAutomaton(groups[0], groups[1], groups[2], patterns=patterns) if any(groups) or patterns else None
        )
        self.mask_patterns: tuple[str, ...] = tuple(dict.fromkeys(mask_patterns))
        """Patterns (regexes) for the decode-time plugin's `quell_patterns`: only `mask` targets."""
        self.facts: tuple[tuple[FactGroup, TermRule], ...] = tuple(facts)
        """Each target's facts with its names (`filters.facts`): reported where the prompt or answer names it."""
        self._fact_automata: dict[str, tuple[TermAutomaton, TermAutomaton]] = {}
        self.mask_terms: tuple[str, ...] = tuple(dict.fromkeys(mask[MatchMode.WORD]))
        """Terms for the decode-time plugin: only `mask` targets (other actions need to see the term to act)."""
        self.mask_inside_terms: tuple[str, ...] = tuple(dict.fromkeys(mask[MatchMode.INSIDE]))
        self.mask_prefix_terms: tuple[str, ...] = tuple(dict.fromkeys(mask[MatchMode.PREFIX] + mask[MatchMode.INSIDE]))
        """Prefix terms, plus the inside terms (a gateway that sends only `quell_terms` and `quell_prefix_terms`
        still masks their word-start forms; `plugin_args` sends each where it belongs)."""
        self.near_names: tuple[NearName, ...] = tuple(near_names)
        """Names to catch near-spelled in text (`filters.near_names`): targets with `near_names: true`."""
        self.protected: tuple[ProtectedRule, ...] = tuple(protected)
        """Protected-text targets (`filters.protected_text`): the text backstop checks all of them."""
        self.mask_protected: tuple[str, ...] = tuple(dict.fromkeys(
            r.index.digest for r in protected if r.action == ProtectedAction.MASK))  # fmt: skip
        """Index ids (content hashes) for the decode-time plugin's `quell_protected`: only `mask` targets."""

    def plugin_args(self) -> dict[str, list[str]]:
        """`vllm_xargs` for the decode-time plugin (`filters.vllm_plugin`): each mask term under its mode's key; a
        large set as its content hash instead (`filters.term_sets`: written once, the first time it is asked for,
        which the gateway does right after a policy load)."""
        if self._plugin_args is None:
            self._plugin_args = by_hash(self._inline_plugin_args())
        return {key: list(values) for key, values in self._plugin_args.items()}

    def _inline_plugin_args(self) -> dict[str, list[str]]:
        args = {
            "quell_terms": list(self.mask_terms),
            "quell_prefix_terms": [t for t in self.mask_prefix_terms if t not in set(self.mask_inside_terms)],
            "quell_inside_terms": list(self.mask_inside_terms),
            "quell_protected": list(self.mask_protected),
            "quell_patterns": list(self.mask_patterns),
            "quell_facts": [
                json.dumps({"names": list(g.names), "facts": list(g.facts)}, ensure_ascii=False)
                for g, rule in self.facts
                if rule.action is SurfaceAction.MASK
            ],
        }
        return {key: terms for key, terms in args.items() if terms}

    def decisions(self, text: str) -> list[Decision]:
        """Every match in a complete text as a decision with the strongest action among its targets."""
        if self.automaton is None:
            return []
        out = []
        for m in find_matches(self.automaton, text):
            rule = self.strongest(m.term)
            out.append(Decision(rule.policy_ref, rule.target_id, Layer.SURFACE, Action(rule.action.value), 1.0, m.start,
                                m.end, self.detail(m.term)))  # fmt: skip
        return out + self.fact_decisions(text) + find_near_names(self.near_names, text)

    def detail(self, term: str) -> str:
        """What a match of `term` (a `Match.term`) was: `pattern:<name>`, `fact` (an armed fact) or "" (a term)."""
        name = self._pattern_names.get(term)
        if name:
            return f"pattern:{name}"
        return "fact" if term not in self._pattern_rules and word_chars(term) in self._fact_terms else ""

    def armed_by(self, prompt: str | None, recognised: Collection[tuple[str, str]] = ()) -> SurfaceLayer:
        """This layer with the facts of every target that `prompt` names compiled in as terms, as the decode-time
        plugin arms them (`filters.facts`); `None` (a prompt that cannot be read, e.g. token ids) arms every fact.
        `recognised`: (policy ref, target id) of targets the input screen recognised without their name (their
        concept), armed too. One compiled layer per distinct set of armed targets, kept with this one."""
        named = frozenset((rule.policy_ref, group.target_id) for group, rule in self.facts
                          if prompt is None or (rule.policy_ref, group.target_id) in recognised
                          or find_matches(self._fact_automata_for(group, rule)[0], prompt))  # fmt: skip
        if not named:
            return self
        layer = self._armed.get(named)
        if layer is None:
            if len(self._armed) >= 64:  # distinct sets of named people are few; bound them all the same
                self._armed.clear()
            layer = self._armed[named] = SurfaceLayer(self._policies, self._direction, named)
        return layer

    def armed_fact_forms(self, recognised: Collection[tuple[str, str]]) -> list[str]:
        """The written forms of the facts of `mask` targets among `recognised` (policy ref, target id), for the
        decode-time plugin's `quell_armed_facts`: armed whatever the prompt names."""
        return list(dict.fromkeys(fact for group, rule in self.facts
                                  if rule.action is SurfaceAction.MASK and (rule.policy_ref, group.target_id) in recognised
                                  for fact in group.facts))  # fmt: skip

    def fact_decisions(self, text: str, prompt: str = "") -> list[Decision]:
        """Every fact of a target that `prompt` or `text` names, found in `text` (`filters.facts`)."""
        out = []
        for group, rule in self.facts:
            if (rule.policy_ref, group.target_id) in self._armed_targets:
                continue  # compiled in here: `decisions` reports them as terms with detail "fact"
            names, facts = self._fact_automata_for(group, rule)
            if not (find_matches(names, prompt) or find_matches(names, text)):
                continue
            for m in find_matches(facts, text):
                out.append(Decision(rule.policy_ref, rule.target_id, Layer.SURFACE, Action(rule.action.value), 1.0,
                                    m.start, m.end, "fact"))  # fmt: skip
        return out

    def _fact_automata_for(self, group: FactGroup, rule: TermRule) -> tuple[TermAutomaton, TermAutomaton]:
        key = f"{rule.policy_ref}/{group.target_id}"  # two policies may both name a target "jane"
        pair = self._fact_automata.get(key)
        if pair is None:
            pair = self._fact_automata[key] = (TermAutomaton.reader(group.names),
                                               TermAutomaton.reader(group.facts))  # fmt: skip
        return pair

    def rules_for(self, term: str) -> list[TermRule]:
        """The rules of a matched term, or of a matched pattern (`Match.term` is then the regex)."""
        if term in self._pattern_rules:
            return self._pattern_rules[term]
        return self._rules.get(word_chars(term), [])

    def strongest(self, term: str) -> TermRule:
        return max(self.rules_for(term), key=lambda r: ACTION_RANK[r.action.value])
