"""The policy schema operators write (one YAML file per policy), validated by pydantic.

See DESIGN.md "Policies". A policy's version is the sha256 of its canonical form, so two files that say the same
thing have the same version whatever their formatting, and every decision can name `policy_id@version`.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from functools import cached_property
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from filters.automaton import MatchMode, reader_mode
from filters.facts import fact_forms
from filters.normalize import word_chars
from filters.patterns import PatternError, compile_pattern
from filters.protected_text import MIN_QUOTE_WORDS, Corpus, CorpusError, scan_sources

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
MIN_FACT_WORD_CHARS = 5
MIN_TERM_WORD_CHARS = 3
"""Shorter terms match inside too much ordinary text ("AI", "X") unless the operator says `allow_short: true`."""


class SurfaceAction(StrEnum):
    MASK = "mask"  # decode time: the model can never emit it (text fallback: redact)
    REDACT = "redact"  # replace the matched span
    STOP = "stop"  # cut the response before the match
    REFUSE = "refuse"  # replace the whole response by the policy's refusal


class TermMatch(StrEnum):
    """Where a term may begin and end (`filters.automaton`, "the matching contract"). Every mode reads case changes
    ("TeamSpiderman") as word starts and undoes stand-ins ("Sp1derman")."""

    READER = "reader"  # the default: `prefix`, and `inside` for terms of INSIDE_MIN_CHARS or more word characters
    WORD = "word"  # opt-in for short or common terms: "Spiderman" matches, "Spidermanagement" does not
    PREFIX = "prefix"  # from a word start, any ending: also "Spider-Mane", "Spiderman2018" (and "spidermanagement")
    INSIDE = "inside"  # anywhere, also inside a word: "xxspidermanxx"

    def mode_for(self, term: str) -> MatchMode:
        """The automaton mode this setting gives `term`."""
        if self is TermMatch.READER:
            return reader_mode(term)
        return MatchMode(self.value)


class ConceptAction(StrEnum):
    REDACT = "redact"
    STOP = "stop"
    REFUSE = "refuse"
    FLAG = "flag"  # annotate and audit only


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SemanticLayer(StrEnum):
    EMBEDDING = "embedding"  # highest cosine between a window and the description/examples
    CLASSIFIER = "classifier"  # a classifier trained at load time on examples vs counterexamples + background


AUTO: Final = "auto"
"""`threshold: auto`: chosen at policy load for the concept's `target_fpr` (see filters.concept_classifier)."""

MIN_CLASSIFIER_EXAMPLES = 2


def _no_blank_texts(texts: list[str], what: str) -> list[str]:
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"{what}[{i}] is empty; every {what[:-1]} must be a sentence of text")
    return texts


class Thresholds(_Strict):
    """Per layer: a number, or "auto" (picked for `target_fpr`). Embedding scores are cosines in [-1, 1];
    classifier scores are probabilities in [0, 1]."""

    embedding: float | Literal["auto"] = AUTO
    classifier: float | Literal["auto"] = AUTO

    @field_validator("embedding", "classifier", mode="plain")
    @classmethod
    def _number_or_auto(cls, value: object, info: ValidationInfo) -> float | str:
        low = -1.0 if info.field_name == "embedding" else 0.0
        if value == AUTO:
            return AUTO
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= 1.0:
            raise ValueError(f'must be "auto" or a number from {low:g} to 1, got {value!r}')
        return float(value)


class OnTimeout(StrEnum):
    """What a window the judge could not answer in time (or answered with an error) counts as."""

    BLOCK = "block"  # fail closed: the window counts as the concept
    PASS = "pass"  # fail open: the window passes


class ConceptJudge(_Strict):
    """The judge stage (`filters.judge`): classifier windows scored inside an uncertainty band go to a judge model
    (any OpenAI-compatible chat endpoint), whose yes/no answer decides them. Below the band a window passes, at or
    above it the classifier's verdict stands, without a call.

    The band is either `band: [low, high]` in classifier probabilities, or `band_fpr: [wide, narrow]`: `low` is the
    score that a share `wide` of the negative texts (counterexamples + background, scored by the trained head)
    reach, `high` the score that a share `narrow` reach; the classifier's threshold always lies inside. Neither
    given: `band_fpr: [0.2, 0.0]`."""

    band: tuple[float, float] | None = None
    band_fpr: tuple[float, float] | None = None
    url: str | None = None
    """Base URL of the judge's OpenAI-compatible API (e.g. http://gpu-node:8000/v1). Unset: the gateway's
    QUELL_JUDGE_URL, else the gateway's own backend."""
    model: str | None = None
    """Unset: the gateway's QUELL_JUDGE_MODEL, else the first model the endpoint lists."""
    timeout_ms: int = Field(default=3000, ge=10, le=120_000)
    """Time budget per window, queueing included; past it the window follows `on_timeout`."""
    on_timeout: OnTimeout | None = None
    """Unset: `block` when the target's on_concept is `refuse`, `pass` otherwise."""
    yes_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    """The judge says yes when P(yes), normalised over yes/no, reaches this. 0.5 for a judge that answers like a
    classifier; a judge model that leans to one answer can be recalibrated on texts the operator labelled."""

    @field_validator("band")
    @classmethod
    def _band_in_order(cls, band: tuple[float, float] | None) -> tuple[float, float] | None:
        if band is not None and not 0.0 <= band[0] < band[1] <= 1.0:
            raise ValueError(f"band must be [low, high] with 0 <= low < high <= 1 (classifier probabilities), got "
                             f"{list(band)}")  # fmt: skip
        return band

    @field_validator("band_fpr")
    @classmethod
    def _band_fpr_in_order(cls, band: tuple[float, float] | None) -> tuple[float, float] | None:
        if band is not None and not 0.5 >= band[0] > band[1] >= 0.0:
            raise ValueError(f"band_fpr must be [wide, narrow] with 0.5 >= wide > narrow >= 0 (shares of negative "
                             f"texts), got {list(band)}")  # fmt: skip
        return band

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"url must be an http(s) base URL such as http://host:8000/v1, got {url!r}")
        return url

    @model_validator(mode="after")
    def _one_band(self) -> ConceptJudge:
        if self.band is not None and self.band_fpr is not None:
            raise ValueError("give band or band_fpr, not both")
        return self


class Concept(_Strict):
    """What the semantic layers look for: a description, examples of it, and near things that are not it."""

    description: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)
    counterexamples: list[str] = Field(default_factory=list)
    layers: list[SemanticLayer] = Field(default_factory=lambda: [SemanticLayer.CLASSIFIER], min_length=1)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    target_fpr: float = Field(default=0.01, gt=0.0, le=0.2)
    """False-positive rate `auto` thresholds aim for, measured on counterexamples + the shipped background set."""
    judge: ConceptJudge | None = None
    """A judge model for the classifier's uncertain windows (see ConceptJudge); unset: the classifier decides."""

    @field_validator("examples")
    @classmethod
    def _examples_not_blank(cls, texts: list[str]) -> list[str]:
        return _no_blank_texts(texts, "examples")

    @field_validator("counterexamples")
    @classmethod
    def _counterexamples_not_blank(cls, texts: list[str]) -> list[str]:
        return _no_blank_texts(texts, "counterexamples")

    @field_validator("layers")
    @classmethod
    def _layers_unique(cls, layers: list[SemanticLayer]) -> list[SemanticLayer]:
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers {[str(x) for x in layers]} name a layer twice")
        return layers

    @model_validator(mode="after")
    def _layers_have_what_they_need(self) -> Concept:
        if SemanticLayer.CLASSIFIER in self.layers and len(self.examples) < MIN_CLASSIFIER_EXAMPLES:
            raise ValueError(
                f"the classifier layer is trained on examples: give at least {MIN_CLASSIFIER_EXAMPLES} (about eight "
                f"work well), or set layers: [embedding]; got {len(self.examples)}"
            )
        for layer in SemanticLayer:
            if getattr(self.thresholds, layer.value) != AUTO and layer not in self.layers:
                raise ValueError(
                    f"thresholds.{layer.value} is set but {layer.value!r} is not in layers "
                    f"{[str(x) for x in self.layers]}; add it to layers or remove the threshold"
                )
        if self.judge is not None and SemanticLayer.CLASSIFIER not in self.layers:
            raise ValueError("judge decides the classifier's uncertain windows: add classifier to layers or remove "
                             "judge")  # fmt: skip
        return self


class WindowUnit(StrEnum):
    SENTENCES = "sentences"
    WORDS = "words"  # whitespace-separated words, a model-independent stand-in for tokens


class Window(_Strict):
    """How text is cut into the windows the semantic layers score: `size` units, consecutive windows sharing
    `overlap` units. A unit longer than `max_chars` is split at a space (text without punctuation still flows)."""

    unit: WindowUnit = WindowUnit.SENTENCES
    size: int = Field(default=2, ge=1, le=512)
    overlap: int = Field(default=1, ge=0)
    max_chars: int = Field(default=400, ge=20, le=20000)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Window:
        if self.overlap >= self.size:
            raise ValueError(
                f"overlap ({self.overlap}) must be smaller than size ({self.size}) or windows never advance"
            )
        return self


class StreamMode(StrEnum):
    SAFE = "safe"  # release text only after a window holding it passed
    FAST = "fast"  # release at once; on detection the caller cuts the stream


class InputScope(StrEnum):
    LAST_USER = "last_user"  # the input screen reads the last user message
    CONVERSATION = "conversation"  # ... or every user and assistant message


class Semantic(_Strict):
    """Policy-wide settings of the semantic layers (the per-target part lives in `Target.concept`)."""

    window: Window = Field(default_factory=Window)
    stream_mode: StreamMode = StreamMode.SAFE
    input_scope: InputScope = InputScope.LAST_USER


class ProtectedAction(StrEnum):
    MASK = "mask"  # decode time: the (max_quote_words + 1)-th word cannot be emitted (text fallback: redact the run)
    STOP = "stop"
    REFUSE = "refuse"


class ProtectedText(_Strict):
    """A corpus no quote of which may run longer than `max_quote_words` words (`filters.protected_text`).
    `sources` are files or globs relative to the policy file: .txt, .md, or .jsonl with a `text` field. Loading
    reads them (context `base_dir`: the policy's folder) and rejects missing, unreadable, binary and empty files."""

    sources: list[str] = Field(min_length=1)
    max_quote_words: int = Field(le=1000)
    _corpus: Corpus | None = PrivateAttr(default=None)

    @field_validator("max_quote_words")
    @classmethod
    def _long_enough(cls, value: int) -> int:
        if value < MIN_QUOTE_WORDS:
            raise ValueError(f"must be at least {MIN_QUOTE_WORDS} (shorter runs are ordinary phrases), got {value}")
        return value

    @model_validator(mode="after")
    def _read_sources(self, info: ValidationInfo) -> ProtectedText:
        base = (info.context or {}).get("base_dir")
        if base is None:
            raise ValueError("sources are read relative to the policy file, and this policy text has no file; "
                             "load it from the policies folder")  # fmt: skip
        try:
            self._corpus = scan_sources(self.sources, base, self.max_quote_words)
        except CorpusError as exc:
            raise ValueError(f"sources: {exc}") from None
        return self

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            raise RuntimeError("protected_text was not validated against its files")
        return self._corpus


class Pattern(_Strict):
    """An identifier pattern (`filters.patterns`: what it reads, the supported subset, what is rejected)."""

    name: str = Field(pattern=ID_PATTERN)
    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str) -> str:
        try:
            compile_pattern(regex)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return regex


class Target(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    terms: list[str] = Field(default_factory=list)
    patterns: list[Pattern] = Field(default_factory=list)
    """Identifiers that are masked (or redacted, ...: `on_surface`) wherever they appear, named or not."""
    facts: list[str] = Field(default_factory=list)
    """Short strings identifying this person (a date of birth, a street address, an employer), masked only where the
    conversation or the answer names the target (`filters.facts`)."""
    allow_short: bool = False
    near_names: bool = False
    """Also catch near spellings of this target's names of two or more words in the text backstop ("Werner Herzöog",
    "Harrison F. Ford"): what a model writes when the decode-time mask bans the name (`filters.near_names`)."""
    concept: Concept | None = None
    protected_text: ProtectedText | None = None
    match: TermMatch = TermMatch.READER
    on_surface: SurfaceAction = SurfaceAction.MASK
    on_concept: ConceptAction = ConceptAction.REFUSE
    on_protected: ProtectedAction = ProtectedAction.MASK

    @field_validator("terms")
    @classmethod
    def _terms_can_match(cls, terms: list[str]) -> list[str]:
        for term in terms:
            if not word_chars(term):
                raise ValueError(f"term {term!r} has no letters or digits once normalised, so it can never match")
        return terms

    @field_validator("patterns")
    @classmethod
    def _unique_pattern_names(cls, patterns: list[Pattern]) -> list[Pattern]:
        names = [p.name for p in patterns]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"pattern names {twice} appear twice")
        return patterns

    @field_validator("facts")
    @classmethod
    def _facts_can_match(cls, facts: list[str]) -> list[str]:
        for fact in facts:
            if len(word_chars(fact)) < MIN_FACT_WORD_CHARS:
                raise ValueError(f"fact {fact!r} has fewer than {MIN_FACT_WORD_CHARS} letters or digits once "
                                 "normalised; a fact must identify the person, not match ordinary words")  # fmt: skip
            fact_forms(fact)
        return facts

    @model_validator(mode="after")
    def _short_terms_need_consent(self) -> Target:
        if not self.allow_short:
            short = [t for t in self.terms if len(word_chars(t)) < MIN_TERM_WORD_CHARS]
            if short:
                raise ValueError(
                    f"terms {short} have fewer than {MIN_TERM_WORD_CHARS} letters or digits and would match inside "
                    "ordinary text; set allow_short: true on this target if that is intended"
                )
        if not self.terms and self.concept is None and self.protected_text is None and not self.patterns:
            raise ValueError("a target needs terms, a concept, protected_text, patterns, or several of them")
        if self.facts and not self.terms:
            raise ValueError("facts are masked where the person is named: give the target the terms that name them")
        return self

    @property
    def judge_on_timeout(self) -> OnTimeout:
        """The concept judge's time-out policy, its default resolved: fail closed for `refuse` targets."""
        judge = self.concept.judge if self.concept is not None else None
        if judge is not None and judge.on_timeout is not None:
            return judge.on_timeout
        return OnTimeout.BLOCK if self.on_concept is ConceptAction.REFUSE else OnTimeout.PASS


Direction = Literal["input", "output"]


def _output_only() -> list[Direction]:
    return ["output"]


class Policy(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    description: str = ""
    default: bool = False
    applies_to: list[Direction] = Field(default_factory=_output_only, min_length=1)
    refusal: str = Field(default="Sorry, I can't help with that.", min_length=1)
    targets: list[Target] = Field(min_length=1)
    semantic: Semantic = Field(default_factory=Semantic)

    @field_validator("targets")
    @classmethod
    def _unique_target_ids(cls, targets: list[Target]) -> list[Target]:
        seen: set[str] = set()
        for target in targets:
            if target.id in seen:
                raise ValueError(f"target id {target.id!r} appears twice")
            seen.add(target.id)
        return targets

    @cached_property
    def version(self) -> str:
        """sha256 of the canonical form (12 hex digits shown; the full digest is `digest`)."""
        return self.digest[:12]

    @cached_property
    def digest(self) -> str:
        data = self.model_dump(mode="json")
        corpora = [t.protected_text.corpus.digest for t in self.targets if t.protected_text is not None]
        if corpora:  # the same file names over new text are a new version
            data["protected_text_corpora"] = corpora
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def ref(self) -> str:
        """`id@version`, the name every decision carries."""
        return f"{self.id}@{self.version}"
