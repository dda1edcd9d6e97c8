"""Forward a (chat) completion to the backend and guard what comes back, JSON or SSE.

Per request: take one policy snapshot, compile (cached) its surface layer, ask the backend to mask `mask` terms at
decode time when it has the plugin, and run every choice's text through an `OutputGuard` (the backstop).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from fastapi.responses import JSONResponse, StreamingResponse

from filters.decision import ACTION_RANK, Decision, Layer
from filters.policy import Policy
from filters.semantic import SemanticGuard
from filters.stream_guard import GuardStep, OutputGuard
from filters.surface import SurfaceLayer
from service.backend import Backend
from service.choice_guard import ChoiceGuard
from service.errors import APIError
from service.policy_registry import surface_layer
from service.semantic_runtime import SemanticRuntime

log = logging.getLogger("quell.completions")

Kind = Literal["chat", "completion"]
PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
POLICY_HEADER = "x-quell-policies"


Report = Callable[[list[Decision], str], None]
"""Called once per choice that a layer acted on, with its decisions and the text they refer to (audit, metrics)."""


@dataclass
class GuardedRequest:
    kind: Kind
    body: dict
    policies: list[Policy]
    decode_mask: bool
    text_backstop: bool
    runtime: SemanticRuntime
    semantic: SemanticGuard | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    report: Report | None = None
    observe_layer: Callable[[str, float], None] | None = None
    surface: SurfaceLayer = field(init=False)

    def __post_init__(self) -> None:
        self.surface = surface_layer(self.policies, "output")

    @property
    def headers(self) -> dict[str, str]:
        return {POLICY_HEADER: ",".join(p.ref for p in self.policies), "x-request-id": self.request_id}

    def decided(self, decisions: list[Decision], text: str) -> None:
        if decisions and self.report is not None:
            self.report(decisions, text)

    def done(self, guards: list[ChoiceGuard]) -> None:
        if self.observe_layer is None:
            return
        if self.text_backstop:
            self.observe_layer(str(Layer.SURFACE), sum(g.surface_seconds for g in guards))
        if self.semantic is not None:
            self.observe_layer("semantic", sum(g.semantic_seconds for g in guards))

    def upstream_body(self) -> dict:
        body = dict(self.body)
        if not self.decode_mask:
            return body
        xargs = dict(body.get("vllm_xargs") or {})
        ours_by_key = {"quell_terms": self.surface.mask_terms, "quell_prefix_terms": self.surface.mask_prefix_terms}
        for key, ours in ours_by_key.items():
            if ours:  # a client may add terms of its own, never take ours away
                theirs = xargs.get(key)
                xargs[key] = list(ours) + ([t for t in theirs if isinstance(t, str)] if isinstance(theirs, list) else [])
        if xargs:
            body["vllm_xargs"] = xargs
        return body

    def new_guard(self) -> ChoiceGuard:
        layer = self.surface if self.text_backstop else SurfaceLayer([])
        refusals = {p.ref: p.refusal for p in self.policies}
        return ChoiceGuard(OutputGuard(layer), self.semantic, self.runtime, refusals)


def content_filter_results(decisions: list[Decision]) -> dict:
    """Per target: the strongest action taken, by which layer and policy version, and how many detections."""
    out: dict[str, dict] = {}
    for d in decisions:
        entry = out.get(d.target_id)
        if entry is None or ACTION_RANK[d.action] > ACTION_RANK[entry["action"]]:
            out[d.target_id] = {
                "filtered": d.action != "flag", "policy": d.policy_ref, "layer": str(d.layer),
                "action": d.action, "score": round(d.score, 4), "detections": 0,
            }  # fmt: skip
        out[d.target_id]["detections"] += 1
    return out


def _get_text(kind: Kind, choice: dict, streaming: bool) -> str | None:
    if kind == "completion":
        return choice.get("text")
    holder = choice.get("delta" if streaming else "message") or {}
    content = holder.get("content")
    return content if isinstance(content, str) else None


def _set_text(kind: Kind, choice: dict, streaming: bool, text: str) -> None:
    if kind == "completion":
        choice["text"] = text
    else:
        choice.setdefault("delta" if streaming else "message", {})["content"] = text


async def respond_json(backend: Backend, req: GuardedRequest) -> JSONResponse:
    resp = await backend.post(PATHS[req.kind], req.upstream_body())
    if resp.status_code >= 400:
        return _relay_error(resp)
    payload = resp.json()
    guards = []
    for choice in payload.get("choices", []):
        text = _get_text(req.kind, choice, streaming=False)
        if text is None:
            continue
        guard = req.new_guard()
        guards.append(guard)
        out, stopped = await guard.whole(text)
        decisions = guard.decisions
        req.decided(decisions, text)
        if not decisions:
            continue
        if out != text:
            _set_text(req.kind, choice, False, out)
            choice.pop("logprobs", None)  # token logprobs would spell out what the guard removed
        if stopped:
            choice["finish_reason"] = "content_filter"
        choice["content_filter_results"] = content_filter_results(decisions)
    req.done(guards)
    return JSONResponse(payload, headers=req.headers)


def _relay_error(resp) -> JSONResponse:
    """Backend 4xx (bad sampling params, prompt too long...) go to the client as they are: OpenAI-shaped already."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
        body = APIError(resp.status_code, f"backend error: {resp.text[:500]}", type="backend_error").body()
    if resp.status_code >= 500:
        log.error("backend answered %d: %s", resp.status_code, resp.text[:500])
        return JSONResponse(
            APIError(502, "the model backend failed on this request", type="backend_error",
                     code="backend_error").body(), status_code=502)  # fmt: skip
    return JSONResponse(body, status_code=resp.status_code)


async def respond_stream(backend: Backend, req: GuardedRequest) -> StreamingResponse | JSONResponse:
    # Open the upstream stream before answering, so that a backend error becomes a proper HTTP error.
    cm = backend.stream(PATHS[req.kind], req.upstream_body())
    resp = await cm.__aenter__()
    if resp.status_code >= 400:
        await resp.aread()
        await cm.__aexit__(None, None, None)
        return _relay_error(resp)
    return StreamingResponse(_guarded_events(cm, resp, req), media_type="text/event-stream", headers=req.headers)


async def _guarded_events(cm, resp, req: GuardedRequest) -> AsyncIterator[bytes]:
    """Re-emit the backend's SSE events with each choice's text guarded. Closing this generator (the client went
    away) closes the upstream response, and vLLM aborts the generation."""
    guards: dict[int, ChoiceGuard] = {}
    seen: dict[int, list[str]] = {}  # what the model said per choice, for the audit's optional hash/snippet
    finished: set[int] = set()
    want_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
    n = int(req.body.get("n") or 1)
    try:
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            out_choices = []
            for choice in chunk.get("choices", []):
                idx = choice.get("index", 0)
                if idx in finished:
                    continue  # this choice was cut by a layer: drop the rest of what the model says
                guard = guards.setdefault(idx, req.new_guard())
                text = _get_text(req.kind, choice, streaming=True)
                step = await guard.feed(text) if text else GuardStep("")
                if choice.get("finish_reason") is not None and not step.stopped:
                    end = await guard.finish()
                    step = GuardStep(step.text + end.text, step.decisions + end.decisions, end.stopped, end.refusal)
                if text:
                    seen.setdefault(idx, []).append(text)
                if text is not None or step.text:
                    if step.text != text:
                        choice.pop("logprobs", None)
                    _set_text(req.kind, choice, True, step.text)
                if step.stopped:
                    if step.refusal:
                        _set_text(req.kind, choice, True, step.text + ("\n\n" if step.text else "") + step.refusal)
                    choice["finish_reason"] = "content_filter"
                    choice.pop("logprobs", None)
                if choice.get("finish_reason") is not None:
                    finished.add(idx)
                    if guard.decisions:
                        choice["content_filter_results"] = content_filter_results(guard.decisions)
                        req.decided(guard.decisions, "".join(seen.get(idx, [])))
                out_choices.append(choice)
            if chunk.get("choices") and not out_choices:
                continue
            chunk["choices"] = out_choices
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
            if len(finished) >= n and not want_usage:
                break  # every choice is done; stop the backend early if a layer cut it
        yield b"data: [DONE]\n\n"
    finally:
        req.done(list(guards.values()))
        await cm.__aexit__(None, None, None)
