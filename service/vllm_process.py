"""One managed vLLM server: a child process group that is started, proven to be ours, watched and stopped.

vLLM runs its engine in child processes, so the server is started in a new session (its own process group) and
stopped by signalling the whole group: SIGTERM, then SIGKILL after a grace period. PR_SET_PDEATHSIG makes the
server die even if the gateway is killed without a chance to clean up (and `service.vllm_main` gives vLLM's own
engine processes the same link to the server). Temp files and vLLM's cache live under the project's cache folder.

Proof of identity: with an `api_key`, vLLM gets it through its environment (VLLM_API_KEY, never the command line,
which any local user can read in /proc) and `wait_ready` accepts the server on the port only if it refuses a wrong
key and accepts ours: a stranger answering on that port (another gateway's vLLM, any local process) is refused.
The restart policy lives in `service.vllm_supervisor`; this class is one start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.processes import free_port, own_session_dying_with
from service.settings import Settings

log = logging.getLogger("quell.vllm")

PLUGIN = "filters.vllm_plugin:QuellLogitsProcessor"
LOG_TAIL_LINES = 20


class PortInUse(RuntimeError):
    """The port chosen for the managed vLLM already has a listener (or cannot be bound)."""


class NotOurServer(RuntimeError):
    """Something answers on the managed vLLM's port, but it is not the child we started."""


def check_port_free(port: int) -> None:
    """Raise PortInUse if 127.0.0.1:`port` cannot be bound right now (someone listens there)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no owner
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            why = "another process listens there" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise PortInUse(f"port {port} for the managed vLLM is not free ({why})") from None


class ManagedVLLM:
    """One start of vLLM. `port`: None takes `settings.vllm_port`, or a free loopback port if that is unset.
    `api_key`: None starts vLLM open to anyone on loopback (plugin tests and benches that call it directly);
    the gateway always passes a fresh secret per start."""

    def __init__(self, settings: Settings, *, port: int | None = None, api_key: str | None = None,
                 log_path: Path | None = None):  # fmt: skip
        self.settings = settings
        self.port = port or settings.vllm_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.process: subprocess.Popen | None = None
        self.log_path = log_path or settings.cache_dir.resolve() / "logs" / f"vllm-{self.port}.log"
        self._log_offset = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def command(self) -> list[str]:
        s = self.settings
        return [
            sys.executable, "-m", "service.vllm_main", "serve", str(s.model_dir.resolve()),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--served-model-name", s.served_model_name,
            "--max-model-len", str(s.vllm_max_model_len),
            "--enforce-eager",  # ready in ~30 s on CPU instead of ~2 min of graph compilation
            "--logprobs-mode", "processed_logprobs",  # logprobs never show a masked token
            "--logits-processors", PLUGIN,
            "--disable-uvicorn-access-log",
            *shlex.split(s.vllm_extra_args),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        cache = self.settings.cache_dir.resolve()
        tmp = cache / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("VLLM_API_KEY", None)  # an inherited key would make the server accept a key that is not ours
        env.update(
            VLLM_TARGET_DEVICE="cpu",
            VLLM_CPU_KVCACHE_SPACE=str(self.settings.vllm_kvcache_gib),
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            VLLM_CACHE_ROOT=str(cache / "vllm"),
            TMPDIR=str(tmp),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")])),
        )
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        return env

    def start(self) -> None:
        """Start the server. Call it from a thread that outlives the child (the main thread or the event loop's):
        PR_SET_PDEATHSIG fires when the starting *thread* exits."""
        if not (self.settings.model_dir / "config.json").exists():
            raise RuntimeError(
                f"model folder {self.settings.model_dir} is missing: run `make setup` "
                f"(or `quell model prepare --out {self.settings.model_dir}`)"
            )
        check_port_free(self.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n=== quell: starting vLLM on {self.url} at {time.strftime('%Y-%m-%d %H:%M:%S')} "
                           f"(gateway pid {os.getpid()}) ===\n".encode())  # fmt: skip
            log_file.flush()
            self._log_offset = log_file.tell()
            log.info("starting managed vLLM on %s (log: %s)", self.url, self.log_path)
            self.process = subprocess.Popen(
                self.command(), env=self.environment(), stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=functools.partial(own_session_dying_with, os.getpid()),  # noqa: PLW1509 - setsid+prctl
            )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last lines this start wrote to its log."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                text = f.read()[-64_000:].decode("utf-8", errors="replace")
        except OSError:
            return []
        return [line[:500] for line in text.splitlines() if line.strip()][-lines:]

    def wait_ready_blocking(self, timeout_s: float) -> None:
        """`wait_ready` for synchronous callers (benchmarks, test fixtures)."""
        asyncio.run(self.wait_ready(timeout_s))

    async def wait_ready(self, timeout_s: float | None) -> None:
        """Until the server answers as ours; TimeoutError after `timeout_s` (None: wait as long as it lives)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as client:
            while True:
                code = self.exited()
                if code is not None:
                    raise RuntimeError(f"managed vLLM exited with code {code} while starting; see {self.log_path}")
                if await self._answers_as_ours(client):
                    return
                if deadline is not None and loop.time() > deadline:
                    raise TimeoutError(f"managed vLLM not ready after {timeout_s:.0f} s; see {self.log_path}")
                await asyncio.sleep(0.5)

    async def _answers_as_ours(self, client: httpx.AsyncClient) -> bool:
        try:
            resp = await client.get("/v1/models", headers=self.headers)
        except httpx.HTTPError:
            return False  # not listening yet
        if resp.status_code == 401:
            raise NotOurServer(f"the server on {self.url} refuses this start's key: it is not the vLLM we started")
        if resp.status_code != 200:
            return False  # ours, still loading (or a stranger that will fail the check below once it says 200)
        if self.api_key:
            wrong = {"Authorization": f"Bearer wrong-{secrets.token_hex(8)}"}
            if (await client.get("/v1/models", headers=wrong)).status_code != 401:
                raise NotOurServer(f"the server on {self.url} accepts any key: it is not the vLLM we started")
        return True

    async def wait_exit(self) -> int:
        """The server's exit code, as soon as it exits (pidfd where the kernel has it, else polling)."""
        proc = self.process
        if proc is None:
            raise RuntimeError("managed vLLM was never started")
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            gone = loop.create_future()
            loop.add_reader(fd, lambda: gone.done() or gone.set_result(None))
            try:
                if proc.poll() is None:
                    await gone
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        while proc.poll() is None:  # pidfd said so, or no pidfd: reaping may lag a moment
            await asyncio.sleep(0.05)
        return proc.returncode

    async def reap_group(self, grace_s: float = 10.0) -> list[int]:
        """After the server exited on its own: its engine processes stop by themselves (they die with the server);
        whatever of its group still runs after `grace_s` is killed. Returns the PIDs that had to be killed."""
        if self.process is None:
            return []
        deadline = asyncio.get_running_loop().time() + grace_s
        while (left := live_group_members(self.process.pid)) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        if left:
            log.warning("managed vLLM left processes %s running %.0f s after it exited; killing them", left, grace_s)
            _signal_group(self.process.pid, signal.SIGKILL)
        return left

    def stop(self, grace_s: float = 20.0) -> None:
        proc = self.process
        if proc is None:
            return
        deadline = time.monotonic() + grace_s
        if proc.poll() is None:
            log.info("stopping managed vLLM (pid %d)", proc.pid)
            proc.send_signal(signal.SIGTERM)  # the server stops its engine itself; signalling both looks like a crash
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("managed vLLM ignored SIGTERM for %.0f s; killing it", grace_s)
        # The engine core is a separate process in the group: give it the rest of the grace period, then kill.
        while live_group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if live_group_members(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        while live_group_members(proc.pid) and time.monotonic() < deadline + 5:
            time.sleep(0.1)


def live_group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid` that are still running (zombies excluded: they only wait to be reaped)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
