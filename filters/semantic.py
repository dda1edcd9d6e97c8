"""The semantic layers over whole texts: `SemanticGuard` scores windows of text against every concept target.

Call order (a pure library; the gateway wires it):
    cache = ClassifierCache()                           # once per process, survives policy reloads
    guard = SemanticGuard(policies, embedder, cache)    # at policy (re)load: embeds anchors, trains classifiers
    guard.check(text)              -> list[Detection]   # flagged only; `check_batch` for many texts
    guard.scores(texts)            -> per text, the best window of every (target, layer), flagged or not
    guard.check_messages(messages) -> input screen, each policy reading its `input_scope`
    SemanticStream(guard, ...)     -> streamed output (filters.semantic_stream)
Every method has an `_async` twin that embeds off the event loop.

A text is cut into windows by the policy's `semantic.window` (see `window_spans`); each window is embedded once
and scored by every target's enabled layers. A `Detection` is a window (or a run of overlapping flagged windows,
merged) whose score reached the layer's threshold.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from filters.concept_classifier import (
    DEFAULT_BACKGROUND,
    ClassifierCache,
    ConceptClassifier,
    load_background,
    pick_threshold,
    texts_digest,
)
from filters.embedding import Embedder
from filters.embedding_blocklist import EmbeddingBlocklist
from filters.policy import Concept, ConceptAction, InputScope, Policy, SemanticLayer, Target, Window, WindowUnit

log = logging.getLogger("quell.semantic")

Direction = Literal["input", "output"]
BoundarySource = Literal["background", "example", "counterexample"]


@dataclass(frozen=True)
class Detection:
    """One target's verdict on a span of text. `text[span[0]:span[1]]` is the window (or merged windows)."""

    policy_ref: str  # "id@version"
    target_id: str
    layer: Literal["embedding", "classifier", "judge"]
    score: float  # cosine in [-1, 1] (embedding) or probability in [0, 1] (classifier; judge: P(yes))
    threshold: float
    action: ConceptAction
    span: tuple[int, int]
    uncertain: bool = False
    """A classifier window inside its concept's judge band, asked for with `judge_band=True`: the judge decides it
    (`filters.judge.Judges.resolve`); a caller without a judge reads it by `flagged` as the classifier's verdict."""
    target: Target | None = field(default=None, compare=False, repr=False)
    """The concept target, on uncertain detections (the judge builds its question from it)."""
    judge_outcome: str | None = None
    """On judge detections: yes, or timeout / error when the window was blocked because the judge failed closed."""

    @property
    def flagged(self) -> bool:
        return self.score >= self.threshold

    def as_dict(self) -> dict[str, object]:
        return {"policy": self.policy_ref, "target": self.target_id, "layer": self.layer, "action": str(self.action),
                "score": round(float(self.score), 4), "threshold": round(float(self.threshold), 4),
                "flagged": self.flagged, "span": list(self.span)}  # fmt: skip


@dataclass(frozen=True)
class ConceptWarning:
    """A concept target that should not be trusted to block yet (see ConceptClassifier.readiness)."""

    policy_ref: str
    target_id: str
    cv_recall: float | None
    message: str


@dataclass(frozen=True)
class BoundaryText:
    """A text the classifier scores near its threshold (see SemanticGuard.boundary)."""

    text: str
    source: BoundarySource
    score: float
    flagged: bool


# ---- windows ---------------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?\u2026\u3002]+[\"'\u201d\u2019)\]]*\s|\n")
_WORD_END = re.compile(r"\s")
_NON_SPACE = re.compile(r"\S")


def next_unit_end(text: str, start: int, window: Window, final: bool) -> int | None:
    """End offset of the unit starting at `start`, or None while it may still grow (streaming, `final=False`).

    A unit is leading whitespace, then text up to and including the first whitespace character after a sentence
    end (`.`, `!`, `?`, possibly followed by quotes or brackets) or a newline; for `words`, the first whitespace
    after a word. So a unit is complete as soon as that whitespace arrives, and units tile the text. A unit that
    would pass `max_chars` ends after the last space before that (or at `max_chars` if there is none).
    """
    limit = start + window.max_chars
    first = _NON_SPACE.search(text, start)
    match = None
    if first is not None:
        pattern = _SENTENCE_END if window.unit == WindowUnit.SENTENCES else _WORD_END
        match = pattern.search(text, first.start())
    if match is not None and match.end() <= limit:
        return match.end()
    if len(text) > limit:
        cut = text.rfind(" ", start + 1, limit)
        return cut + 1 if cut > start else limit
    return len(text) if final and len(text) > start else None


def unit_spans(text: str, window: Window, start: int = 0, final: bool = True) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    while start < len(text):
        end = next_unit_end(text, start, window, final)
        if end is None:
            break
        add_unit(spans, text, start, end)
        start = end
    return spans


def add_unit(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    """Append a unit; trailing whitespace with nothing after it joins the unit before it."""
    if spans and not text[start:end].strip():
        spans[-1] = (spans[-1][0], end)
    else:
        spans.append((start, end))


def window_ranges(n_units: int, window: Window, final: bool, first: int = 0) -> list[tuple[int, int]]:
    """Unit index ranges [i, j) of windows number `first`, `first`+1, ... that are complete.

    Window k covers units [k*stride, k*stride + size). When `final`, units left after the last full window get one
    more window: the last `size` units (so a short text is one window).
    """
    stride = window.size - window.overlap
    ranges = []
    k = first
    while k * stride + window.size <= n_units:
        ranges.append((k * stride, k * stride + window.size))
        k += 1
    if final and n_units > 0:
        covered = (k - 1) * stride + window.size if k > 0 else 0
        if covered < n_units:
            ranges.append((max(0, n_units - window.size), n_units))
    return ranges


def window_spans(text: str, window: Window) -> list[tuple[int, int]]:
    """Character spans of the windows of a complete text, in order."""
    units = unit_spans(text, window)
    return [(units[i][0], units[j - 1][1]) for i, j in window_ranges(len(units), window, final=True)]


def window_text(text: str, span: tuple[int, int]) -> str:
    return text[span[0] : span[1]].strip()


# ---- per-target models -------------------------------------------------------------------------------------------

DEFAULT_BAND_FPR = (0.2, 0.0)


def judge_band(concept: Concept, classifier: ConceptClassifier, negative_scores: np.ndarray) -> tuple[float, float]:
    """The (low, high) classifier scores between which the judge decides (`filters.policy.ConceptJudge`).

    `band_fpr: [wide, narrow]` reads them off the trained head's scores on the negative texts (counterexamples +
    background; in-sample, so slightly lower than held-out scores would be): low is the score that a share `wide`
    of them reach, high the score that a share `narrow` reach. The threshold always lies inside the band."""
    judge = concept.judge
    if judge is None:
        raise ValueError("judge_band: the concept has no judge")
    if judge.band is not None:
        low, high = judge.band
    else:
        wide, narrow = judge.band_fpr or DEFAULT_BAND_FPR
        low, high = pick_threshold(negative_scores, wide), pick_threshold(negative_scores, narrow)
    return min(low, classifier.threshold), max(high, float(np.nextafter(classifier.threshold, np.inf)))


@dataclass(frozen=True, eq=False)
class TargetModel:
    policy: Policy
    target: Target
    blocklist: EmbeddingBlocklist | None
    classifier: ConceptClassifier | None
    band: tuple[float, float] | None = None
    """The judge band (low, high) on classifier scores, when the concept has a judge (see `judge_band`)."""

    def layer_scores(self, vectors: np.ndarray) -> Iterable[tuple[str, np.ndarray, float]]:
        if self.blocklist is not None:
            yield SemanticLayer.EMBEDDING.value, self.blocklist.scores(vectors), self.blocklist.threshold
        if self.classifier is not None:
            yield SemanticLayer.CLASSIFIER.value, self.classifier.scores(vectors), self.classifier.threshold


@dataclass
class _Plan:
    """Window texts to embed for a batch, and which windows belong to which (text, window spec)."""

    texts: list[str] = field(default_factory=list)
    # per input text: list of (window spec, spans, row offset into `texts`)
    parts: list[list[tuple[Window, list[tuple[int, int]], int]]] = field(default_factory=list)


class SemanticGuard:
    """Every concept target of `policies`, ready to score text. Build once per policy set; use from any thread."""

    def __init__(
        self,
        policies: Sequence[Policy],
        embedder: Embedder,
        cache: ClassifierCache | None = None,
        *,
        background: tuple[str, ...] | None = None,
        layers: Iterable[str] | None = None,
    ):
        """`layers`: the layers to run (default: each concept's own); a layer outside it never scores or blocks."""
        self.policies = list(policies)
        self.embedder = embedder
        self._cache = cache if cache is not None else ClassifierCache()
        self._background = background if background is not None else load_background(DEFAULT_BACKGROUND)
        self.models: list[TargetModel] = []
        background_vectors = None
        for policy in self.policies:
            for target in policy.targets:
                if target.concept is None:
                    continue
                if background_vectors is None:
                    background_vectors = self._background_vectors()
                self.models.append(self._build(policy, target, background_vectors))
        if layers is not None:
            keep = set(layers)
            self.models = [
                replace(m, blocklist=m.blocklist if SemanticLayer.EMBEDDING.value in keep else None,
                        classifier=m.classifier if SemanticLayer.CLASSIFIER.value in keep else None)
                for m in self.models
            ]  # fmt: skip

    def _background_vectors(self) -> np.ndarray:
        return self._cache.embedded(self.embedder, self._background)

    def _build(self, policy: Policy, target: Target, background: np.ndarray) -> TargetModel:
        key = ("target", self.embedder.name, texts_digest(self._background), policy.digest, target.id)
        return self._cache.get_or_make(key, lambda: self._train(policy, target, background))

    def _train(self, policy: Policy, target: Target, background: np.ndarray) -> TargetModel:
        concept = target.concept
        if concept is None:
            raise ValueError(f"{policy.ref}: target {target.id!r} has no concept to train on")
        anchors = self.embedder.encode([concept.description, *concept.examples])
        counter = self.embedder.encode(concept.counterexamples) if concept.counterexamples else background[:0]
        negatives = np.vstack([counter, background])
        blocklist = classifier = None
        if SemanticLayer.EMBEDDING in concept.layers:
            blocklist = EmbeddingBlocklist.build(
                anchors, negatives, threshold=concept.thresholds.embedding, target_fpr=concept.target_fpr
            )
        if SemanticLayer.CLASSIFIER in concept.layers:
            classifier = ConceptClassifier.train(
                anchors,
                counter,
                background,
                threshold=concept.thresholds.classifier,
                target_fpr=concept.target_fpr,
                name=f"{policy.ref}/{target.id}",
            )
        band = None
        if classifier is not None and concept.judge is not None:
            band = judge_band(concept, classifier, classifier.scores(negatives))
            log.info("%s/%s: judge band %.4f-%.4f around threshold %.4f (%d negative texts)", policy.ref, target.id,
                     band[0], band[1], classifier.threshold, len(negatives))  # fmt: skip
        return TargetModel(policy, target, blocklist, classifier, band)

    def warnings(self) -> list[ConceptWarning]:
        """Concept targets whose classifier is not ready to `refuse` on (low cross-validated recall on its own
        examples); `quell policy test` and the admin `:test` route should show these beside their results."""
        return [
            ConceptWarning(m.policy.ref, m.target.id, m.classifier.cv_recall, m.classifier.readiness() or "")
            for m in self.models
            if m.classifier is not None and not m.classifier.ready
        ]

    def boundary(self, target_id: str, k: int = 8) -> list[BoundaryText]:
        """For the concept target `target_id`: the shipped background texts and the operator's own examples and
        counterexamples that its classifier scores nearest its threshold, nearest first (the operator aid of issue
        14). A background text or counterexample at or above the threshold is generic text the target would block:
        add counterexamples like it. An example below the threshold is one it would miss: add examples like it."""
        model = next((m for m in self.models if m.target.id == target_id and m.classifier is not None), None)
        if model is None or model.classifier is None or model.target.concept is None:
            raise KeyError(
                f"no concept target {target_id!r} with a classifier among {[m.target.id for m in self.models]}"
            )
        concept = model.target.concept
        groups: list[tuple[BoundarySource, list[str], np.ndarray | None]] = [
            ("background", list(self._background), self._background_vectors()),
            ("example", [concept.description, *concept.examples], None),
            ("counterexample", list(concept.counterexamples), None),
        ]
        found: list[BoundaryText] = []
        threshold = model.classifier.threshold
        for source, texts, vectors in groups:
            if not texts:
                continue
            scores = model.classifier.scores(vectors if vectors is not None else self.embedder.encode(texts))
            found.extend(
                BoundaryText(t, source, float(x), bool(x >= threshold)) for t, x in zip(texts, scores, strict=True)
            )
        return sorted(found, key=lambda b: abs(b.score - threshold))[:k]

    # ---- scoring -----------------------------------------------------------------------------------------------

    def models_for(self, direction: Direction | None) -> list[TargetModel]:
        """Targets whose policy applies to `direction`; None: every target (e.g. for /v1/moderations)."""
        return [m for m in self.models if direction is None or direction in m.policy.applies_to]

    def _plan(self, texts: Sequence[str], models: list[TargetModel]) -> _Plan:
        plan = _Plan()
        specs = list(dict.fromkeys(m.policy.semantic.window for m in models))
        for text in texts:
            parts = []
            for spec in specs:
                spans = window_spans(text, spec)
                parts.append((spec, spans, len(plan.texts)))
                plan.texts.extend(window_text(text, s) for s in spans)
            plan.parts.append(parts)
        return plan

    def _verdicts(
        self, plan: _Plan, vectors: np.ndarray, models: list[TargetModel], flagged_only: bool, judge_band: bool = False
    ) -> list[list[Detection]]:
        results: list[list[Detection]] = []
        for parts in plan.parts:
            found: list[Detection] = []
            by_spec = {spec: (spans, offset) for spec, spans, offset in parts}
            for model in models:
                spans, offset = by_spec[model.policy.semantic.window]
                if not spans:
                    continue
                rows = vectors[offset : offset + len(spans)]
                for layer, scores, threshold in model.layer_scores(rows):
                    found.extend(_detections(model, layer, scores, threshold, spans, flagged_only, judge_band))
            results.append(found)
        return results

    def scores(self, texts: Sequence[str], direction: Direction | None = "output") -> list[list[Detection]]:
        """Per text, for every (target, layer): its highest-scoring window, flagged or not (for moderation scores)."""
        models = self.models_for(direction)
        plan = self._plan(texts, models)
        return self._verdicts(plan, self._encode(plan), models, flagged_only=False)

    def check_batch(
        self, texts: Sequence[str], direction: Direction | None = "output", *, judge_band: bool = False
    ) -> list[list[Detection]]:
        """Per text, the flagged detections (overlapping flagged windows of one target and layer merged).
        `judge_band`: for concepts with a judge, classifier windows inside the band come back one by one, marked
        `uncertain`, whatever their score (for `filters.judge.Judges.resolve`)."""
        models = self.models_for(direction)
        plan = self._plan(texts, models)
        return self._verdicts(plan, self._encode(plan), models, flagged_only=True, judge_band=judge_band)

    def check(self, text: str, direction: Direction | None = "output", *, judge_band: bool = False) -> list[Detection]:
        return self.check_batch([text], direction, judge_band=judge_band)[0]

    async def scores_async(self, texts: Sequence[str], direction: Direction | None = "output") -> list[list[Detection]]:
        models = self.models_for(direction)
        plan = self._plan(texts, models)
        return self._verdicts(plan, await self._encode_async(plan), models, flagged_only=False)

    async def check_batch_async(
        self, texts: Sequence[str], direction: Direction | None = "output", *, judge_band: bool = False
    ) -> list[list[Detection]]:
        models = self.models_for(direction)
        plan = self._plan(texts, models)
        vectors = await self._encode_async(plan)
        return self._verdicts(plan, vectors, models, flagged_only=True, judge_band=judge_band)

    async def check_async(
        self, text: str, direction: Direction | None = "output", *, judge_band: bool = False
    ) -> list[Detection]:
        return (await self.check_batch_async([text], direction, judge_band=judge_band))[0]

    def _encode(self, plan: _Plan) -> np.ndarray:
        return self.embedder.encode(plan.texts) if plan.texts else np.zeros((0, 1), dtype=np.float32)

    async def _encode_async(self, plan: _Plan) -> np.ndarray:
        return await self.embedder.encode_async(plan.texts) if plan.texts else np.zeros((0, 1), dtype=np.float32)

    # ---- input screen --------------------------------------------------------------------------------------------

    def check_messages(self, messages: Sequence[Mapping[str, object]]) -> list[Detection]:
        """Input screen over chat messages: each input policy reads its `input_scope` (see `input_text`).

        Spans index into `input_text(messages, policy.semantic.input_scope)`.
        """
        found: list[Detection] = []
        for scope, guard_models in self._by_scope().items():
            text = input_text(messages, scope)
            plan = self._plan([text], guard_models)
            found.extend(self._verdicts(plan, self._encode(plan), guard_models, flagged_only=True)[0])
        return found

    async def check_messages_async(self, messages: Sequence[Mapping[str, object]]) -> list[Detection]:
        found: list[Detection] = []
        for scope, guard_models in self._by_scope().items():
            text = input_text(messages, scope)
            plan = self._plan([text], guard_models)
            vectors = await self._encode_async(plan)
            found.extend(self._verdicts(plan, vectors, guard_models, flagged_only=True)[0])
        return found

    def _by_scope(self) -> dict[InputScope, list[TargetModel]]:
        groups: dict[InputScope, list[TargetModel]] = {}
        for model in self.models_for("input"):
            groups.setdefault(model.policy.semantic.input_scope, []).append(model)
        return groups


def message_text(message: Mapping[str, object]) -> str:
    """The text of an OpenAI chat message: a string, or the `text` parts of a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def input_text(messages: Sequence[Mapping[str, object]], scope: InputScope) -> str:
    """What the input screen reads: the last user message, or every user and assistant message joined by blank
    lines (system prompts are the operator's, not the user's, and are not screened)."""
    if scope == InputScope.LAST_USER:
        for message in reversed(messages):
            if message.get("role") == "user":
                return message_text(message)
        return ""
    return "\n\n".join(message_text(m) for m in messages if m.get("role") in ("user", "assistant"))


def _detections(
    model: TargetModel,
    layer: str,
    scores: np.ndarray,
    threshold: float,
    spans: list[tuple[int, int]],
    flagged_only: bool,
    judge_band: bool = False,
) -> list[Detection]:
    def make(score: float, span: tuple[int, int], uncertain: bool = False) -> Detection:
        return Detection(
            policy_ref=model.policy.ref,
            target_id=model.target.id,
            layer=layer,  # type: ignore[arg-type]
            score=float(score),
            threshold=float(threshold),
            action=model.target.on_concept,
            span=span,
            uncertain=uncertain,
            target=model.target if uncertain else None,
        )

    if not flagged_only:
        best = int(np.argmax(scores))
        return [make(scores[best], spans[best])]
    out: list[Detection] = []
    band = model.band if judge_band and layer == SemanticLayer.CLASSIFIER.value else None
    if band is not None:  # the judge decides the windows inside the band; above it the classifier's verdict stands
        out = [make(x, span, uncertain=True) for x, span in zip(scores, spans, strict=True) if band[0] <= x < band[1]]
        threshold = band[1]
    run_start, run_end = 0, None  # the flagged run being merged; run_start is read only while run_end is set
    run_score = -np.inf
    for score, (start, end) in zip(scores, spans, strict=True):
        if score < threshold:
            continue
        if run_end is not None and start <= run_end:
            run_end, run_score = max(run_end, end), max(run_score, score)
            continue
        if run_end is not None:
            out.append(make(run_score, (run_start, run_end)))
        run_start, run_end, run_score = start, end, score
    if run_end is not None:
        out.append(make(run_score, (run_start, run_end)))
    return out
