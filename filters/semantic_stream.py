"""Semantic layers over a streamed response: windows of sentences (or words) checked as they complete.

Call order, per response:
    stream = SemanticStream(guard)              # mode from the policies: safe if any output policy says safe
    for chunk in model_output:
        detections = stream.feed(chunk)         # checks the windows this chunk completed
        release text[released:stream.safe_end]  # (together with the surface matcher's safe_end: take the minimum)
        if any(d.action != "flag" for d in detections): cut the stream (finish_reason "content_filter")
    detections = stream.finish()                # checks the last, partial window; then safe_end == position
`feed_async` / `finish_async` do the same with the embedder off the event loop, and, given `judge`
(`filters.judge.Judges`), have the judge decide the windows its concepts' classifiers are unsure about before
anything is released or blocked (the sync `feed` / `finish` leave those to the classifier's own threshold).

Modes (`Policy.semantic.stream_mode`):
- safe: `safe_end` only passes text once a window holding it was checked and passed. With the default window
  (2 sentences, overlap 1) a sentence is released when the next one ends: the added latency is one sentence plus
  one embedding call. After a blocking detection `safe_end` never moves again.
- fast: `safe_end` is always the whole text; a detection arrives one window late and the caller cuts from there.
The windows are exactly those `SemanticGuard.check` uses on the finished text, so the two agree.
`check_seconds` is the time spent embedding and scoring, the added cost either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from filters.policy import ConceptAction, StreamMode, Window
from filters.semantic import (
    Detection,
    Direction,
    SemanticGuard,
    TargetModel,
    _detections,
    add_unit,
    next_unit_end,
    window_ranges,
    window_text,
)

if TYPE_CHECKING:
    from filters.judge import Judges


@dataclass
class _Track:
    """Windowing state for one window spec (policies with the same spec share it)."""

    window: Window
    models: list[TargetModel]
    units: list[tuple[int, int]] = field(default_factory=list)
    scan: int = 0  # where the next unit starts
    windows_done: int = 0  # full windows checked so far
    checked_end: int = 0  # end of the last unit of the last checked window


@dataclass
class _Pending:
    track: _Track
    spans: list[tuple[int, int]]
    full_windows: int  # how many of `spans` are full windows (the rest: the final partial one)


class SemanticStream:
    def __init__(
        self,
        guard: SemanticGuard,
        *,
        direction: Direction = "output",
        mode: StreamMode | None = None,
        judge: Judges | None = None,
    ):
        self._guard = guard
        self._judge = judge
        models = guard.models_for(direction)
        if mode is None:
            safe = any(m.policy.semantic.stream_mode == StreamMode.SAFE for m in models)
            mode = StreamMode.SAFE if safe else StreamMode.FAST
        self.mode = mode
        tracks: dict[Window, _Track] = {}
        for model in models:
            spec = model.policy.semantic.window
            tracks.setdefault(spec, _Track(spec, []))
            tracks[spec].models.append(model)
        self._tracks = list(tracks.values())
        self._text = ""
        self._finished = False
        self._blocked_at: int | None = None
        self.check_seconds = 0.0

    @property
    def text(self) -> str:
        """Everything fed so far; detection spans index into it."""
        return self._text

    @property
    def position(self) -> int:
        return len(self._text)

    @property
    def blocked(self) -> bool:
        """A detection whose action is not `flag` was reported; nothing more will be checked or released."""
        return self._blocked_at is not None

    @property
    def safe_end(self) -> int:
        """Text before this offset may be released."""
        if self._blocked_at is not None:
            return self._blocked_at
        if self.mode == StreamMode.FAST or self._finished or not self._tracks:
            return len(self._text)
        return min(track.checked_end for track in self._tracks)

    def feed(self, text: str) -> list[Detection]:
        pending = self._accept(text, final=False)
        return self._apply(pending, self._encode(pending))

    def finish(self) -> list[Detection]:
        pending = self._accept("", final=True)
        found = self._apply(pending, self._encode(pending))
        self._finished = True
        return found

    async def feed_async(self, text: str) -> list[Detection]:
        pending = self._accept(text, final=False)
        return await self._apply_async(pending, await self._encode_async(pending))

    async def finish_async(self) -> list[Detection]:
        pending = self._accept("", final=True)
        found = await self._apply_async(pending, await self._encode_async(pending))
        self._finished = True
        return found

    async def _apply_async(self, pending: list[_Pending], encoded: tuple[np.ndarray, float] | None) -> list[Detection]:
        if encoded is None or self._judge is None:
            return self._apply(pending, encoded)
        found = self._score(pending, encoded[0], judge_band=True)
        found = await self._judge.resolve(self._text, found)
        return self._commit(pending, found, encoded[1])

    # ---- internals -----------------------------------------------------------------------------------------------

    def _accept(self, text: str, final: bool) -> list[_Pending]:
        if self._finished:
            raise RuntimeError("SemanticStream.feed or finish after finish()")
        self._text += text
        if self._blocked_at is not None:
            return []
        pending = []
        for track in self._tracks:
            while (end := next_unit_end(self._text, track.scan, track.window, final)) is not None:
                add_unit(track.units, self._text, track.scan, end)
                track.scan = end
            ranges = window_ranges(len(track.units), track.window, final, first=track.windows_done)
            full = len(window_ranges(len(track.units), track.window, False, first=track.windows_done))
            spans = [(track.units[i][0], track.units[j - 1][1]) for i, j in ranges]
            if spans:
                pending.append(_Pending(track, spans, full))
        return pending

    def _texts(self, pending: list[_Pending]) -> list[str]:
        return [window_text(self._text, span) for p in pending for span in p.spans]

    def _encode(self, pending: list[_Pending]) -> tuple[np.ndarray, float] | None:
        if not pending:
            return None
        started = time.perf_counter()
        return self._guard.embedder.encode(self._texts(pending)), started

    async def _encode_async(self, pending: list[_Pending]) -> tuple[np.ndarray, float] | None:
        if not pending:
            return None
        started = time.perf_counter()
        return await self._guard.embedder.encode_async(self._texts(pending)), started

    def _apply(self, pending: list[_Pending], encoded: tuple[np.ndarray, float] | None) -> list[Detection]:
        if encoded is None:
            return []
        return self._commit(pending, self._score(pending, encoded[0]), encoded[1])

    def _score(self, pending: list[_Pending], vectors: np.ndarray, judge_band: bool = False) -> list[Detection]:
        found: list[Detection] = []
        row = 0
        for p in pending:
            rows = vectors[row : row + len(p.spans)]
            row += len(p.spans)
            for model in p.track.models:
                for layer, scores, threshold in model.layer_scores(rows):
                    found.extend(_detections(model, layer, scores, threshold, p.spans, True, judge_band))
        return found

    def _commit(self, pending: list[_Pending], found: list[Detection], started: float) -> list[Detection]:
        blocking = [d for d in found if d.action != ConceptAction.FLAG]
        if blocking:
            self._blocked_at = self.safe_end  # what passed before this check stays released, nothing after
        for p in pending:
            p.track.windows_done += p.full_windows
            p.track.checked_end = max(p.track.checked_end, p.spans[-1][1])
        self.check_seconds += time.perf_counter() - started
        return found
