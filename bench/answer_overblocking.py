"""Over-blocking of each match mode on model answers: how often an answer that names no target is changed.

`bench.term_overblocking` counts over-blocking on prompts and reference answers. This counts it on what the model
writes, which is what a mask or the text backstop acts on. One vLLM run, greedy decoding:

1. `none`: the model's answers to a seeded sample of benign prompts (a tuning set; the threshold was chosen on its
   prompts, not on these answers) and of the Harry Potter neighbour prompts (report-only).
2. `plugin`: the same prompts with every term of the panel (the example policies, ConceptVectors concepts, RETURN
   people; as one term set under the default `match: reader`) sent to the decode-time mask. Greedy decoding makes
   the argument exact: the mask bans only tokens that would complete a term, so an answer changes exactly when the
   unmasked answer holds a term under the contract. This column checks that on the model, answer by answer:
   changed answers must be the answers the text matcher flags, and no other. An answer that changed without a
   match is asked again alone (no batching), with and without the terms, to tell batching noise from the mask
   (on CPU, batch composition can move a greedy choice between near ties).
3. Per mode, the `term_overblocking` tables over the unmasked answers: answers a target's terms match under that
   mode while they do not name the target between word edges. The text backstop reads answers with the same
   matcher, so its over-blocking is the same count.

Run: flock /tmp/quell-vllm.lock .venv/bin/python -m bench.answer_overblocking [--benign 200] [--neighbours 100]
Answers are kept in .cache/bench/ (per model, sample and token count) and reused by later runs (`--fresh` redoes
them). Prints numbers; no assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.decode_mask import MODEL, ROOT, vllm_server, xargs
from bench.term_overblocking import Panel, panel, rows
from filters.automaton import TermAutomaton
from filters.text_matcher import find_matches
from service.processes import free_port

CACHE = ROOT / ".cache" / "bench"


def sample(benign: int, neighbours: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    prompts = {"benign": [r["prompt"] for r in rows("benign_prompts.jsonl")],
               "REPORT-ONLY hp-neighbours": [r["prompt"] for r in rows("hp_neighbor_probes.jsonl")
                                             if r.get("role") == "neighbor"]}  # fmt: skip
    sizes = {"benign": benign, "REPORT-ONLY hp-neighbours": neighbours}
    return {name: rng.sample(texts, min(sizes[name], len(texts))) for name, texts in prompts.items()}


def answer(url: str, prompt: str, tokens: int, terms: list[str] | None) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0}
    if terms:
        body["vllm_xargs"] = xargs(terms, "reader")
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=900)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"] or ""


def answers(url: str, prompts: list[str], tokens: int, terms: list[str] | None) -> list[str]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda p: answer(url, p, tokens, terms), prompts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benign", type=int, default=200, help="benign prompts (seeded sample)")
    parser.add_argument("--neighbours", type=int, default=100, help="Harry Potter neighbour prompts (report-only)")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per answer (quell eval's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="generate again even when the answers are cached")
    parser.add_argument("--examples", type=int, default=8, help="over-blocked answers to print per set")
    args = parser.parse_args()
    prompts = sample(args.benign, args.neighbours, args.seed)
    targets = panel()
    terms = sorted({t for ts in targets.values() for t in ts})
    key = hashlib.sha256(json.dumps([MODEL, args.tokens, prompts, terms]).encode()).hexdigest()[:16]
    cache = CACHE / f"answer-overblocking-{key}.json"
    matcher = TermAutomaton.reader(terms)
    runs: dict[str, dict] = {}
    if cache.is_file() and not args.fresh:
        runs = json.loads(cache.read_text())
        print(f"answers reused from {cache.relative_to(ROOT)}")
    if not runs or any("alone" not in runs[name] for name in prompts):
        with vllm_server(free_port()) as url:
            answer(url, "Hello", 4, None)  # warm-up
            runs = runs or generate(url, prompts, args.tokens, terms)
            ask_alone(url, prompts, runs, args.tokens, terms, matcher)
        CACHE.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(runs))
    check_mask(prompts, runs, terms, matcher)
    # the set keeps its name first: Panel prints only the chosen setting for a set whose name starts with REPORT
    Panel(targets).print_tables({f"{name}, model answers": runs[name]["none"] for name in prompts}, args.examples)


def generate(url: str, prompts: dict[str, list[str]], tokens: int, terms: list[str]) -> dict[str, dict]:
    runs: dict[str, dict] = {}
    for name, texts in prompts.items():
        runs[name] = {"none": answers(url, texts, tokens, None), "plugin": answers(url, texts, tokens, terms)}
        changed = sum(a != b for a, b in zip(runs[name]["none"], runs[name]["plugin"]))
        print(f"{name}: {len(texts)} answers, {changed} changed by the mask", flush=True)
    return runs


def suspects(runs: dict, name: str, matcher: TermAutomaton) -> list[int]:
    """Answers the mask changed although the unmasked answer holds no term."""
    none, plugin = runs[name]["none"], runs[name]["plugin"]
    return [i for i, (a, b) in enumerate(zip(none, plugin)) if a != b and not find_matches(matcher, a)]


def ask_alone(url: str, prompts: dict[str, list[str]], runs: dict, tokens: int, terms: list[str],
              matcher: TermAutomaton) -> None:  # fmt: skip
    """Each suspect once more, one request at a time (no batching), with and without the terms."""
    for name, texts in prompts.items():
        runs[name]["alone"] = {str(i): [answer(url, texts[i], tokens, None), answer(url, texts[i], tokens, terms)]
                               for i in suspects(runs, name, matcher)}  # fmt: skip


def check_mask(prompts: dict[str, list[str]], runs: dict, terms: list[str], matcher: TermAutomaton) -> None:
    """Changed answers vs answers the text matcher flags (every panel term, default contract)."""
    print(f"\nmask check: {len(terms)} panel terms as one term set, default contract (`match: reader`)")
    for name in prompts:
        none, plugin, alone = runs[name]["none"], runs[name]["plugin"], runs[name]["alone"]
        flagged = {i for i, text in enumerate(none) if find_matches(matcher, text)}
        changed = {i for i, (a, b) in enumerate(zip(none, plugin)) if a != b}
        # asked alone, with and without the terms: the same answer means the batch moved a near tie, not the mask
        noise = {int(i) for i, (bare, masked) in alone.items() if bare == masked}
        unexplained = sorted(changed - flagged - noise)
        leaked = [i for i, text in enumerate(plugin) if find_matches(matcher, text)]
        print(f"  {name}: {len(none)} answers; the matcher flags {len(flagged)}; the mask changed {len(changed)} "
              f"(flagged and changed {len(flagged & changed)}, flagged but unchanged {len(flagged - changed)}, "
              f"changed without a match {len(changed - flagged)}: asked alone, {len(noise)} the same with and "
              f"without terms (batching noise), {len(unexplained)} not); masked answers still matching: "
              f"{len(leaked)}")  # fmt: skip
        for i in sorted(flagged)[:4]:
            found = sorted({m.term for m in find_matches(matcher, none[i])})
            print(f"    {found}: {none[i][:100]!r} -> {plugin[i][:100]!r}")
        for i in unexplained[:4]:
            bare, masked = alone[str(i)]
            print(f"    NOT NOISE: alone {bare[:100]!r} -> with terms {masked[:100]!r}")


if __name__ == "__main__":
    main()
