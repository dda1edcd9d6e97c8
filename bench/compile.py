"""Compile time and memory of one term set (10,000 and 100,000 terms), and the time to the first token masks.

Run: .venv/bin/python -m bench.compile
Prints numbers only; no assertions. Memory is the growth of this process's resident set while compiling.
"""

from __future__ import annotations

import gc
import random
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"
_SYLLABLES = ["ka", "lo", "mir", "vos", "trand", "el", "ra", "zin", "tor", "quin", "bel", "ash", "dor", "pen", "ix",
              "ul", "mar", "sen", "gri", "fa", "mo", "ne", "sta", "ri", "co"]  # fmt: skip


def synthetic_terms(count: int, seed: int = 0) -> list[str]:
    """Name-like terms ("Vostrand Kalomir"), one or two words, reproducible."""
    rng = random.Random(seed)
    terms: set[str] = set()
    while len(terms) < count:
        words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(rng.randint(1, 2))]
        terms.add(" ".join(w.capitalize() for w in words))
    return sorted(terms)


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    from transformers import AutoTokenizer

    from filters.automaton import START, TermAutomaton
    from filters.token_mask import Cursor, TokenMasks
    from filters.vocab import VocabularyIndex

    t0 = time.perf_counter()
    vocab = VocabularyIndex.from_hf_tokenizer(AutoTokenizer.from_pretrained(str(MODEL_DIR)))
    _ = vocab.char_table
    print(f"vocabulary index ({vocab.size} tokens, table {vocab.char_table.chars.shape}): "
          f"{time.perf_counter() - t0:.2f} s")  # fmt: skip
    text = "Once upon a time Vostrand met a spider, and they talked about Kalomir Tor for hours."
    for count in (10_000, 100_000):
        terms = synthetic_terms(count)
        gc.collect()
        before = _rss_mib()
        t0 = time.perf_counter()
        automaton = TermAutomaton(terms)
        compiled = time.perf_counter() - t0
        masks = TokenMasks(automaton, vocab)
        prepared = time.perf_counter() - t0
        after = _rss_mib()
        t1 = time.perf_counter()
        masks.banned(START)
        first = time.perf_counter() - t1
        cursor = Cursor(automaton, vocab)
        times = []
        for token in AutoTokenizer.from_pretrained(str(MODEL_DIR)).encode(text):
            cursor.advance(token)
            t2 = time.perf_counter()
            masks.banned(cursor.state, cursor.tail)
            times.append(time.perf_counter() - t2)
        print(f"{count:>7} terms: compile {compiled:.2f} s (+ per-vocabulary class table: {prepared:.2f} s total), "
              f"RSS +{after - before:.0f} MiB, trie nodes {len(automaton.trie.children)}; "
              f"first mask {first * 1000:.0f} ms; {len(times)} masks along a sentence: "
              f"mean {sum(times) / len(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms, "
              f"DFA states {automaton.num_states}, RSS now {_rss_mib():.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
