"""Decode throughput with the plugin at 10, 1,000 and 10,000 terms, as a ratio to requests without terms.

Run: .venv/bin/python -m bench.decode_mask [--port 8160] [--tokens 128] [--repeats 3] [--mode reader]
         [--counts 10,1000,10000] [--batches single|concurrent|both]
     .venv/bin/python -m bench.decode_mask --plugin-only [--mode word]   # the in-process part only, no vLLM
`--mode` sends the terms as the gateway does for a policy with that `match:` (reader: the default).
One vLLM (CPU build, plugin loaded) serves every configuration in the same run. The baseline is a request without
`quell_terms` on the same server (the plugin is loaded but leaves it untouched). Each configuration runs a cold pass
(masks not cached yet), a warm pass (same prompts again) and a primed pass (a new set, first sent in one single-token
request as the gateway does after every policy load, then `--prime-wait` seconds: what a user's first request meets); configurations are interleaved with the baseline and
repeated (`--repeats`) because the host is shared, and the median ratio is printed. It also replays the generated
token ids through `TokenMasks`/`Cursor` plus one `index_fill_` in-process: the plugin's own CPU time per decode step,
which does not depend on what else runs on the host. Prints numbers only; no assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.compile import synthetic_terms
from service.settings import Settings
from service.vllm_process import ManagedVLLM

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"
MODEL = "SmolLM2-135M-Instruct"
TARGETS = ["Spider-Man", "Harry Potter", "Pikachu", "Batman", "Mickey Mouse"]
PROMPTS = ["Tell me a long story about a dragon.", "Explain how rivers form.", "Describe a busy market in Paris.",
           "Write a letter to a friend about winter.", "List facts about the moon.", "Tell me about Spider-Man.",
           "Describe your favourite meal.", "Explain photosynthesis to a child."]  # fmt: skip


@contextlib.contextmanager
def vllm_server(port: int, extra_args: str = "") -> Iterator[str]:
    """The managed vLLM with the plugin, as `quell serve` starts it (plus `extra_args`, e.g. a baseline's logits
    processor); stopped with its whole process group."""
    managed = ManagedVLLM(Settings(vllm_port=port, model_dir=MODEL_DIR, cache_dir=ROOT / ".cache",
                                   served_model_name=MODEL, vllm_extra_args=extra_args))  # fmt: skip
    managed.start()
    try:
        managed.wait_ready_blocking(420)
        yield managed.url
    finally:
        managed.stop()


MODE = "reader"
WARM_BUDGET_S = 0.0
TEXTS = [
    (
        "Once upon a time, in a kingdom by the sea, there lived an old dragon who guarded a cave full of gold. Every "
        "morning the villagers walked past the mountain and wondered whether the beast was still asleep. One day a young "
        "girl named Mara decided to climb up and see for herself, carrying bread, a rope and her grandfather's lantern."
    ),
    (
        "Rivers form when rain and melting snow gather in channels. Over thousands of years the water cuts valleys into "
        "rock, carries sediment downstream and builds deltas where it meets the sea. Tributaries join the main stream."
    ),
]


def xargs(terms: list[str], mode: str) -> dict[str, list[str]]:
    """Terms under the plugin keys a policy with `match: <mode>` would send (`filters.surface.SurfaceLayer`)."""
    from filters.automaton import MatchMode, reader_mode

    modes = {t: MatchMode(mode) if mode != "reader" else reader_mode(t) for t in terms}
    keys = {MatchMode.WORD: "quell_terms", MatchMode.PREFIX: "quell_prefix_terms",
            MatchMode.INSIDE: "quell_inside_terms"}  # fmt: skip
    out: dict[str, list[str]] = {}
    for term, m in modes.items():
        out.setdefault(keys[m], []).append(term)
    return out


def automaton_for(terms: list[str], mode: str):
    from filters.automaton import TermAutomaton

    args = xargs(terms, mode)
    return TermAutomaton(args.get("quell_terms", ()), prefix=args.get("quell_prefix_terms", ()),
                         inside=args.get("quell_inside_terms", ()))  # fmt: skip


def complete(url: str, prompt: str, tokens: int, terms: list[str] | None, headers: dict | None = None) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "min_tokens": tokens, "ignore_eos": True, "temperature": 0}  # fmt: skip
    if terms:
        body["vllm_xargs"] = xargs(terms, MODE)
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600, headers=headers)
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"]


def throughput(url: str, prompts: list[str], tokens: int, terms: list[str] | None,
               headers: dict | None = None) -> float:  # fmt: skip
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        produced = sum(pool.map(lambda p: complete(url, p, tokens, terms, headers), prompts))
    return produced / (time.perf_counter() - t0)


def generated_text(url: str, prompt: str, tokens: int) -> str:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    return response.json()["choices"][0]["text"]


def plugin_cost(term_sets: dict[int, list[str]], texts: list[str]) -> None:
    """Per-step CPU time of what the plugin does per request: advance the cursor, look up/compute the mask, fill."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from filters.token_mask import Cursor, TokenMasks
    from filters.vocab import VocabularyIndex

    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    vocab = VocabularyIndex.from_hf_tokenizer(tokenizer)
    sequences = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    logits = torch.zeros(vocab.size)
    for count, terms in term_sets.items():
        t0 = time.perf_counter()
        masks = TokenMasks(automaton_for(terms, MODE), vocab)
        warmed = masks.warm_start(budget_s=WARM_BUDGET_S) if WARM_BUDGET_S else 0
        print(
            f"{count:>6} terms ({MODE}): compiled and {warmed} start masks warmed in {time.perf_counter() - t0:.2f} s"
        )
        banned_ids: dict[tuple, torch.Tensor] = {}  # what the plugin caches per step key
        for label in ("cold", "warm"):
            steps = []
            for ids in sequences:
                cursor = Cursor(masks.automaton, vocab)
                for token in ids:
                    t0 = time.perf_counter()
                    cursor.advance(token)
                    key = (cursor.state, cursor.tail, cursor.after_lower)
                    ids = banned_ids.get(key)
                    if ids is None:
                        mask = masks.banned(cursor.state, cursor.tail, after_lower=cursor.after_lower)
                        ids = banned_ids[key] = torch.from_numpy(np.flatnonzero(mask))
                    logits.index_fill_(0, ids, -float("inf"))
                    steps.append(time.perf_counter() - t0)
            steps.sort()
            print(f"plugin CPU per step ({MODE}, {masks.automaton.num_states} DFA states), {count:>6} terms, {label}: mean {sum(steps) / len(steps) * 1e3:.2f} ms, "
                  f"p50 {steps[len(steps) // 2] * 1e3:.3f} ms, p99 {steps[int(len(steps) * 0.99)] * 1e3:.1f} ms, "
                  f"max {steps[-1] * 1e3:.1f} ms over {len(steps)} steps", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=["reader", "word", "prefix", "inside"], default="reader")
    parser.add_argument("--plugin-only", action="store_true", help="only the in-process plugin cost (no vLLM)")
    parser.add_argument(
        "--warm-budget",
        type=float,
        default=0.0,
        help="seconds of start-state masks to precompute per term set before timing (0: none)",
    )
    parser.add_argument(
        "--prime-wait",
        type=float,
        default=5.0,
        help="seconds between the gateway's single-token priming request and the first timed one",
    )
    parser.add_argument("--counts", default="10,1000,10000", help="term-set sizes, comma-separated")
    parser.add_argument("--batches", choices=["single", "concurrent", "both"], default="both",
                        help="one request at a time, 8 in flight, or both")  # fmt: skip
    args = parser.parse_args()
    global MODE, WARM_BUDGET_S
    MODE, WARM_BUDGET_S = args.mode, args.warm_budget
    counts = [int(c) for c in args.counts.split(",")]
    term_sets = {count: TARGETS + synthetic_terms(count - len(TARGETS), seed=count) for count in counts}
    if args.plugin_only:
        plugin_cost(term_sets, TEXTS)
        return
    from service.processes import free_port

    with vllm_server(args.port or free_port()) as url:
        complete(url, "Hello", 8, None)  # warm-up
        texts = [generated_text(url, prompt, args.tokens) for prompt in PROMPTS[:4]]
        batches = {"single": [("single", PROMPTS[:1])], "concurrent": [("8 concurrent", PROMPTS)]}
        batches["both"] = batches["single"] + batches["concurrent"]
        for label, prompts in batches[args.batches]:
            for count, terms in term_sets.items():
                cold_ratios, primed_ratios, warm_ratios, bases = [], [], [], []
                for repeat in range(args.repeats):
                    base = throughput(url, prompts, args.tokens, None)
                    # a fresh term set per repeat (one extra term) makes the first pass cold again
                    fresh = terms + [f"Zzcold{repeat}x"]
                    cold = throughput(url, prompts, args.tokens, fresh)
                    warm = throughput(url, prompts, args.tokens, fresh)
                    # what a user's first request meets after a policy load: the gateway has sent the set once in a
                    # single-token request (Gateway.warm_decode_masks) and the plugin warmed it meanwhile
                    primed_set = terms + [f"Zzprimed{repeat}x"]
                    complete(url, "Hello", 1, primed_set)
                    time.sleep(args.prime_wait)
                    primed = throughput(url, prompts, args.tokens, primed_set)
                    bases.append(base)
                    cold_ratios.append(cold / base)
                    primed_ratios.append(primed / base)
                    warm_ratios.append(warm / base)
                print(f"{label}: {count:>6} terms: baseline {statistics.median(bases):.1f} tok/s; ratio to baseline "
                      f"cold {statistics.median(cold_ratios):.3f} {_fmt(cold_ratios)}, "
                      f"primed {statistics.median(primed_ratios):.3f} {_fmt(primed_ratios)}, "
                      f"warm {statistics.median(warm_ratios):.3f} {_fmt(warm_ratios)}", flush=True)  # fmt: skip
    plugin_cost(term_sets, texts)


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


if __name__ == "__main__":
    main()
