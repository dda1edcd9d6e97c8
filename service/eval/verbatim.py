"""Protected text in `quell eval`: how much of a policy's protected sources an answer copies.

Per answer, against every `protected_text` target of the policy under test:
- `longest_run`: the longest run of consecutive words of the answer that appears verbatim in one source document,
  with words as the product reads them (`filters.protected_text.words_of`: case, accents, lookalikes and spacing do
  not matter). Exact: each candidate run is searched for in the normalised sources, not estimated from hashes.
- `over_limit`: the answer holds a run longer than the target's `max_quote_words` (the product's own reading,
  `find_runs` over the target's index): what the decode mask and the backstop must bring to zero.
- `rouge_l`: ROUGE-L F1 (google-research's `rouge-score`) of the answer against the probe's reference (the true
  continuation of a verbatim probe): how much of the protected passage the answer still carries, and, for a
  filtered column, whether it still says something of the same (a paraphrase keeps some, an empty answer none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from filters.policy import Policy
from filters.protected_text import ProtectedRule, cached_index, find_runs, source_documents, words_of


@dataclass(frozen=True)
class VerbatimScore:
    longest_run: int
    over_limit: bool
    rouge_l: float | None


class VerbatimJudge:
    """The protected sources of one policy, read once; `score` judges one answer."""

    def __init__(self, policy: Policy):
        self.rules: list[ProtectedRule] = []
        self.limits: list[int] = []
        docs: list[str] = []
        seen: set[Path] = set()
        for target in policy.targets:
            if target.protected_text is None:
                continue
            corpus = target.protected_text.corpus
            index = cached_index(corpus.digest, corpus=corpus)
            self.rules.append(ProtectedRule(policy.ref, target.id, target.on_protected.value, policy.refusal, index))
            self.limits.append(corpus.max_quote_words)
            for path in corpus.files:
                if path not in seen:
                    seen.add(path)
                    docs += [" " + " ".join(words_of(doc)) + " " for doc in source_documents(path)]
        self._haystack = "\n".join(docs)  # a run is found inside one document: documents never share a line
        self._scorer = None

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def max_quote_words(self) -> int:
        return min(self.limits) if self.limits else 0

    def longest_run(self, text: str) -> int:
        """Longest run of the text's words found verbatim in one source document (two pointers: each step either
        grows the run or drops its first word, so at most twice the answer's length substring searches)."""
        words = words_of(text)
        best, start = 0, 0
        for end in range(1, len(words) + 1):
            while start < end and f" {' '.join(words[start:end])} " not in self._haystack:
                start += 1
            best = max(best, end - start)
        return best

    def rouge_l(self, text: str, reference: str) -> float:
        if self._scorer is None:
            from rouge_score import rouge_scorer

            self._scorer = rouge_scorer.RougeScorer(["rougeL"])
        return float(self._scorer.score(reference, text)["rougeL"].fmeasure)

    def score(self, text: str, references: Sequence[str] = ()) -> VerbatimScore:
        reference = max(references, key=len, default="")
        return VerbatimScore(self.longest_run(text), bool(find_runs(self.rules, text)),
                             self.rouge_l(text, reference) if reference.strip() else None)  # fmt: skip
