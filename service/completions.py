"""Forward a (chat) completion to the backend and run what comes back, JSON or SSE, through the output pipeline.

`handle` is the one function per request: it selects the policies on the current snapshot, screens the input,
builds an immutable `RequestContext` once, and forwards. The endpoint (`service.endpoints`) says where a choice's
texts are; every model-written text of every choice gets its own `OutputPipeline` (filters.output_pipeline), which
decides; this module only moves bytes and fields.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from filters.decision import Action, Decision, Layer, content_filter_results
from filters.facts import ARMED_FACTS_KEY
from filters.judge import Judges
from filters.output_pipeline import OutputPipeline
from filters.policy import Policy
from filters.semantic import SemanticGuard
from filters.stream_guard import GuardStep, OutputGuard
from filters.surface import SurfaceLayer
from service import input_screen, token_fields
from service.auth import Tenant
from service.backend import Backend
from service.endpoints import REASONING_FIELDS, Endpoint
from service.errors import APIError, backend_unavailable
from service.gateway import Gateway
from service.policy_registry import surface_layer
from service.schemas import ChatCompletionRequest, CompletionRequest, check_sendable
from service.token_fields import StreamedTokens, filter_alternatives

log = logging.getLogger("quell.completions")

POLICY_HEADER = "x-quell-policies"


Report = Callable[[list[Decision], str], None]
"""Called once per choice that a layer acted on, with its decisions and the text they refer to (audit, metrics)."""


async def handle(endpoint: Endpoint, request: ChatCompletionRequest | CompletionRequest, gateway: Gateway,
                 tenant: Tenant, header_policies: str | None) -> JSONResponse | StreamingResponse:  # fmt: skip
    requested = [p.strip() for p in (header_policies or "").split(",") if p.strip()]
    if request.quell is not None:
        requested += request.quell.policies
    policies = gateway.registry.snapshot.for_tenant(tenant, requested)
    if not gateway.connected:
        raise backend_unavailable(gateway.backend_error or "still starting (see /readyz)")
    models = await gateway.backend.models()
    if request.model not in models:
        raise APIError(404, f"model {request.model!r} does not exist; available: {', '.join(models)}",
                       param="model", code="model_not_found")  # fmt: skip
    body = request.model_dump(exclude_unset=True, exclude={"quell"})
    check_sendable(body)
    if any("output" in p.applies_to and p.targets for p in policies):
        endpoint.reject_side_channels(body)
    request_id = uuid.uuid4().hex
    runtime = gateway.semantic

    def report(decisions: list[Decision], text: str) -> None:
        gateway.report(decisions, text, request_id, tenant.id)

    with gateway.metrics.time_layer("input_screen"):
        inbound, screened = await input_screen.screen(endpoint, body, policies, runtime)
    if inbound:
        report(inbound, screened)
    if any(d.action.blocks for d in inbound):
        raise input_screen.blocked_error(inbound, content_filter_results(inbound))
    ctx = RequestContext.of(endpoint, body, policies, decode_mask=gateway.decode_mask,
                            recognised=input_screen.recognised_targets(inbound),
                            text_backstop=gateway.settings.text_backstop,
                            semantic=await runtime.guard(runtime.relevant(policies, "output")), judge=gateway.judges,
                            request_id=request_id,
                            report=report, observe_layer=gateway.metrics.observe_layer)  # fmt: skip
    with gateway.metrics.time_backend(endpoint.name):  # for streams: until the response starts
        if request.stream:
            return await respond_stream(gateway.backend, ctx)
        return await respond_json(gateway.backend, ctx)


@dataclass(frozen=True)
class RequestContext:
    """Everything about one request that the forwarding and the output pipelines need, fixed before forwarding."""

    endpoint: Endpoint
    body: dict
    policies: tuple[Policy, ...]
    surface: SurfaceLayer
    decode_mask: bool
    text_backstop: bool
    semantic: SemanticGuard | None = None
    judge: Judges | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    report: Report | None = None
    observe_layer: Callable[[str, float], None] | None = None
    recognised: frozenset[tuple[str, str]] = frozenset()
    """(policy ref, target id) of targets the input screen's semantic layers recognised: their facts are armed even
    where the prompt does not name them (`SurfaceLayer.armed_by`, the plugin's `quell_armed_facts`)."""

    @classmethod
    def of(cls, endpoint: Endpoint, body: dict, policies: Sequence[Policy], **rest: Any) -> RequestContext:
        """The context for these policies, with their (cached) output surface layer."""
        return cls(endpoint, body, tuple(policies), surface_layer(policies, "output"), **rest)

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
        ours = dict(self.surface.plugin_args())  # protected text: index content hashes, never the corpus
        ours[ARMED_FACTS_KEY] = self.surface.armed_fact_forms(self.recognised)
        for key, values in ours.items():
            if values:  # a client may add terms of its own, never take ours away
                theirs = xargs.get(key)
                xargs[key] = list(values) + (
                    [t for t in theirs if isinstance(t, str)] if isinstance(theirs, list) else []
                )
        if xargs:
            body["vllm_xargs"] = xargs
        return body

    @property
    def prompt_text(self) -> str | None:
        """The request's input as text (what arms a person's facts); None when it cannot be read (token ids)."""
        try:
            messages = self.endpoint.prompt_messages(self.body)
        except APIError:
            return None
        parts: list[str] = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # content parts: read the text ones
                parts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "\n".join(parts)

    @cached_property
    def backstop(self) -> SurfaceLayer:
        """The text backstop's layer for this request, chosen once for all its choices and channels: a person's
        facts are armed by the prompt naming them, as the decode-time plugin arms them."""
        return self.surface.armed_by(self.prompt_text, self.recognised) if self.text_backstop else SurfaceLayer([])

    def new_pipeline(self) -> OutputPipeline:
        refusals = {p.ref: p.refusal for p in self.policies}
        return OutputPipeline(OutputGuard(self.backstop), self.semantic, refusals, judge=self.judge)


async def respond_json(backend: Backend, req: RequestContext) -> JSONResponse:
    resp = await backend.post(req.endpoint.path, req.upstream_body())
    if resp.status_code >= 400:
        return _relay_error(resp)
    payload = resp.json()
    guards: list[OutputPipeline] = []
    for choice in payload.get("choices", []):
        guards += await _guard_whole_choice(req, choice)
    req.done(guards)
    return JSONResponse(payload, headers=req.headers)


async def _guard_whole_choice(req: RequestContext, choice: dict) -> list[OutputPipeline]:
    decisions: list[Decision] = []
    guards, changed, stopped, refusal = [], False, False, None
    for channel in req.endpoint.channels(choice, streaming=False):
        text = channel.text
        guard = req.new_pipeline()
        guards.append(guard)
        out, cut = await guard.whole(text)
        req.decided(guard.decisions, text)
        decisions += guard.decisions
        if cut and any(d.action is Action.REFUSE for d in guard.decisions):
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
        req.endpoint.set_refusal(choice, False, refusal)
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


async def respond_stream(backend: Backend, req: RequestContext) -> StreamingResponse | JSONResponse:
    # Open the upstream stream before answering, so that a backend error becomes a proper HTTP error.
    cm = backend.stream(req.endpoint.path, req.upstream_body())
    resp = await cm.__aenter__()
    if resp.status_code >= 400:
        await resp.aread()
        await cm.__aexit__(None, None, None)
        return _relay_error(resp)
    return StreamingResponse(_guarded_events(cm, resp, req), media_type="text/event-stream", headers=req.headers)


@dataclass
class StreamedChoice:
    """One choice of a stream: a guard per channel, and its token fields held in step with the released text."""

    req: RequestContext
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
        endpoint = self.req.endpoint
        present = endpoint.channels(choice, streaming=True)
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
            guard = self.guards.setdefault(channel.key, self.req.new_pipeline())
            out = await guard.feed(text) if text else GuardStep("")
            if last and not out.stopped:
                end = await guard.finish()
                out = GuardStep(out.text + end.text, out.decisions + end.decisions, end.stopped, end.refusal)
            channel.set(out.text)
            released.append(out.text)
            changed |= bool(out.decisions) and any(d.action.blocks for d in out.decisions)
            if out.stopped:
                stopped, refusal = True, out.refusal
        if last and not stopped:  # channels this chunk did not carry may still hold text back
            for key, guard in self.guards.items():
                if any(c.key == key for c in present):
                    continue
                end = await guard.finish()
                if end.text:
                    endpoint.new_channel(choice, key).set(end.text)
                    released.append(end.text)
                changed |= any(d.action.blocks for d in end.decisions)
                if end.stopped:
                    stopped, refusal = True, end.refusal
                    break
        self.tokens.give(choice, "".join(released), changed or stopped)
        if stopped:
            if refusal:
                before = endpoint.answer(choice, streaming=True)
                endpoint.set_refusal(choice, True, before + ("\n\n" if before else "") + refusal)
            choice["finish_reason"] = "content_filter"
        if choice.get("finish_reason") is not None:
            self.finished = True
            decisions = self.decisions
            if decisions:
                choice["content_filter_results"] = content_filter_results(decisions)
                self.req.decided(decisions, "".join(self.said))


async def _guarded_events(cm, resp, req: RequestContext) -> AsyncIterator[bytes]:
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
