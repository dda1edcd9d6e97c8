"""`make bench`: the headline numbers of every bench in one run, each beside its baseline, as ONE table.

    .venv/bin/python -m bench [--requests 10] [--tokens 48] [--terms 1000] [--gateway URL --backend URL]

Starts one real `quell serve` (managed vLLM with the Quell plugin) unless given URLs, then runs short versions of:
gateway overhead vs vLLM directly (bench.gateway_overhead), decode-mask throughput with N terms vs none on the same
vLLM (bench.decode_mask), text matcher MB/s (bench.matcher's text), semantic check latency vs the surface check of
the same answer (bench.gateway_capacity's in-process timing), /v1/moderations throughput vs /healthz when the route
exists, and resident memory of the gateway vs vLLM (psutil). For the full benches run each module on its own.
Prints numbers only; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext, suppress

import httpx
import psutil

from bench._gateway import Endpoints, running_gateway

Row = tuple[str, str, str, str, str]  # metric, quell, baseline, ratio, note


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def overhead_rows(ep: Endpoints, requests: int) -> list[Row]:
    from bench.gateway_overhead import measure, p95

    res = measure(ep, requests)
    rows = []
    for metric, label in (("json", "JSON latency"), ("ttfb", "streaming TTFT")):
        for name, stat in (("p50", statistics.median), ("p95", p95)):
            g, d = stat(res[f"{metric}_gateway"]), stat(res[f"{metric}_direct"])
            rows.append((f"{label} {name}", f"{g * 1000:.1f} ms", f"{d * 1000:.1f} ms vLLM direct", _ratio(g, d),
                         f"n={requests}, 32 tokens, interleaved"))  # fmt: skip
    return rows


def decode_rows(ep: Endpoints, tokens: int, terms: int) -> list[Row]:
    from bench.compile import synthetic_terms
    from bench.decode_mask import PROMPTS, TARGETS, throughput

    words = TARGETS + synthetic_terms(terms - len(TARGETS), seed=terms)
    prompts = PROMPTS[:4]
    key = ep.backend_headers
    throughput(ep.backend, prompts[:1], 8, None, key)  # warm-up
    base = throughput(ep.backend, prompts, tokens, None, key)
    cold = throughput(ep.backend, prompts, tokens, words + ["Zzbenchcold"], key)
    warm = throughput(ep.backend, prompts, tokens, words + ["Zzbenchcold"], key)
    note = f"{len(prompts)} concurrent, {tokens} tokens, one repeat (shared host: see bench.decode_mask)"
    return [(f"decode throughput, {terms} terms, cold", f"{cold:.1f} tok/s", f"{base:.1f} tok/s no terms",
             _ratio(cold, base), note),
            (f"decode throughput, {terms} terms, warm", f"{warm:.1f} tok/s", f"{base:.1f} tok/s no terms",
             _ratio(warm, base), "same prompts again (masks cached)")]  # fmt: skip


def matcher_rows(megabytes: float) -> list[Row]:
    from bench.compile import synthetic_terms
    from bench.matcher import benign_text
    from filters.automaton import TermAutomaton
    from filters.text_matcher import find_matches

    text = benign_text(int(megabytes * 1_000_000))
    size = len(text.encode()) / 1e6
    speeds = {}
    for count in (10, 10_000):
        automaton = TermAutomaton(["Spider-Man", "Harry Potter", "Pikachu", "Batman", "Mickey Mouse"]
                                  + synthetic_terms(count - 5))  # fmt: skip
        t0 = time.perf_counter()
        find_matches(automaton, text)
        speeds[count] = size / (time.perf_counter() - t0)
    return [("text matcher, 10,000 terms", f"{speeds[10_000]:.2f} MB/s", f"{speeds[10]:.2f} MB/s with 10 terms",
             _ratio(speeds[10_000], speeds[10]), f"one-shot on {size:.1f} MB of benign text")]  # fmt: skip


def semantic_rows(repeats: int) -> list[Row]:
    from bench._gateway import ROOT
    from bench.gateway_capacity import answer_text, semantic_seconds_per_check
    from filters.policy_loader import load_policy_dir
    from filters.surface import SurfaceLayer
    from filters.text_matcher import find_matches

    text = answer_text(120)
    semantic = semantic_seconds_per_check(text, repeats)
    if isinstance(semantic, str):
        return [("semantic check per answer", "n/a", "", "", semantic)]
    per_check, refs = semantic
    layer = SurfaceLayer(list(load_policy_dir(ROOT / "policies").policies.values()))
    t0 = time.perf_counter()
    for _ in range(repeats):
        find_matches(layer.automaton, text)
    surface = (time.perf_counter() - t0) / repeats
    return [("semantic check per answer", f"{per_check * 1000:.1f} ms CPU", f"{surface * 1000:.3f} ms surface check",
             _ratio(per_check, surface), f"120-word answer, {refs}, MiniLM on 1 thread")]  # fmt: skip


def _rate(url: str, body: dict | None, requests: int, workers: int = 8) -> float | int:
    """Requests per second (POST when `body`), or the HTTP status of the first failure."""
    with httpx.Client(timeout=60) as client:
        call = (lambda: client.post(url, json=body)) if body is not None else (lambda: client.get(url))
        first = call()
        if first.status_code != 200:
            return first.status_code
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            codes = list(pool.map(lambda _: call().status_code, range(requests)))
        elapsed = time.perf_counter() - t0
    return sum(c == 200 for c in codes) / elapsed


def moderation_rows(ep: Endpoints, requests: int) -> list[Row]:
    body = {"input": "The web-slinger swung between the towers of Queens while his aunt waited at home."}
    mod = _rate(f"{ep.gateway}/v1/moderations", body, requests)
    if isinstance(mod, int):
        return [("/v1/moderations throughput", "n/a", "", "", f"route answered HTTP {mod} (not in this build)")]
    health = _rate(f"{ep.gateway}/healthz", None, requests)
    return [("/v1/moderations throughput", f"{mod:.1f} req/s", f"{health:.1f} req/s /healthz", _ratio(mod, health),
             f"{requests} requests, 8 in flight")]  # fmt: skip


def _listener(port: int) -> psutil.Process | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def _tree_rss(proc: psutil.Process) -> float:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def memory_rows(ep: Endpoints) -> list[Row]:
    gateway = _listener(int(ep.gateway.rsplit(":", 1)[1]))
    vllm = _listener(int(ep.backend.rsplit(":", 1)[1]))
    if gateway is None or vllm is None:
        return [("resident memory", "n/a", "", "", "listening processes not found (remote URLs?)")]
    g = gateway.memory_info().rss / 2**20  # the gateway alone, not the managed vLLM it started
    v = _tree_rss(vllm)
    return [("resident memory (RSS)", f"{g:.0f} MiB gateway", f"{v:.0f} MiB vLLM (all processes)", _ratio(g, v),
             "after the runs above; shared pages counted once per process")]  # fmt: skip


def print_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "Quell", "baseline", "ratio", "note", title="make bench (short settings, one run)")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--terms", type=int, default=1000)
    ap.add_argument("--matcher-mb", type=float, default=0.5)
    ap.add_argument("--semantic-repeats", type=int, default=10)
    ap.add_argument("--gateway")
    ap.add_argument("--backend")
    args = ap.parse_args()
    ctx = nullcontext(Endpoints(args.gateway, args.backend)) if args.gateway else running_gateway()
    rows: list[Row] = []
    with ctx as ep:
        rows += overhead_rows(ep, args.requests)
        rows += decode_rows(ep, args.tokens, args.terms)
        rows += moderation_rows(ep, args.requests * 5)
        rows += memory_rows(ep)
    rows += matcher_rows(args.matcher_mb)
    rows += semantic_rows(args.semantic_repeats)
    print_table(rows)


if __name__ == "__main__":
    main()
