"""Text matcher throughput on benign text (MB/s) and per-chunk latency of the streaming matcher.

Run: .venv/bin/python -m bench.matcher
Prints numbers only; no assertions.
"""

from __future__ import annotations

import random
import statistics
import time

from bench.compile import synthetic_terms
from filters.automaton import TermAutomaton
from filters.text_matcher import StreamMatcher, find_matches

WORDS = ("the of and to in is was for that with as on by at from his her they this which be or are an had not but "  # noqa: SIM905 - a sentence reads better
         "were have one all their there can been if more when will would who so no time people year said made way "
         "story river mountain city garden winter morning letter music window friend children history science "
         "café naïve résumé Zürich 東京 москва 🙂 42 3.14 e-mail").split()  # fmt: skip


def benign_text(size: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    out, length = [], 0
    while length < size:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))).capitalize() + rng.choice(".!?,;")
        out.append(sentence)
        length += len(sentence) + 1
    return " ".join(out)[:size]


def main() -> None:
    text = benign_text(2_000_000)
    megabytes = len(text.encode()) / 1e6
    for count in (10, 10_000):
        automaton = TermAutomaton(
            ["Spider-Man", "Harry Potter", "Pikachu", "Batman", "Mickey Mouse"] + synthetic_terms(count - 5)
        )
        t0 = time.perf_counter()
        found = find_matches(automaton, text)
        elapsed = time.perf_counter() - t0
        print(f"{count:>6} terms, one-shot: {megabytes / elapsed:.2f} MB/s ({megabytes:.1f} MB, {len(found)} matches)")
        for chunk_size in (4, 64):
            matcher = StreamMatcher(automaton)
            latencies = []
            for start in range(0, 400_000, chunk_size):
                t1 = time.perf_counter()
                matcher.feed(text[start : start + chunk_size])
                latencies.append(time.perf_counter() - t1)
            latencies.sort()
            p99 = latencies[int(len(latencies) * 0.99)]
            total = sum(latencies)
            print(f"{count:>6} terms, streaming {chunk_size:>2}-char chunks: {0.4 / total:.2f} MB/s, per chunk "
                  f"p50 {statistics.median(latencies) * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us, max {latencies[-1] * 1e6:.0f} us")  # fmt: skip


if __name__ == "__main__":
    main()
