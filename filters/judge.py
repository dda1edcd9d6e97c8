"""The judge stage: a model that reads the windows the concept classifier is unsure about and answers yes or no.

Call order (a pure library; the gateway builds the `Judges` and hands them to the output pipeline):
    judges = Judges(default=JudgeEndpoint(url, api_key), model=None)   # once per process
    found = await guard.check_async(text, judge_band=True)             # uncertain windows come back marked
    found = await judges.resolve(text, found)                          # the judge decides those, nothing else

Which windows: a concept with `judge` in its policy gets a band around its classifier threshold
(`filters.policy.ConceptJudge`). A window scoring below the band passes and one at or above it is flagged, both
without a call; only the windows inside the band (`Detection.uncertain`) reach the judge.

The question (fixed; `JUDGE_SYSTEM` and `judge_messages` are the whole of it): the system message says what the
judge does and that it answers one word, yes or no; the user message gives the target's description, up to
`MAX_SHOTS` of its examples ("texts that ARE about it") and counterexamples ("texts that are NOT about it"), then
the window between markers, and asks "Is the TEXT about the topic? Answer yes or no." The request asks for one
token at temperature 0 with `logprobs` and `top_logprobs`; the verdict is P(yes) = p(yes) / (p(yes) + p(no)),
summed over the first token's top alternatives whose text is "yes" or "no" in any case or spacing. The window is
the concept when P(yes) reaches the judge's `yes_threshold` (0.5 unless the policy says otherwise). An answer with
neither among the top tokens is an error.

Time-outs and errors: every window has `timeout_ms` (waiting for a free slot included); a window the judge did not
answer in time, or answered with an HTTP error or an unreadable body, follows the target's `on_timeout`: `block`
(fail closed, the default for `refuse` targets) or `pass` (fail open). Calls run concurrently, at most
`concurrency` per endpoint at a time. Answers are cached by (endpoint, model, question, window text) in a TTL
cache, so a window seen again (a retried request, the same sentence in two choices) costs no call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import httpx
from cachetools import TTLCache

from filters.policy import Concept, OnTimeout, Target
from filters.semantic import Detection

log = logging.getLogger("quell.judge")

MAX_SHOTS = 4
"""Examples and counterexamples quoted in the question (each); more make the prompt long for little gain."""
TOP_LOGPROBS = 20
"""Alternatives asked for the answer token (vLLM allows 20 by default)."""
MAX_WINDOW_CHARS = 2000
JUDGE_SYSTEM = (
    "You are a content classifier. You read a TEXT and decide whether it is about a given TOPIC. "
    "Answer with exactly one word: yes or no."
)


def judge_messages(concept: Concept, window: str) -> list[dict[str, str]]:
    """The fixed question for one window (see the module docstring)."""
    lines = [f"TOPIC: {concept.description}"]
    if concept.examples:
        lines.append("Texts that ARE about the topic:")
        lines += [f"- {t}" for t in concept.examples[:MAX_SHOTS]]
    if concept.counterexamples:
        lines.append("Texts that are NOT about the topic:")
        lines += [f"- {t}" for t in concept.counterexamples[:MAX_SHOTS]]
    lines += [
        "",
        "TEXT:",
        "<<<",
        window[:MAX_WINDOW_CHARS],
        ">>>",
        "",
        "Is the TEXT about the topic? Answer yes or no.",
    ]
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


class JudgeError(Exception):
    """The judge did not give a usable answer (HTTP error, unreadable body, neither yes nor no)."""


def p_yes(body: Mapping[str, object]) -> float:
    """P(yes) normalised over yes/no from a chat completion's first-token `top_logprobs`."""
    try:
        first = body["choices"][0]["logprobs"]["content"][0]  # type: ignore[index]
        options = first.get("top_logprobs") or [first]
        yes = no = 0.0
        for option in options:
            word = str(option["token"]).strip().strip(".!,").lower()
            if word == "yes":
                yes += math.exp(float(option["logprob"]))
            elif word == "no":
                no += math.exp(float(option["logprob"]))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise JudgeError(f"the judge's answer has no first-token logprobs ({type(exc).__name__}: {exc})") from None
    if yes + no == 0.0:
        raise JudgeError(f"neither yes nor no among the judge's top {len(options)} first tokens")
    return yes / (yes + no)


class Outcome(StrEnum):
    YES = "yes"
    NO = "no"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    p_yes: float | None  # None on time-out or error
    seconds: float
    cached: bool = False
    error: str | None = None


@dataclass(frozen=True)
class JudgeEndpoint:
    """Where a judge answers: an OpenAI-compatible base URL (ending in /v1) and its key. `resolve`, when given,
    is asked for the current (url, key) at each call instead (the gateway's managed backend moves on restart)."""

    url: str = ""
    api_key: str | None = None
    resolve: Callable[[], tuple[str, str | None]] | None = None
    client: httpx.AsyncClient | None = None
    """An existing client to call through (the gateway's backend client: its transport and key)."""

    def current(self) -> tuple[str, str | None]:
        return self.resolve() if self.resolve is not None else (self.url, self.api_key)


Observer = Callable[[Verdict], None]


@dataclass
class JudgeClient:
    """One endpoint and model: concurrent calls (at most `concurrency` at a time), each within its time budget,
    answers cached by question and window text."""

    endpoint: JudgeEndpoint
    model: str | None = None
    concurrency: int = 8
    cache_size: int = 4096
    cache_ttl_s: float = 3600.0
    transport: httpx.AsyncBaseTransport | None = None
    observe: Observer | None = None
    calls: int = 0
    """HTTP calls made (cache hits excluded), for tests and benchmarks."""
    _cache: TTLCache[tuple[str, ...], float] = field(init=False)
    _loop_state: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient, asyncio.Semaphore] | None = None
    _models: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._cache = TTLCache(maxsize=self.cache_size, ttl=self.cache_ttl_s)

    def _state(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop_state is None or self._loop_state[0] is not loop:  # httpx clients and semaphores are per loop
            client = self.endpoint.client or httpx.AsyncClient(transport=self.transport, timeout=None)
            self._loop_state = (loop, client, asyncio.Semaphore(self.concurrency))
        return self._loop_state[1], self._loop_state[2]

    async def aclose(self) -> None:
        if self._loop_state is not None and self.endpoint.client is None:
            await self._loop_state[1].aclose()
            self._loop_state = None

    async def _model(self, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> str:
        if self.model:
            return self.model
        if url not in self._models:
            resp = await client.get(f"{url}/models", headers=headers)
            if resp.status_code != 200:
                raise JudgeError(f"GET {url}/models answered {resp.status_code}: {resp.text[:200]}")
            self._models[url] = str(resp.json()["data"][0]["id"])
        return self._models[url]

    async def ask(self, concept: Concept, window: str, timeout_ms: int, yes_threshold: float = 0.5) -> Verdict:
        """The judge's verdict on one window (never raises: time-outs and errors come back as outcomes)."""
        url, key = self.endpoint.current()
        url = url.rstrip("/")
        messages = judge_messages(concept, window)
        question = hashlib.sha256(repr(messages).encode()).hexdigest()
        cache_key = (url, self.model or "", question)
        started = time.perf_counter()
        if (hit := self._cache.get(cache_key)) is not None:
            return self._seen(Verdict(Outcome.YES if hit >= yes_threshold else Outcome.NO, hit, 0.0, cached=True))
        try:
            p = await asyncio.wait_for(self._call(url, key, messages), timeout_ms / 1000)
        except TimeoutError:
            return self._seen(Verdict(Outcome.TIMEOUT, None, time.perf_counter() - started))
        except (JudgeError, httpx.HTTPError, ValueError) as exc:
            return self._seen(Verdict(Outcome.ERROR, None, time.perf_counter() - started, error=str(exc)))
        self._cache[cache_key] = p
        outcome = Outcome.YES if p >= yes_threshold else Outcome.NO
        return self._seen(Verdict(outcome, p, time.perf_counter() - started))

    def _seen(self, verdict: Verdict) -> Verdict:
        if verdict.outcome in (Outcome.TIMEOUT, Outcome.ERROR):
            log.warning("judge %s: %s", verdict.outcome, verdict.error or f"after {verdict.seconds:.3f} s")
        if self.observe is not None:
            self.observe(verdict)
        return verdict

    async def _call(self, url: str, key: str | None, messages: list[dict[str, str]]) -> float:
        client, slots = self._state()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with slots:
            model = await self._model(client, url, headers)
            self.calls += 1
            resp = await client.post(f"{url}/chat/completions", headers=headers, json={
                "model": model, "messages": messages, "max_tokens": 1, "temperature": 0.0,
                "logprobs": True, "top_logprobs": TOP_LOGPROBS})  # fmt: skip
        if resp.status_code != 200:
            raise JudgeError(f"POST {url}/chat/completions answered {resp.status_code}: {resp.text[:200]}")
        return p_yes(resp.json())


class Judges:
    """The judge clients of a process: the default endpoint (and model), plus one client per URL a policy names."""

    def __init__(self, default: JudgeEndpoint, model: str | None = None, *, concurrency: int = 8,
                 transport: httpx.AsyncBaseTransport | None = None, observe: Observer | None = None):  # fmt: skip
        self._default = default
        self._model = model
        self._concurrency = concurrency
        self._transport = transport
        self.observe = observe
        self._clients: dict[tuple[str | None, str | None], JudgeClient] = {}

    def client(self, url: str | None = None, model: str | None = None) -> JudgeClient:
        key = (url, model or self._model)
        if key not in self._clients:
            endpoint = self._default if url is None else JudgeEndpoint(url)
            self._clients[key] = JudgeClient(endpoint, key[1], self._concurrency, transport=self._transport,
                                             observe=lambda v: self.observe(v) if self.observe else None)  # fmt: skip
        return self._clients[key]

    @property
    def calls(self) -> int:
        return sum(c.calls for c in self._clients.values())

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def resolve(self, text: str, found: Sequence[Detection]) -> list[Detection]:
        """`found` with every uncertain detection replaced by the judge's (a `judge`-layer detection when it says
        yes or fails closed) or dropped (no, or fails open); the others unchanged. All calls run concurrently."""
        uncertain = [d for d in found if d.uncertain]
        if not uncertain:
            return list(found)
        verdicts = await asyncio.gather(*(self._ask(d, text) for d in uncertain))
        decided = {id(d): v for d, v in zip(uncertain, verdicts, strict=True)}
        out: list[Detection] = []
        for d in found:
            if not d.uncertain:
                out.append(d)
                continue
            verdict = decided[id(d)]
            target = _target(d)
            if verdict.outcome is Outcome.YES or (
                verdict.outcome in (Outcome.TIMEOUT, Outcome.ERROR) and target.judge_on_timeout is OnTimeout.BLOCK
            ):
                out.append(replace(d, layer="judge", score=verdict.p_yes if verdict.p_yes is not None else 1.0,
                                   threshold=_judge_threshold(target), uncertain=False, judge_outcome=str(verdict.outcome)))  # fmt: skip
        return out

    async def _ask(self, d: Detection, text: str) -> Verdict:
        target = _target(d)
        concept = target.concept
        judge = concept.judge if concept is not None else None
        if concept is None or judge is None:
            raise ValueError(f"target {target.id!r} has an uncertain window but no judge configured")
        window = text[d.span[0] : d.span[1]].strip()
        return await self.client(judge.url, judge.model).ask(concept, window, judge.timeout_ms, judge.yes_threshold)


def _judge_threshold(target: Target) -> float:
    return target.concept.judge.yes_threshold if target.concept and target.concept.judge else 0.5


def _target(d: Detection) -> Target:
    if d.target is None:
        raise ValueError(f"uncertain detection of {d.target_id!r} carries no target")
    return d.target
