"""Keep the managed vLLM running: start it, prove it is ours, notice at once when it dies, restart it with back-off.

Call order: `VLLMSupervisor(settings, metrics, on_up, on_down)`, then `run()` as a task in the gateway's event loop
(the child is started from that thread, which lives as long as the gateway), `status()` for /readyz at any time,
and `stop()` from the lifespan's shutdown after cancelling the task.

Each start gets its own port (the configured `QUELL_VLLM_PORT`, or a free loopback port), a fresh secret key
(unless `QUELL_VLLM_API_KEY` fixes one) and a marked section of this gateway's own log file. Between a death and
the next start that answers as ours, `on_down` has told the gateway why, so requests get a 503 with that reason and
never reach whatever else may answer on the old port.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from service.metrics import Metrics
from service.processes import free_port
from service.settings import Settings
from service.vllm_process import ManagedVLLM, NotOurServer, PortInUse, check_port_free

log = logging.getLogger("quell.vllm")

BackendUp = Callable[[str, str | None], Awaitable[None]]
"""Called with the base URL and the key of a start that answers as ours; raising counts as a failed start."""
BackendDown = Callable[[str], None]
"""Called with the reason whenever the managed vLLM stops being usable."""


@dataclass
class Attempt:
    """What /readyz says about the managed vLLM."""

    phase: str = "starting"  # starting | ready | restarting | stopped
    reason: str | None = None
    pid: int | None = None
    url: str | None = None
    started_at: float | None = None
    ready_at: float | None = None
    restarts: int = 0
    next_start_at: float | None = None
    last_exit: dict | None = None
    log_tail: list[str] = field(default_factory=list)


class VLLMSupervisor:
    def __init__(self, settings: Settings, metrics: Metrics, on_up: BackendUp, on_down: BackendDown):
        self.settings = settings
        self.metrics = metrics
        self.on_up = on_up
        self.on_down = on_down
        self.state = Attempt()
        self.child: ManagedVLLM | None = None
        self.log_path = settings.cache_dir.resolve() / "logs" / f"vllm-gateway-{settings.port}.log"
        self._backoff = settings.vllm_restart_backoff_s

    @property
    def ready(self) -> bool:
        return self.state.phase == "ready"

    def status(self) -> dict:
        s = self.state
        out = {"phase": s.phase, "pid": s.pid, "url": s.url, "restarts": s.restarts, "log": str(self.log_path)}
        if s.reason:
            out["reason"] = s.reason
        if s.last_exit:
            out["last_exit"] = s.last_exit
        if s.next_start_at is not None:
            out["next_start_in_s"] = round(max(0.0, s.next_start_at - time.monotonic()), 1)
        if s.log_tail and s.phase != "ready":
            out["log_tail"] = s.log_tail
        return out

    async def run(self) -> None:
        """Start, watch, restart: until cancelled."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")  # one file per gateway, fresh for each run of it
        while True:
            cause = await self._one_life()
            self.state.restarts += 1
            self.metrics.backend_restarts.labels(cause=cause).inc()
            delay = self._backoff
            self._backoff = min(self._backoff * 2, self.settings.vllm_restart_backoff_max_s)
            self.state.phase = "restarting"
            self.state.next_start_at = time.monotonic() + delay
            log.warning("restarting managed vLLM in %.1f s (restart %d): %s", delay, self.state.restarts,
                        self.state.reason)  # fmt: skip
            await asyncio.sleep(delay)
            self.state.next_start_at = None

    async def _one_life(self) -> str:
        """One start until it fails or dies; returns the cause for the restart counter."""
        s = self.settings
        key = s.vllm_api_key.get_secret_value() if s.vllm_api_key else secrets.token_urlsafe(32)
        port = s.vllm_port or free_port()
        child = ManagedVLLM(s, port=port, api_key=key, log_path=self.log_path)
        self.child = child
        self.state.url = child.url
        try:
            check_port_free(port)
            child.start()  # in the event loop's thread: see ManagedVLLM.start
        except (PortInUse, RuntimeError, OSError) as exc:
            self._down(f"managed vLLM could not start: {exc}", child)
            return "port_in_use" if isinstance(exc, PortInUse) else "start_failed"
        self.state.pid, self.state.started_at = child.pid, time.monotonic()
        try:
            await self._until_ready(child)
            await self.on_up(child.url, key)
        except NotOurServer as exc:
            await asyncio.to_thread(child.stop, 5.0)
            self._down(str(exc), child)
            return "not_ours"
        except Exception as exc:  # noqa: BLE001 - exited while starting, or the gateway refused it (e.g. no plugin)
            await asyncio.to_thread(child.stop, 5.0)
            self._down(f"managed vLLM failed to start: {exc}", child)
            return "start_failed"
        self.state.phase, self.state.reason, self.state.ready_at = "ready", None, time.monotonic()
        self.metrics.backend_up.set(1)
        log.info("managed vLLM ready on %s (pid %d, %.0f s after start)", child.url, child.pid,
                 self.state.ready_at - self.state.started_at)  # fmt: skip
        code = await child.wait_exit()
        up_for = time.monotonic() - self.state.ready_at
        if up_for >= s.vllm_restart_backoff_max_s:
            self._backoff = s.vllm_restart_backoff_s  # it ran well for a while: start the back-off afresh
        self.state.last_exit = {"code": code, "pid": child.pid, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._down(f"managed vLLM (pid {child.pid}) exited with code {code} after {up_for:.0f} s of service", child)
        left = await child.reap_group()  # its engine stops by itself (PR_SET_PDEATHSIG); what does not is killed
        if left:
            self.state.reason += f"; {len(left)} process(es) of its group outlived it and were killed"
            self.on_down(self.state.reason)
        return "exited"

    async def _until_ready(self, child: ManagedVLLM) -> None:
        """Ready, or an exception. A start slower than the time-out is reported, not abandoned: the gateway serves
        as soon as this start answers (a slow machine must not leave it failed for good beside a healthy vLLM)."""
        timeout = self.settings.vllm_start_timeout_s
        self.state.phase = "starting" if self.state.restarts == 0 else "restarting"
        starting = "managed vLLM is starting (about 30-60 s on CPU)"
        if self.state.restarts and self.state.reason:  # keep saying why it is restarting
            starting = f"{self.state.reason.split('; restart ')[0]}; restart {self.state.restarts} is starting"
        self.state.reason = starting
        self.on_down(self.state.reason)
        try:
            await child.wait_ready(timeout)
            return
        except TimeoutError:
            self.state.reason = (f"{starting}; not ready after {timeout:.0f} s (QUELL_VLLM_START_TIMEOUT_S), "
                                 f"still waiting for it; see {child.log_path}")  # fmt: skip
            self.state.log_tail = child.log_tail()
            self.on_down(self.state.reason)
            log.warning(self.state.reason)
        await child.wait_ready(None)

    def _down(self, reason: str, child: ManagedVLLM) -> None:
        self.state.phase = "restarting"  # every way down leads to the next start
        self.state.reason = reason
        self.state.log_tail = child.log_tail()
        self.metrics.backend_up.set(0)
        log.error("%s; log tail:\n  %s", reason, "\n  ".join(self.state.log_tail[-8:]))
        self.on_down(reason)

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop the current child (blocking; call after cancelling `run`)."""
        self.state.phase = "stopped"
        if self.child is not None:
            self.child.stop(grace_s)
