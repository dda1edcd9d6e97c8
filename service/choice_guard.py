"""Every output layer over one choice's text: the surface guard first, then the semantic layers on what it lets out.

Streams and JSON responses go through the same two stages. In a stream the semantic stage holds text back in `safe`
mode until a window holding it passed (`fast`: released at once, the stream is cut on detection), and any blocking
concept detection ends the stream (a `redact` concept action ends it too: the window's earlier text is already out).
A JSON response is checked whole, and a concept `redact` replaces the flagged window there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from filters.decision import ACTION_RANK, Decision
from filters.policy import ConceptAction, StreamMode
from filters.protected_text import ProtectedStream
from filters.semantic import SemanticGuard
from filters.semantic_stream import SemanticStream
from filters.stream_guard import REDACTION, GuardStep, OutputGuard
from filters.text_matcher import Match, redact
from service.semantic_runtime import SemanticRuntime


@dataclass
class ChoiceGuard:
    surface: OutputGuard
    semantic: SemanticGuard | None
    runtime: SemanticRuntime
    refusals: dict[str, str]  # policy ref -> its refusal text
    surface_seconds: float = 0.0
    semantic_seconds: float = 0.0
    _stream: SemanticStream | None = None
    _released: int = 0  # how much of the semantic stream's text went out
    _stopped: bool = False
    _decisions: list[Decision] = field(default_factory=list)
    protected: ProtectedStream | None = None
    """Protected-text runs, checked on what the surface stage lets out (built from the surface layer's rules)."""

    def __post_init__(self) -> None:
        if self.protected is None and self.surface.surface.protected:
            self.protected = ProtectedStream(self.surface.surface.protected)

    @property
    def decisions(self) -> list[Decision]:
        return self._decisions

    @property
    def stopped(self) -> bool:
        return self._stopped

    # ---- streams -------------------------------------------------------------------------------------------------
    async def feed(self, text: str) -> GuardStep:
        return await self._stage(self._surface(lambda: self.surface.feed(text)), final=False)

    async def finish(self) -> GuardStep:
        return await self._stage(self._surface(self.surface.finish, final=True), final=True)

    def _surface(self, call, final: bool = False) -> GuardStep:
        started = time.perf_counter()
        step = call()
        if self.protected is not None:
            step = self.protected.pipe(step, final)
        self.surface_seconds += time.perf_counter() - started
        self._decisions += step.decisions
        return step

    async def _stage(self, step: GuardStep, final: bool) -> GuardStep:
        if self._stopped:
            return GuardStep("", stopped=True)
        if self.semantic is None:
            self._stopped = step.stopped
            return step
        if self._stream is None:
            # Holding text back (safe mode) only pays when a detection can block; flag-only targets stream at once.
            blocking = any(m.target.on_concept is not ConceptAction.FLAG for m in self.semantic.models_for("output"))
            self._stream = SemanticStream(self.semantic, mode=None if blocking else StreamMode.FAST)
        stream = self._stream
        started = time.perf_counter()
        found = await stream.feed_async(step.text) if step.text else []
        if (final or step.stopped) and not stream.blocked:
            found += await stream.finish_async()
        self.semantic_seconds += time.perf_counter() - started
        decisions = self.runtime.keep(found)
        self._decisions += decisions
        out = stream.text[self._released : stream.safe_end]
        self._released = stream.safe_end
        blocking = [d for d in decisions if d.action != "flag"]
        refusal = step.refusal or self._refusal(blocking)
        stopped = step.stopped or stream.blocked
        if stopped:
            self._stopped = True
        return GuardStep(out, step.decisions + tuple(decisions), stopped, refusal if stopped else None)

    def _refusal(self, decisions: list[Decision]) -> str | None:
        refusing = [d for d in decisions if d.action == "refuse"]
        return self.refusals.get(refusing[0].policy_ref) if refusing else None

    # ---- whole texts ---------------------------------------------------------------------------------------------
    async def whole(self, text: str) -> tuple[str, bool]:
        """Guard a complete text: (what the client gets, whether it was cut or refused)."""
        first = self._surface(lambda: self.surface.feed(text))
        last = self._surface(self.surface.finish, final=True)
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
        decisions = self.runtime.keep(await self.semantic.check_async(out))
        self.semantic_seconds += time.perf_counter() - started
        self._decisions += decisions
        acting = [d for d in decisions if d.action != "flag"]
        if not acting:
            self._stopped = stopped
            return out, stopped
        strongest = max(acting, key=lambda d: ACTION_RANK[d.action])
        if strongest.action == "refuse":
            self._stopped = True
            return self.refusals.get(strongest.policy_ref, ""), True
        if strongest.action == "stop":
            self._stopped = True
            return out[: min(d.start or 0 for d in acting if d.action == "stop")], True
        spans = [Match("", d.start or 0, d.end or len(out)) for d in acting]
        self._stopped = stopped
        return redact(out, spans, REDACTION), stopped
