"""Gateway capacity: requests per second per core, the number an operator sizes gateway replicas with.

    .venv/bin/python -m bench.gateway_capacity [--seconds 10] [--concurrency 32] [--words 120]
                                               [--gateway-env KEY=VALUE ...] [--no-semantic]

The model is not what is measured here, so the gateway (a real `quell serve`, started by `running_gateway()`)
talks to a stub OpenAI backend in this process that answers at once with a canned answer of `--words` words (JSON,
or SSE with one word per event like vLLM's per-token chunks) and claims the Quell plugin, as a production vLLM does.
The gateway is pinned to one CPU and the stub and load generator to the others; each scenario reports the requests
completed per second and per CPU-second the gateway process used (all its threads): the second number is
"requests/s per core" even when the load generator could not saturate the gateway.

Semantic layers: if the gateway runs them (pass the settings that enable them with --gateway-env), the scenarios
above include them. Otherwise the bench also times `SemanticGuard.check` on the same answer in this process on one
thread (the local MiniLM embedder) and prints the per-core rate of surface + semantic, computed from both.
Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import threading
import time
import urllib.request
from contextlib import suppress
from dataclasses import dataclass

import psutil

from bench._gateway import ROOT, running_gateway

MODEL = "SmolLM2-135M-Instruct"
WORDS = ("the river flows north through a wide valley where farmers grow wheat and barley in the summer months "  # noqa: SIM905 - a sentence reads better
         "while the old town keeps its market square its stone bridge and a small museum about the local history "
         "of trade boats mills and weaving").split()  # fmt: skip


def answer_text(n_words: int) -> str:
    words = [WORDS[i % len(WORDS)] for i in range(n_words)]
    sentences = [" ".join(words[i : i + 15]).capitalize() + "." for i in range(0, n_words, 15)]
    return " ".join(sentences)


# ---- stub backend: raw asyncio HTTP/1.1 with keep-alive, canned bodies -----------------------------------------


@dataclass(frozen=True)
class Canned:
    models: bytes
    chat_json: bytes
    chat_sse: bytes
    probe_rejection: bytes


def canned(text: str) -> Canned:
    base = {"id": "chatcmpl-bench", "created": 0, "model": MODEL}
    chat = {**base, "object": "chat.completion", "usage": {"prompt_tokens": 20, "completion_tokens": 150,
            "total_tokens": 170}, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"}]}  # fmt: skip
    events = [
        {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    ]
    for i, word in enumerate(text.split(" ")):
        events.append({**base, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word},
                                    "finish_reason": None}]})  # fmt: skip
    events.append({**base, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})  # fmt: skip
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    rejection = {"error": {"message": "quell_terms: '--' has no letters or digits", "type": "BadRequestError",
                           "code": 400}}  # fmt: skip
    return Canned(json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode(),
                  json.dumps(chat).encode(), sse.encode(), json.dumps(rejection).encode())  # fmt: skip


def _http(status: int, ctype: str, body: bytes) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    return f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str]] | None:
    first = await reader.readline()
    if not first:
        return None
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    return first, headers


PROBE = re.compile(rb'"quell_terms":\s*\["--"\]')  # the gateway's plugin-presence probe (service/backend.py)


def stub_handler(c: Canned):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError, asyncio.IncompleteReadError):
            while (head := await _read_head(reader)) is not None:
                first, headers = head
                method, path = first.split(b" ")[:2]
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == b"GET" and path == b"/v1/models":
                    out = _http(200, "application/json", c.models)
                elif path == b"/v1/completions" and PROBE.search(body):
                    out = _http(400, "application/json", c.probe_rejection)  # the plugin-presence probe
                elif path == b"/v1/chat/completions":
                    stream = b'"stream": true' in body or b'"stream":true' in body
                    out = _http(200, "text/event-stream", c.chat_sse) if stream else _http(200, "application/json",
                                                                                           c.chat_json)  # fmt: skip
                else:
                    out = _http(404, "application/json", b'{"error": {"message": "not found"}}')
                writer.write(out)
                await writer.drain()
        writer.close()

    return handle


class StubBackend:
    """The stub server on its own thread and event loop, so the load generator's loop does not slow it."""

    def __init__(self, c: Canned):
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(stub_handler(c), "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> StubBackend:  # noqa: PYI034 - a final class of the bench
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ---- load generator: keep-alive connections, each sending requests back to back ----------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await _read_head(reader)
    if head is None:
        raise ConnectionError("gateway closed the connection")
    first, headers = head
    status = int(first.split(b" ")[1])
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    else:  # chunked (StreamingResponse)
        while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
            await reader.readexactly(size + 2)
        await reader.readline()
    return status


async def load(base: str, body: dict, key: str | None, seconds: float, concurrency: int) -> list[float]:
    host, port = base.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n{auth}"
               f"content-length: {len(payload)}\r\n\r\n").encode() + payload  # fmt: skip
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                if status != 200:
                    raise RuntimeError(f"gateway answered {status}")
                latencies.append(time.perf_counter() - t)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


# ---- measurement ---------------------------------------------------------------------------------------------


def gateway_process(port: int) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        with suppress(psutil.Error):
            if "serve" in (proc.info["cmdline"] or []) and proc.environ().get("QUELL_PORT") == str(port):
                return proc
    raise RuntimeError(f"no `quell serve` process with QUELL_PORT={port}")


def pin(proc: psutil.Process, cpus: list[int]) -> None:
    """Every thread of `proc` (threads it starts later inherit the mask from their creator)."""
    for thread in proc.threads():
        with suppress(psutil.Error):
            psutil.Process(thread.id).cpu_affinity(cpus)


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


@dataclass(frozen=True)
class Result:
    name: str
    requests: int
    seconds: float
    gateway_cpu_s: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def per_core(self) -> float:
        return self.requests / self.gateway_cpu_s if self.gateway_cpu_s > 0 else float("nan")


def run_scenario(name: str, base: str, proc: psutil.Process, body: dict, key: str | None, seconds: float,
                 concurrency: int) -> Result:  # fmt: skip
    asyncio.run(load(base, body, key, min(2.0, seconds), concurrency))  # warm-up, not counted
    cpu0, t0 = cpu_seconds(proc), time.perf_counter()
    lat = asyncio.run(load(base, body, key, seconds, concurrency))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(proc) - cpu0
    lat.sort()
    return Result(name, len(lat), elapsed, cpu, 1000 * statistics.median(lat), 1000 * lat[int(0.99 * (len(lat) - 1))])


def semantic_seconds_per_check(text: str, repeats: int) -> tuple[float, str] | str:
    """CPU seconds of one `SemanticGuard.check(text)` on one thread, or why it could not be measured."""
    try:
        import torch

        from filters.concept_classifier import ClassifierCache
        from filters.embedding import LocalEmbedder
        from filters.policy_loader import load_policy_dir
        from filters.semantic import SemanticGuard
    except ImportError as exc:
        return f"semantic layers not importable here ({exc})"
    torch.set_num_threads(1)
    policies = [p for p in load_policy_dir(ROOT / "policies").policies.values()
                if any(t.concept for t in p.targets)]  # fmt: skip
    if not policies:
        return "no policy in policies/ has a concept target"
    guard = SemanticGuard(policies, LocalEmbedder(), ClassifierCache())
    guard.check(text)  # load the model, embed anchors, train classifiers: not counted
    me = psutil.Process()
    cpu0 = cpu_seconds(me)
    for _ in range(repeats):
        guard.check(text)
    per_check = (cpu_seconds(me) - cpu0) / repeats
    return per_check, ", ".join(p.ref for p in policies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario")
    ap.add_argument("--concurrency", type=int, default=32, help="keep-alive connections sending back to back")
    ap.add_argument("--words", type=int, default=120, help="words in the canned answer (~1.3 tokens each)")
    ap.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway (e.g. the settings that turn semantic layers on)",
    )
    ap.add_argument("--no-semantic", action="store_true", help="skip the in-process semantic timing")
    ap.add_argument("--semantic-repeats", type=int, default=30)
    args = ap.parse_args()

    text = answer_text(args.words)
    key = "sk-bench"
    cpus = sorted(psutil.Process().cpu_affinity())
    gateway_cpus, other_cpus = (cpus[:1], cpus[1:]) if len(cpus) > 1 else (cpus, cpus)
    load_before = os.getloadavg()
    with StubBackend(canned(text)) as stub:
        env = {
            "QUELL_BACKEND_URL": stub.url,
            "QUELL_POLICIES": str(ROOT / "policies"),
            "QUELL_LOG_LEVEL": "warning",
            "QUELL_API_KEYS": key,
            **dict(kv.split("=", 1) for kv in args.gateway_env),
        }
        with running_gateway(env) as ep:
            proc = gateway_process(int(ep.gateway.rsplit(":", 1)[1]))
            pin(proc, gateway_cpus)
            psutil.Process().cpu_affinity(other_cpus)
            ready = json.loads(urllib.request.urlopen(f"{ep.gateway}/readyz").read())
            results = []
            for name, stream in (("json", False), ("sse", True)):
                body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about the river town."}],
                        "max_tokens": 200, "stream": stream}  # fmt: skip
                results.append(run_scenario(name, ep.gateway, proc, body, key, args.seconds, args.concurrency))
            psutil.Process().cpu_affinity(cpus)
    semantic = None if args.no_semantic else semantic_seconds_per_check(text, args.semantic_repeats)

    print(
        f"gateway on CPU {gateway_cpus}, stub backend + load on {other_cpus}; load average before "
        f"{load_before[0]:.1f} / after {os.getloadavg()[0]:.1f} on {psutil.cpu_count()} CPUs"
    )
    print(
        f"surface layer: {ready.get('surface_layer')}; policies: {', '.join(ready.get('policies', []))}; "
        f"answer: {args.words} words, {len(text)} chars; concurrency {args.concurrency}"
    )
    print(f"{'scenario':<10}{'requests':>10}{'req/s':>10}{'gw CPU s':>10}{'req/s/core':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for r in results:
        print(
            f"{r.name:<10}{r.requests:>10}{r.rps:>10.1f}{r.gateway_cpu_s:>10.2f}{r.per_core:>12.1f}"
            f"{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
        )
    if isinstance(semantic, str):
        print(f"semantic layers: not measured: {semantic}")
    elif semantic is not None:
        per_check, refs = semantic
        print(f"semantic layers ({refs}; local MiniLM, 1 thread): {1000 * per_check:.1f} ms CPU per answer checked")
        for r in results:
            combined = 1 / (1 / r.per_core + per_check)
            print(
                f"  {r.name}: surface + semantic ~ {combined:.1f} req/s/core "
                f"(1 / (1/{r.per_core:.1f} + {per_check:.4f}))"
            )
        if not args.gateway_env:
            print("  (computed: the gateway above ran without semantic layers; --gateway-env measures them in it)")


if __name__ == "__main__":
    main()
