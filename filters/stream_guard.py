"""Guard one generated text (one choice) as it streams: release what is safe, redact, stop or refuse.

The same object serves JSON responses (feed the whole text, then finish) and SSE streams (feed each delta), so both
paths decide identically. Only the suffix that could still become part of a match is held back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from filters.decision import Action, Decision, Layer
from filters.policy import SurfaceAction
from filters.surface import SurfaceLayer
from filters.text_matcher import Match, StreamMatcher, redact

REDACTION = "[redacted]"


@dataclass(frozen=True)
class GuardStep:
    text: str
    """Text that may go to the client now."""
    decisions: tuple[Decision, ...] = ()
    stopped: bool = False
    """The response must end here (finish_reason "content_filter"); later input is ignored."""
    refusal: str | None = None
    """Set when a `refuse` target fired: JSON responses are replaced by it, streams end with it."""


@dataclass
class OutputGuard:
    surface: SurfaceLayer
    _matcher: StreamMatcher | None = None
    _buffer: str = ""  # text fed but not yet released; starts at absolute offset _base
    _base: int = 0
    _pending: list[Match] = field(default_factory=list)  # confirmed redactions not yet released
    _stopped: bool = False

    def __post_init__(self) -> None:
        if self.surface.automaton is not None:
            self._matcher = StreamMatcher(self.surface.automaton)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def feed(self, text: str) -> GuardStep:
        if self._stopped:
            return GuardStep("", stopped=True)
        self._buffer += text
        if self._matcher is None:
            return self._release_all()
        return self._decide(self._matcher.feed(text), final=False)

    def finish(self) -> GuardStep:
        if self._stopped:
            return GuardStep("", stopped=True)
        if self._matcher is None:
            return self._release_all()
        return self._decide(self._matcher.finish(), final=True)

    def _release_all(self) -> GuardStep:
        text, self._buffer = self._buffer, ""
        self._base += len(text)
        return GuardStep(text)

    def _decide(self, matches: list[Match], final: bool) -> GuardStep:
        decisions: list[Decision] = []
        cut: int | None = None
        refusal: str | None = None
        for m in matches:
            rule = self.surface.strongest(m.term)
            terminal = rule.action in (SurfaceAction.STOP, SurfaceAction.REFUSE)
            # A `mask` term that reaches the text got past the decode mask (or there is none): redact it.
            action = Action(rule.action.value if terminal else SurfaceAction.REDACT.value)
            decisions.append(Decision(rule.policy_ref, rule.target_id, Layer.SURFACE, action, 1.0, m.start, m.end,
                                      self.surface.detail(m.term)))  # fmt: skip
            if terminal:
                if cut is None or m.start < cut:
                    cut = m.start
                if rule.action is SurfaceAction.REFUSE:
                    refusal = refusal or rule.refusal
            else:
                self._pending.append(m)
        if cut is not None:
            self._stopped = True
            return GuardStep(self._take(cut), tuple(decisions), stopped=True, refusal=refusal)
        boundary = self._base + len(self._buffer) if final else self._matcher.safe_end  # type: ignore[union-attr]
        for m in self._pending:
            if m.end > boundary:
                boundary = min(boundary, m.start)
        return GuardStep(self._take(boundary), tuple(decisions))

    def _take(self, upto: int) -> str:
        """Release the buffer up to absolute offset `upto`, with every pending redaction inside it applied."""
        upto = max(upto, self._base)
        inside = [m for m in self._pending if m.end <= upto]
        self._pending = [m for m in self._pending if m.end > upto]
        chunk = self._buffer[: upto - self._base]
        shifted = [Match(m.term, m.start - self._base, m.end - self._base) for m in inside if m.start >= self._base]
        text = redact(chunk, shifted, REDACTION)
        self._buffer = self._buffer[upto - self._base :]
        self._base = upto
        return text
