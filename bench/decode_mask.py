"""Decode throughput with the plugin at 10, 1,000 and 10,000 terms, as a ratio to requests without terms.

Run: .venv/bin/python -m bench.decode_mask [--port 8160] [--tokens 128] [--repeats 3]
One vLLM (CPU build, plugin loaded) serves every configuration in the same run. The baseline is a request without
`quell_terms` on the same server (the plugin is loaded but leaves it untouched). Each configuration runs a cold pass
(masks not cached yet) and a warm pass (same prompts again); configurations are interleaved with the baseline and
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
def vllm_server(port: int) -> Iterator[str]:
    """The managed vLLM with the plugin, as `quell serve` starts it; stopped with its whole process group."""
    managed = ManagedVLLM(Settings(vllm_port=port, model_dir=MODEL_DIR, cache_dir=ROOT / ".cache",
                                   served_model_name=MODEL))  # fmt: skip
    managed.start()
    try:
        managed.wait_ready_blocking(420)
        yield managed.url
    finally:
        managed.stop()


def complete(url: str, prompt: str, tokens: int, terms: list[str] | None, headers: dict | None = None) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "min_tokens": tokens, "ignore_eos": True, "temperature": 0}  # fmt: skip
    if terms:
        body["vllm_xargs"] = {"quell_terms": terms}
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

    from filters.automaton import TermAutomaton
    from filters.token_mask import Cursor, TokenMasks
    from filters.vocab import VocabularyIndex

    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    vocab = VocabularyIndex.from_hf_tokenizer(tokenizer)
    sequences = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    logits = torch.zeros(vocab.size)
    for count, terms in term_sets.items():
        masks = TokenMasks(TermAutomaton(terms), vocab)
        banned_ids: dict[tuple[int, bytes], torch.Tensor] = {}  # what the plugin caches per step key
        for label in ("cold", "warm"):
            steps = []
            for ids in sequences:
                cursor = Cursor(masks.automaton, vocab)
                for token in ids:
                    t0 = time.perf_counter()
                    cursor.advance(token)
                    key = (cursor.state, cursor.tail)
                    ids = banned_ids.get(key)
                    if ids is None:
                        ids = banned_ids[key] = torch.from_numpy(np.flatnonzero(masks.banned(*key)))
                    logits.index_fill_(0, ids, -float("inf"))
                    steps.append(time.perf_counter() - t0)
            steps.sort()
            print(f"plugin CPU per step, {count:>6} terms, {label}: mean {sum(steps) / len(steps) * 1e3:.2f} ms, "
                  f"p50 {steps[len(steps) // 2] * 1e3:.3f} ms, p99 {steps[int(len(steps) * 0.99)] * 1e3:.1f} ms, "
                  f"max {steps[-1] * 1e3:.1f} ms over {len(steps)} steps", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8160)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    term_sets = {count: TARGETS + synthetic_terms(count - len(TARGETS), seed=count) for count in (10, 1_000, 10_000)}
    with vllm_server(args.port) as url:
        complete(url, "Hello", 8, None)  # warm-up
        texts = [generated_text(url, prompt, args.tokens) for prompt in PROMPTS[:4]]
        for label, prompts in (("single", PROMPTS[:1]), ("8 concurrent", PROMPTS)):
            for count, terms in term_sets.items():
                cold_ratios, warm_ratios, bases = [], [], []
                for repeat in range(args.repeats):
                    base = throughput(url, prompts, args.tokens, None)
                    # a fresh term set per repeat (one extra term) makes the first pass cold again
                    fresh = terms + [f"Zzcold{repeat}x"]
                    cold = throughput(url, prompts, args.tokens, fresh)
                    warm = throughput(url, prompts, args.tokens, fresh)
                    bases.append(base)
                    cold_ratios.append(cold / base)
                    warm_ratios.append(warm / base)
                print(f"{label}: {count:>6} terms: baseline {statistics.median(bases):.1f} tok/s; ratio to baseline "
                      f"cold {statistics.median(cold_ratios):.3f} {_fmt(cold_ratios)}, "
                      f"warm {statistics.median(warm_ratios):.3f} {_fmt(warm_ratios)}", flush=True)  # fmt: skip
    plugin_cost(term_sets, texts)


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


if __name__ == "__main__":
    main()
