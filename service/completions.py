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

from filters.decision import Decision, Layer, content_filter_results
from filters.output_pipeline import OutputPipeline
from filters.policy import Policy
from filters.semantic import SemanticGuard
from filters.stream_guard import GuardStep, OutputGuard
from filters.surface import SurfaceLayer
from service import token_fields
from service.backend import Backend
from service.errors import APIError
from service.policy_registry import surface_layer
from service.semantic_runtime import SemanticRuntime
from service.token_fields import StreamedTokens, filter_alternatives

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

    def done(self, guards: list[OutputPipeline]) -> None:
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
        for key, ours in self.surface.plugin_args().items():  # protected text: index content hashes, never the corpus
            if ours:  # a client may add terms of its own, never take ours away
                theirs = xargs.get(key)
                xargs[key] = list(ours) + ([t for t in theirs if isinstance(t, str)] if isinstance(theirs, list) else [])
        if xargs:
            body["vllm_xargs"] = xargs
        return body

    def new_guard(self) -> OutputPipeline:
        layer = self.surface if self.text_backstop else SurfaceLayer([])
        refusals = {p.ref: p.refusal for p in self.policies}
        return OutputPipeline(OutputGuard(layer), self.semantic, refusals)


@dataclass
class Channel:
    """One text the model produced inside a choice: the content, the reasoning, or one tool call's arguments.
    Each is guarded on its own (a term split across two of them is not one term to a reader)."""

    key: tuple[str, int]
    holder: dict
    name: str

    @property
    def text(self) -> str:
        value = self.holder.get(self.name)
        return value if isinstance(value, str) else ""

    def set(self, text: str) -> None:
        self.holder[self.name] = text


REASONING_FIELDS = ("reasoning_content", "reasoning")


def channels(kind: Kind, choice: dict, streaming: bool) -> list[Channel]:
    """Every model-written text of a choice (or of a stream chunk's choice), in the order the model writes them."""
    if kind == "completion":
        return [Channel(("text", 0), choice, "text")] if isinstance(choice.get("text"), str) else []
    holder = choice.get("delta" if streaming else "message")
    if not isinstance(holder, dict):
        return []
    out = [Channel((name, 0), holder, name) for name in REASONING_FIELDS if isinstance(holder.get(name), str)]
    if isinstance(holder.get("content"), str):
        out.append(Channel(("content", 0), holder, "content"))
    for position, call in enumerate(holder.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            out.append(Channel(("tool", int(call.get("index", position))), function, "arguments"))
    return out


def new_channel(kind: Kind, choice: dict, key: tuple[str, int]) -> Channel:
    """A channel this stream chunk did not carry, created to release the text its guard still held."""
    if kind == "completion":
        return Channel(key, choice, "text")
    delta = choice.setdefault("delta", {})
    name, index = key
    if name == "tool":
        call = {"index": index, "function": {"arguments": ""}}
        delta.setdefault("tool_calls", []).append(call)
        return Channel(key, call["function"], "arguments")
    return Channel(key, delta, name)


def _set_refusal(kind: Kind, choice: dict, streaming: bool, text: str) -> None:
    """A refused choice says the refusal and nothing else the model wrote."""
    if kind == "completion":
        choice["text"] = text
        return
    holder = choice.setdefault("delta" if streaming else "message", {})
    for name in REASONING_FIELDS:
        holder.pop(name, None)
    holder.pop("tool_calls", None)
    holder["content"] = text


def reject_side_channels(kind: Kind, body: dict, policies: list[Policy]) -> None:
    """Prompt logprobs rank what the model would say at each prompt position, before any layer can act: under an
    output policy they would hand a client the unmasked continuation (`Spider-` -> `Man`). Refuse them."""
    if not any("output" in p.applies_to and p.targets for p in policies):
        return
    if body.get("prompt_logprobs") is not None:
        raise APIError(400, "prompt_logprobs are not available while output policies apply: they show the "
                       "unfiltered model's ranking", param="prompt_logprobs", code="unsupported_under_policy")  # fmt: skip
    if kind == "completion" and body.get("echo") and body.get("logprobs") is not None:
        raise APIError(400, "echo with logprobs is not available while output policies apply: the prompt's "
                       "top_logprobs show the unfiltered model's ranking", param="echo",
                       code="unsupported_under_policy")  # fmt: skip


async def respond_json(backend: Backend, req: GuardedRequest) -> JSONResponse:
    resp = await backend.post(PATHS[req.kind], req.upstream_body())
    if resp.status_code >= 400:
        return _relay_error(resp)
    payload = resp.json()
    guards: list[OutputPipeline] = []
    for choice in payload.get("choices", []):
        guards += await _guard_whole_choice(req, choice)
    req.done(guards)
    return JSONResponse(payload, headers=req.headers)


async def _guard_whole_choice(req: GuardedRequest, choice: dict) -> list[OutputPipeline]:
    decisions: list[Decision] = []
    guards, changed, stopped, refusal = [], False, False, None
    for channel in channels(req.kind, choice, streaming=False):
        text = channel.text
        guard = req.new_guard()
        guards.append(guard)
        out, cut = await guard.whole(text)
        req.decided(guard.decisions, text)
        decisions += guard.decisions
        if cut and any(d.action == "refuse" for d in guard.decisions):
            refusal = refusal if refusal is not None else out
        elif out != text:
            channel.set(out)
        changed |= out != text or cut
        if cut and not stopped:
            stopped = True
            message = choice.get("message") or {}
            if channel.key[0] in REASONING_FIELDS and isinstance(message.get("content"), str):
                message["content"] = ""  # the answer comes after the reasoning that was cut
            message.pop("tool_calls", None)  # a cut tool call must never be run
    if changed:
        token_fields.strip(choice)
    else:
        filter_alternatives(choice.get("logprobs"), req.surface.automaton if req.text_backstop else None)
    if not decisions:
        return guards
    if refusal is not None:
        _set_refusal(req.kind, choice, False, refusal)
    if stopped or refusal is not None:
        choice["finish_reason"] = "content_filter"
    choice["content_filter_results"] = content_filter_results(decisions)
    return guards


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


@dataclass
class StreamedChoice:
    """One choice of a stream: a guard per channel, and its token fields held in step with the released text."""

    req: GuardedRequest
    guards: dict[tuple[str, int], OutputPipeline] = field(default_factory=dict)
    tokens: StreamedTokens = field(init=False)
    said: list[str] = field(default_factory=list)  # what the model wrote, for the audit's optional hash/snippet
    finished: bool = False

    def __post_init__(self) -> None:
        self.tokens = StreamedTokens(self.req.surface.automaton if self.req.text_backstop else None)

    @property
    def decisions(self) -> list[Decision]:
        return [d for g in self.guards.values() for d in g.decisions]

    async def step(self, choice: dict) -> None:
        """Guard one chunk's choice in place."""
        kind = self.req.kind
        present = channels(kind, choice, streaming=True)
        self.tokens.take(choice, "".join(c.text for c in present))
        released: list[str] = []
        stopped, refusal, changed = False, None, False
        last = choice.get("finish_reason") is not None
        for channel in present:
            text = channel.text
            self.said.append(text)
            if stopped:  # cut earlier in this chunk: nothing after the cut goes out
                channel.set("")
                continue
            guard = self.guards.setdefault(channel.key, self.req.new_guard())
            out = await guard.feed(text) if text else GuardStep("")
            if last and not out.stopped:
                end = await guard.finish()
                out = GuardStep(out.text + end.text, out.decisions + end.decisions, end.stopped, end.refusal)
            channel.set(out.text)
            released.append(out.text)
            changed |= bool(out.decisions) and any(d.action != "flag" for d in out.decisions)
            if out.stopped:
                stopped, refusal = True, out.refusal
        if last and not stopped:  # channels this chunk did not carry may still hold text back
            for key, guard in self.guards.items():
                if any(c.key == key for c in present):
                    continue
                end = await guard.finish()
                if end.text:
                    new_channel(kind, choice, key).set(end.text)
                    released.append(end.text)
                changed |= any(d.action != "flag" for d in end.decisions)
                if end.stopped:
                    stopped, refusal = True, end.refusal
                    break
        self.tokens.give(choice, "".join(released), changed or stopped)
        if stopped:
            if refusal:
                holder = choice if kind == "completion" else choice.get("delta") or {}
                before = holder.get("text" if kind == "completion" else "content") or ""
                _set_refusal(kind, choice, True, before + ("\n\n" if before else "") + refusal)
            choice["finish_reason"] = "content_filter"
        if choice.get("finish_reason") is not None:
            self.finished = True
            decisions = self.decisions
            if decisions:
                choice["content_filter_results"] = content_filter_results(decisions)
                self.req.decided(decisions, "".join(self.said))


async def _guarded_events(cm, resp, req: GuardedRequest) -> AsyncIterator[bytes]:
    """Re-emit the backend's SSE events with each choice's text guarded. Closing this generator (the client went
    away) closes the upstream response, and vLLM aborts the generation."""
    streamed: dict[int, StreamedChoice] = {}
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
                state = streamed.setdefault(choice.get("index", 0), StreamedChoice(req))
                if state.finished:
                    continue  # this choice was cut by a layer: drop the rest of what the model says
                await state.step(choice)
                out_choices.append(choice)
            if chunk.get("choices") and not out_choices:
                continue
            chunk["choices"] = out_choices
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
            if sum(s.finished for s in streamed.values()) >= n and not want_usage:
                break  # every choice is done; stop the backend early if a layer cut it
        yield b"data: [DONE]\n\n"
    finally:
        req.done([g for s in streamed.values() for g in s.guards.values()])
        await cm.__aexit__(None, None, None)
