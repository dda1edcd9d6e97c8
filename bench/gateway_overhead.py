"""Gateway overhead against calling the same vLLM directly: same requests, same run, interleaved.

    .venv/bin/python -m bench.gateway_overhead [--requests 30] [--gateway URL --backend URL]

Prints median and p95 latency of non-streaming requests and time to first content byte of streaming requests,
direct vs through the gateway, and their ratios. Requests alternate direct/gateway so drift hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import httpx

from bench._gateway import Endpoints, running_gateway

MODEL = "SmolLM2-135M-Instruct"
PROMPTS = ["Name three rivers in Europe.", "What is a prime number?", "Give me a short tip for sleeping well.",
           "Translate 'good morning' into French.", "Who wrote Hamlet?"]  # fmt: skip


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]


def one_json(client: httpx.Client, base: str, prompt: str) -> float:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 32, "temperature": 0}
    t = time.perf_counter()
    resp = client.post(f"{base}/v1/chat/completions", json=body)
    resp.raise_for_status()
    return time.perf_counter() - t


def one_ttfb(client: httpx.Client, base: str, prompt: str) -> float:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 32, "temperature": 0,
            "stream": True}  # fmt: skip
    t = time.perf_counter()
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
        for line in resp.iter_lines():
            if '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", ""):
                return time.perf_counter() - t
    return time.perf_counter() - t


def measure(ep: Endpoints, requests: int) -> dict[str, list[float]]:
    """Seconds per request, direct vs gateway, JSON and streaming time to first content (interleaved)."""
    with httpx.Client(timeout=120, headers=ep.backend_headers) as client:  # (an open gateway ignores the key)
        for p in PROMPTS[:2]:  # warm-up, not counted
            one_json(client, ep.backend, p), one_json(client, ep.gateway, p)
        res: dict[str, list[float]] = {"json_direct": [], "json_gateway": [], "ttfb_direct": [], "ttfb_gateway": []}
        for i in range(requests):
            prompt = PROMPTS[i % len(PROMPTS)]
            order = [("direct", ep.backend), ("gateway", ep.gateway)]
            if i % 2:
                order.reverse()
            for name, base in order:
                res[f"json_{name}"].append(one_json(client, base, prompt))
                res[f"ttfb_{name}"].append(one_ttfb(client, base, prompt))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--gateway")
    ap.add_argument("--backend")
    args = ap.parse_args()
    ctx = nullcontext(Endpoints(args.gateway, args.backend)) if args.gateway else running_gateway()
    with ctx as ep:
        res = measure(ep, args.requests)
    print(f"{'metric':<22}{'direct':>10}{'gateway':>10}{'ratio':>8}   (n={args.requests} each, seconds)")
    for metric in ("json", "ttfb"):
        for stat_name, stat in (("median", statistics.median), ("p95", p95)):
            d, g = stat(res[f"{metric}_direct"]), stat(res[f"{metric}_gateway"])
            print(f"{metric + ' ' + stat_name:<22}{d:>10.4f}{g:>10.4f}{g / d:>8.3f}")


if __name__ == "__main__":
    main()
