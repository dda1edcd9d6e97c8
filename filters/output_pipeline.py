"""The one output pipeline of a choice: every layer that judges model text, in order, turning detections into
`Decision`s and deciding what the client gets.

Stages, each fed only what the stages before it let out:
1. surface: terms (and anything else compiled into the surface automaton) through `OutputGuard`, the text backstop;
2. protected text: runs of protected corpus words longer than a target allows (`ProtectedStream`);
3. near names: near spellings of the names of targets with `near_names: true` (`NearNameStream`), what a model
   writes when the decode-time mask bans the name;
4. semantic: concept windows (`SemanticStream` over a `SemanticGuard`), and when the pipeline has `judge`, the
   judge model on the windows a concept's classifier is unsure about (`filters.judge`; its decisions have layer
   `judge`).

Streams and JSON responses go through the same stages. In a stream the semantic stage holds text back in `safe`
mode until a window holding it passed (`fast`: released at once, the stream is cut on detection), and any blocking
concept detection ends the stream (a `redact` concept action ends it too: the window's earlier text is already out).
A JSON response is checked whole, and a concept `redact` replaces the flagged window there.

The service only moves bytes: it builds one pipeline per choice and text channel, feeds it, and sends what comes out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from filters.decision import Action, Decision, Layer
from filters.judge import Judges
from filters.near_names import NearNameStream
from filters.policy import ConceptAction, StreamMode
from filters.protected_text import ProtectedStream
from filters.semantic import Detection, SemanticGuard
from filters.semantic_stream import SemanticStream
from filters.stream_guard import REDACTION, GuardStep, OutputGuard
from filters.text_matcher import Match, redact


def semantic_decisions(detections: Sequence[Detection]) -> list[Decision]:
    """Concept detections as decisions (scores rounded as clients and audit see them)."""
    return [Decision(d.policy_ref, d.target_id, Layer(d.layer), Action(d.action.value), round(float(d.score), 4),
                     d.span[0], d.span[1]) for d in detections]  # fmt: skip


@dataclass
class OutputPipeline:
    surface: OutputGuard
    semantic: SemanticGuard | None
    refusals: Mapping[str, str]  # policy ref -> its refusal text
    surface_seconds: float = 0.0
    """Time spent in the text stages (surface and protected text), for the per-layer latency metric."""
    semantic_seconds: float = 0.0
    protected: ProtectedStream | None = None
    """Protected-text runs, checked on what the surface stage lets out (built from the surface layer's rules)."""
    near: NearNameStream | None = None
    """Near spellings of names (`filters.near_names`), checked on what the earlier text stages let out."""
    judge: Judges | None = None
    """The judge for concepts that have one (`concept.judge`); None: their classifier's threshold decides."""
    _stream: SemanticStream | None = None
    _released: int = 0  # how much of the semantic stream's text went out
    _stopped: bool = False
    _decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.protected is None and self.surface.surface.protected:
            self.protected = ProtectedStream(self.surface.surface.protected)
        if self.near is None and self.surface.surface.near_names:
            self.near = NearNameStream(names=self.surface.surface.near_names)

    @property
    def decisions(self) -> list[Decision]:
        """Every decision taken on this choice so far, in the order taken."""
        return self._decisions

    @property
    def stopped(self) -> bool:
        return self._stopped

    # ---- streams -------------------------------------------------------------------------------------------------
    async def feed(self, text: str) -> GuardStep:
        return await self._semantic_stage(self._text_stages(lambda: self.surface.feed(text)), final=False)

    async def finish(self) -> GuardStep:
        return await self._semantic_stage(self._text_stages(self.surface.finish, final=True), final=True)

    def _text_stages(self, call: Callable[[], GuardStep], final: bool = False) -> GuardStep:
        started = time.perf_counter()
        step = call()
        if self.protected is not None:
            step = self.protected.pipe(step, final)
        if self.near is not None:
            step = self.near.pipe(step, final)
        self.surface_seconds += time.perf_counter() - started
        self._decisions += step.decisions
        return step

    async def _semantic_stage(self, step: GuardStep, final: bool) -> GuardStep:
        if self._stopped:
            return GuardStep("", stopped=True)
        if self.semantic is None:
            self._stopped = step.stopped
            return step
        if self._stream is None:
            # Holding text back (safe mode) only pays when a detection can block; flag-only targets stream at once.
            blocking = any(m.target.on_concept is not ConceptAction.FLAG for m in self.semantic.models_for("output"))
            self._stream = SemanticStream(self.semantic, mode=None if blocking else StreamMode.FAST, judge=self.judge)
        stream = self._stream
        started = time.perf_counter()
        found = await stream.feed_async(step.text) if step.text else []
        if (final or step.stopped) and not stream.blocked:
            found += await stream.finish_async()
        self.semantic_seconds += time.perf_counter() - started
        decisions = semantic_decisions(found)
        self._decisions += decisions
        out = stream.text[self._released : stream.safe_end]
        self._released = stream.safe_end
        refusal = step.refusal or self._refusal([d for d in decisions if d.action.blocks])
        stopped = step.stopped or stream.blocked
        if stopped:
            self._stopped = True
        return GuardStep(out, step.decisions + tuple(decisions), stopped, refusal if stopped else None)

    def _refusal(self, decisions: list[Decision]) -> str | None:
        refusing = [d for d in decisions if d.action is Action.REFUSE]
        return self.refusals.get(refusing[0].policy_ref) if refusing else None

    # ---- whole texts ---------------------------------------------------------------------------------------------
    async def whole(self, text: str) -> tuple[str, bool]:
        """Guard a complete text: (what the client gets, whether it was cut or refused)."""
        first = self._text_stages(lambda: self.surface.feed(text))
        last = self._text_stages(self.surface.finish, final=True)
        refusal = first.refusal or last.refusal
        if refusal:
            self._stopped = True
            return refusal, True
        out = first.text + last.text
        stopped = first.stopped or last.stopped
        if self.semantic is None or not out.strip():
            self._stopped = stopped
            return out, stopped
        started = time.perf_counter()
        if self.judge is None:
            found = await self.semantic.check_async(out)
        else:
            found = await self.judge.resolve(out, await self.semantic.check_async(out, judge_band=True))
        decisions = semantic_decisions(found)
        self.semantic_seconds += time.perf_counter() - started
        self._decisions += decisions
        acting = [d for d in decisions if d.action.blocks]
        if not acting:
            self._stopped = stopped
            return out, stopped
        strongest = max(acting, key=lambda d: d.action.rank)
        if strongest.action is Action.REFUSE:
            self._stopped = True
            return self.refusals.get(strongest.policy_ref, ""), True
        if strongest.action is Action.STOP:
            self._stopped = True
            return out[: min(d.start or 0 for d in acting if d.action is Action.STOP)], True
        spans = [Match("", d.start or 0, d.end or len(out)) for d in acting]
        self._stopped = stopped
        return redact(out, spans, REDACTION), stopped
