"""The managed vLLM server: one child process group that starts with the gateway and dies with it.

vLLM runs its engine in child processes, so the server is started in a new session (its own process group) and
stopped by signalling the whole group: SIGTERM, then SIGKILL after a grace period. PR_SET_PDEATHSIG makes the
server die even if the gateway is killed without a chance to clean up. Temp files and vLLM's cache live under the
project's cache folder, never in /tmp.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.settings import Settings

log = logging.getLogger("quell.vllm")

PLUGIN = "filters.vllm_plugin:QuellLogitsProcessor"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ManagedVLLM:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.vllm_port}"
        self.process: subprocess.Popen | None = None
        self.log_path = settings.cache_dir.resolve() / "logs" / "vllm.log"

    def command(self) -> list[str]:
        s = self.settings
        return [
            sys.executable, "-m", "service.vllm_main", "serve", str(s.model_dir.resolve()),
            "--host", "127.0.0.1", "--port", str(s.vllm_port),
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
        return env

    def start(self) -> None:
        if not (self.settings.model_dir / "config.json").exists():
            raise RuntimeError(
                f"model folder {self.settings.model_dir} is missing: run `make setup` "
                f"(or `quell model prepare --out {self.settings.model_dir}`)"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path.open("ab")
        log.info("starting managed vLLM on %s (log: %s)", self.url, self.log_path)
        self.process = subprocess.Popen(
            self.command(), env=self.environment(), stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )  # fmt: skip
        log_file.close()

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait_ready_blocking(self, timeout_s: float) -> None:
        """`wait_ready` for synchronous callers (benchmarks, test fixtures)."""
        asyncio.run(self.wait_ready(timeout_s))

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                code = self.exited()
                if code is not None:
                    raise RuntimeError(f"managed vLLM exited with code {code}; see {self.log_path}")
                try:
                    if (await client.get(f"{self.url}/v1/models")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"managed vLLM not ready after {timeout_s:.0f} s; see {self.log_path}")
                await asyncio.sleep(0.5)

    def stop(self, grace_s: float = 20.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        log.info("stopping managed vLLM (pid %d)", proc.pid)
        proc.send_signal(signal.SIGTERM)  # the server stops its engine itself; signalling both looks like a crash
        deadline = time.monotonic() + grace_s
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("managed vLLM ignored SIGTERM for %.0f s; killing it", grace_s)
        # The engine core is a separate process in the group: give it the rest of the grace period, then kill.
        while live_group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if live_group_members(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        while live_group_members(proc.pid) and time.monotonic() < deadline + 5:
            time.sleep(0.1)


def live_group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid` that are still running (zombies excluded: they only wait to be reaped)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
