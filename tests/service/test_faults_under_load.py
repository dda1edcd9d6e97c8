"""Faults and load against the gateway served over real HTTP (uvicorn in a thread, replayed vLLM answers): policy
files rewritten under concurrent streams, and a bounded burst of JSON and SSE requests."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import threading
import time
from pathlib import Path

import httpx

from tests.service.conftest import POLICIES
from tests.service.test_side_channels import recorded, spells_a_term

STREAMS = 50
REWRITES = 20
BURST = int(os.environ.get("QUELL_LOAD_REQUESTS", "200"))
"""Requests per burst; `make soak` raises it."""


def _rewrite_policy(path: Path, times: int, done: threading.Event) -> None:
    """An editor's save, again and again: rename the old file away, write the new one a moment later."""
    text = POLICIES["spider-redact"]
    for i in range(times):
        backup = path.with_name(f".{path.name}.{i}.swp")
        path.rename(backup)
        time.sleep(0.05)
        path.write_text(text.replace("default: true", f"default: true\ndescription: rewrite {i}"))
        backup.unlink()
        time.sleep(0.05)
    done.set()


async def _stream_text(client: httpx.AsyncClient, body: dict) -> tuple[int, str, bool]:
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        text, done = [], False
        async for line in resp.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data:"):
                for choice in json.loads(line[5:])["choices"]:
                    text.append((choice.get("delta") or {}).get("content") or "")
        return resp.status_code, "".join(text), done


def test_policy_rewritten_20_times_under_50_streams_never_leaks(serve_gateway, policy_dir: Path) -> None:
    body, _ = recorded("chat_spider_stream")
    with serve_gateway("chat_spider_stream") as (base, _):
        done = threading.Event()
        writer = threading.Thread(target=_rewrite_policy, args=(policy_dir / "spider-redact.yaml", REWRITES, done))

        async def run() -> list[tuple[int, str, bool]]:
            results = []
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                writer.start()
                while not done.is_set() or len(results) < STREAMS:
                    results += await asyncio.gather(*[_stream_text(client, body) for _ in range(10)])
            return results

        results = asyncio.run(run())
        writer.join()
    assert len(results) >= STREAMS
    assert all(status == 200 and finished for status, _, finished in results)
    leaked = [text for _, text, _ in results if spells_a_term(text)]
    assert not leaked, f"{len(leaked)} of {len(results)} streams leaked: {leaked[:2]}"
    print(f"rewrites: {REWRITES} policy rewrites under {len(results)} streams, 0 failed, 0 leaked")


def _rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_bounded_burst_of_json_and_sse_has_no_errors_and_no_memory_growth(serve_gateway) -> None:
    """Two rounds of the same burst: the second must not grow memory beyond a stated bound (32 MiB). The gateway runs
    in this process, so the process's RSS is the gateway's (plus the test's small client)."""
    json_body, _ = recorded("chat_spider")
    sse_body, _ = recorded("chat_spider_stream")
    with serve_gateway("chat_spider", "chat_spider_stream") as (base, _):

        async def burst(requests: int) -> list[int]:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:

                async def one(i: int) -> int:
                    if i % 2:
                        return (await client.post("/v1/chat/completions", json=json_body)).status_code
                    status, _, finished = await _stream_text(client, sse_body)
                    return status if finished else -1

                out: list[int] = []
                for first in range(0, requests, 25):
                    out += await asyncio.gather(*[one(i) for i in range(first, min(requests, first + 25))])
                return out

        first = asyncio.run(burst(BURST))
        before = _rss_mib()
        second = asyncio.run(burst(BURST))
        after = _rss_mib()
    assert first.count(200) == len(first) and second.count(200) == len(second)
    assert after - before < 32, f"RSS grew {after - before:.1f} MiB over {BURST} requests"
    print(f"load: 2 x {BURST} requests, 0 errors, RSS {before:.0f} -> {after:.0f} MiB")
