"""The Gateway: everything a request handler needs, built once per process by the app's lifespan.

Its own module so that routes and dependencies can name it without importing the app that includes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from filters.decision import Decision
from filters.judge import JudgeEndpoint, Judges, Verdict
from service.audit import AuditEvent, AuditLog
from service.auth import KeyRing
from service.backend import Backend
from service.metrics import Metrics
from service.policy_registry import PolicyRegistry, PolicySnapshot, surface_layer
from service.semantic_runtime import SemanticRuntime
from service.settings import DecodeMask, Settings
from service.vllm_supervisor import VLLMSupervisor

log = logging.getLogger("quell")

PRIMED_SETS = 8
"""Term sets primed after a reload: half of what the plugin keeps compiled (16), leaving room for live traffic."""


@dataclass
class Gateway:
    """Everything a request handler needs, built once per process in the lifespan."""

    settings: Settings
    registry: PolicyRegistry
    backend: Backend
    keys: KeyRing
    metrics: Metrics
    audit: AuditLog
    semantic: SemanticRuntime
    managed: VLLMSupervisor | None = None
    decode_mask: bool = False
    connected: bool = False
    """True once the backend answered and its capability is known; requests get 503 until then."""
    backend_error: str | None = None
    """Why the backend cannot be used now (for /readyz and the 503s); None when it can."""
    judges: Judges | None = None
    """The concept judge's clients (`filters.judge`): QUELL_JUDGE_URL, else this gateway's own backend."""
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.judges is None and self.settings.judge:
            s = self.settings
            if s.judge_url:
                key = s.judge_api_key.get_secret_value() if s.judge_api_key else None
                endpoint = JudgeEndpoint(s.judge_url.rstrip("/"), key)
            else:  # the backend's client: its address and key follow a managed vLLM's restarts
                endpoint = JudgeEndpoint(resolve=lambda: (f"{self.backend.base_url}/v1", None),
                                         client=self.backend.client)  # fmt: skip
            self.judges = Judges(endpoint, s.judge_model, concurrency=s.judge_concurrency, observe=self._judged)

    def _judged(self, verdict: Verdict) -> None:
        self.metrics.observe_judge(str(verdict.outcome), verdict.cached, verdict.seconds)

    def report(self, decisions: list[Decision], text: str, request_id: str, tenant: str) -> None:
        """Every suppression decision goes to the metrics and, off the response path, to the audit store."""
        self.metrics.count_decisions(decisions)
        store = self.settings.audit_store_text
        self.audit.record(AuditEvent.from_decision(d, request_id=request_id, tenant=tenant, store_text=store, text=text)
                          for d in decisions)  # fmt: skip

    async def reload_policies(self) -> PolicySnapshot:
        snapshot = await asyncio.to_thread(self.registry.reload)
        self.warm_semantic(snapshot)
        self.warm_decode_masks(snapshot)
        if snapshot.missing:  # no file event will come when the grace ends: look again then
            delay = max(0.0, min(snapshot.missing.values()) - time.monotonic()) + 0.05
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.ensure_future(self._reload_later(delay)))
        return snapshot

    async def _reload_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.reload_policies()

    def warm_semantic(self, snapshot: PolicySnapshot) -> None:
        """Train the default policy set's semantic layers now, not on the first request."""
        policies = snapshot.select(snapshot.default_ids())
        if self.semantic.relevant(policies, "output") or self.semantic.relevant(policies, "input"):
            self._tasks = [t for t in self._tasks if not t.done()]  # reloads must not pile up finished warm-ups
            self._tasks.append(asyncio.ensure_future(self.semantic.guard(policies)))

    def warm_decode_masks(self, snapshot: PolicySnapshot | None = None) -> None:
        """Have the plugin build token masks now, not on a user's first decode steps: the default policy set's,
        then each other policy's alone (what a request naming it in x-quell-policies sends), up to PRIMED_SETS.

        The plugin compiles a term set's masks when a request first carries it and then precomputes the states near
        every term's start in the background; until then each new automaton state costs a vocabulary pass on the
        decode step (measured on a quiet host: a first request with 1,000 or 10,000 terms keeps 0.83 / 0.78 of its
        speed, a primed one 1.00 / 1.00; `bench.decode_mask`). One single-token request per set after every reload
        and backend start pays that instead."""
        if not (self.connected and self.decode_mask):
            return
        snapshot = snapshot or self.registry.snapshot
        defaults = snapshot.default_ids()
        groups = [("the default policies", defaults)]
        groups += [(f"policy {pid}", [pid]) for pid in snapshot.policies if pid not in defaults]
        sets: dict[str, tuple[str, dict[str, list[str]]]] = {}
        for name, ids in groups:
            xargs = {k: v for k, v in surface_layer(snapshot.select(ids), "output").plugin_args().items() if v}
            if xargs and len(sets) < PRIMED_SETS:
                sets.setdefault(json.dumps(xargs, sort_keys=True), (name, xargs))
        if sets:
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.ensure_future(self._warm_decode_masks(list(sets.values()))))

    async def _warm_decode_masks(self, sets: list[tuple[str, dict[str, list[str]]]]) -> None:
        try:
            model = (await self.backend.models())[0]
            for name, xargs in sets:
                resp = await self.backend.post("/v1/completions", {"model": model, "prompt": "Hello", "max_tokens": 1,
                                                                   "vllm_xargs": xargs})  # fmt: skip
                if resp.status_code != 200:
                    log.warning("warming the decode-time masks of %s: the backend answered %d: %s", name,
                                resp.status_code, resp.text[:300])  # fmt: skip
                else:
                    log.info("decode-time masks sent to the plugin for %s (%d terms, %d indexes)", name,
                             sum(len(v) for k, v in xargs.items() if k != "quell_protected"),
                             len(xargs.get("quell_protected", [])))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - an optimisation only: the first request computes what is missing
            log.warning("warming the decode-time masks failed: %s", exc)

    @property
    def capability(self) -> str:
        return "decode-time" if self.decode_mask else "text-only"

    async def connect_backend(self) -> None:
        """Wait for the backend (starting the managed one), then find out whether it has the decode-time plugin."""
        s = self.settings
        if self.managed is not None:
            await self.managed.run()  # starts, proves, watches and restarts it; calls managed_up / managed_down
            return
        try:
            while not await self.backend.ready():
                await asyncio.sleep(1.0)
            if s.decode_mask is not DecodeMask.OFF:
                model = (await self.backend.models())[0]
                self.decode_mask = await self.backend.has_decode_mask(model)
                if s.decode_mask is DecodeMask.ON and not self.decode_mask:
                    self.backend_error = "QUELL_DECODE_MASK=on but the backend has no Quell logits processor"
                    log.error(self.backend_error)
                    return
            self.connected = True
            log.info("backend ready at %s; surface layer: %s", self.backend.base_url, self.capability)
            self.warm_decode_masks()
        except Exception as exc:  # noqa: BLE001 - startup failure is reported on /readyz, the process stays up to say so
            self.backend_error = str(exc)
            log.error("backend failed to start: %s", exc)

    async def managed_up(self, url: str, key: str | None) -> None:
        """The managed vLLM answers as ours at `url`: send every request there, with its key."""
        self.backend.retarget(url, key)
        self.decode_mask = self.settings.decode_mask is not DecodeMask.OFF  # we started it with the plugin
        self.backend_error = None
        self.connected = True
        log.info("backend ready at %s; surface layer: %s", self.backend.base_url, self.capability)
        self.warm_decode_masks()  # a (re)started vLLM has no masks cached

    def managed_down(self, reason: str) -> None:
        """The managed vLLM is starting, dead or not ours: requests get a 503 with `reason` until `managed_up`."""
        self.connected = False
        self.backend_error = reason
