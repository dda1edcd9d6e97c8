"""The concept judge (issue 14, filters.judge) measured: the encoder alone against the encoder plus a judge model,
on the bench's concept targets, and what the judge costs.

    # the packaged SmolLM2-135M on a managed CPU vLLM (takes the vLLM lock: one vLLM per machine)
    HF_HUB_OFFLINE=1 flock /tmp/quell-vllm.lock .venv/bin/python -m bench.judge_eval --managed
    # any OpenAI-compatible server, e.g. a stronger model on a GPU node
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.judge_eval --judge-url http://gpu-node:8000/v1 --judge-model NAME \\
        [--api-key KEY] [--split report|tune|all] [--sample 40] [--band-fpr 0.2,0.0] [--concurrency 8] [--json out]

Per target of bench/semantic_targets.py (`report` targets by default: never used to choose anything), the same texts
as bench/semantic_eval.py (positives with the names removed, per language slice; neighbours; the odd half of the
benign prompts), at most `--sample` of each. Each text goes through the product path: `SemanticGuard.check_batch`
with `judge_band=True` on the policy the bench writes for the target (classifier layer, auto threshold, a judge
with `band_fpr`), then `Judges.resolve` against the judge server. A text counts as flagged when any window is.

Printed per target and slice: recall, neighbour FPR and benign FPR with counts, for the encoder alone (the
classifier at its auto threshold: an uncertain window counts when it reaches the threshold) and for encoder + judge;
how many windows reached the judge (and how many of those the classifier alone would have flagged), the judge's
yes share, time-outs and errors. Then the judge's cost: latency of one window asked alone (p50/p95 over
`--latency-windows` distinct windows, sequential), and the same number of other windows asked concurrently at
`--concurrency` (wall time per window and per batch). The judge's time budget per window is `--timeout-ms`
(default 30 s here: a slow CPU judge must not turn into time-outs that hide its verdicts; time-outs are counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.semantic_eval import DATA, CachedEmbedder, _odd, _rows, _sample, eval_sets
from bench.semantic_targets import TARGETS, EvalTarget
from filters.concept_classifier import ClassifierCache
from filters.embedding import Encoder
from filters.judge import JudgeEndpoint, Judges, Outcome, Verdict
from filters.policy import Policy
from filters.semantic import SemanticGuard, window_spans, window_text

ROOT = Path(__file__).resolve().parents[1]


def judged_policy(target: EvalTarget, band_fpr: tuple[float, float], timeout_ms: int) -> Policy:
    return Policy.model_validate({
        "id": f"judge-{target.id}",
        "targets": [{"id": target.id, "on_concept": "refuse", "concept": {
            "description": target.description, "examples": target.examples,
            "counterexamples": target.counterexamples, "layers": ["classifier"],
            "judge": {"band_fpr": list(band_fpr), "timeout_ms": timeout_ms, "on_timeout": "pass"}}}],
    })  # fmt: skip


def _pair(flags: list[bool]) -> list[int]:
    return [sum(flags), len(flags)]


def _fmt(pair: list[int]) -> str:
    return f"{pair[0] / pair[1]:.3f} ({pair[0]}/{pair[1]})" if pair[1] else "n/a"


async def judge_texts(guard: SemanticGuard, judges: Judges, texts: list[str]) -> tuple[list[bool], list[bool], dict]:
    """(encoder-alone flags, encoder+judge flags, window counts) for `texts`."""
    found = guard.check_batch(texts, direction="output", judge_band=True)
    alone = [any((not d.uncertain) or d.flagged for d in f) for f in found]
    seen: list[Verdict] = []
    judges.observe = seen.append
    resolved = await asyncio.gather(*(judges.resolve(t, f) for t, f in zip(texts, found, strict=True)))
    judges.observe = None
    both = [bool(r) for r in resolved]
    uncertain = [d for f in found for d in f if d.uncertain]
    counts = {
        "windows_to_judge": len(uncertain),
        "of_which_classifier_flagged": sum(d.flagged for d in uncertain),
        "judge_yes": sum(v.outcome is Outcome.YES for v in seen),
        "judge_cached": sum(v.cached for v in seen),
        "judge_timeouts": sum(v.outcome is Outcome.TIMEOUT for v in seen),
        "judge_errors": sum(v.outcome is Outcome.ERROR for v in seen),
        "texts_with_uncertain_windows": sum(any(d.uncertain for d in f) for f in found),
    }
    return alone, both, counts


async def evaluate_target(target: EvalTarget, embedder, judges: Judges, sample: int, benign: list[str],
                          band_fpr: tuple[float, float], timeout_ms: int) -> dict:  # fmt: skip
    guard = SemanticGuard([judged_policy(target, band_fpr, timeout_ms)], embedder, ClassifierCache())
    model = guard.models[0]
    assert model.classifier is not None and model.band is not None
    slices, negatives = eval_sets(target, sample)
    sets = {**{f"recall_{k}": v for k, v in slices.items()}, "fpr_neighbours": negatives.get("neighbours", []),
            "benign_fpr": benign}  # fmt: skip
    row: dict = {"threshold": round(model.classifier.threshold, 4), "band": [round(x, 4) for x in model.band]}
    for name, texts in sets.items():
        if not texts:
            continue
        alone, both, counts = await judge_texts(guard, judges, texts)
        row[name] = {"encoder": _pair(alone), "encoder+judge": _pair(both), **counts}
        print(f"  {target.id:16s} {name:15s} encoder {_fmt(_pair(alone)):20s} +judge {_fmt(_pair(both)):20s} "
              f"windows to judge {counts['windows_to_judge']} (classifier alone flagged "
              f"{counts['of_which_classifier_flagged']}; judge yes {counts['judge_yes']}, timeouts "
              f"{counts['judge_timeouts']}, errors {counts['judge_errors']})", flush=True)  # fmt: skip
    return row


async def judge_latency(judges: Judges, target: EvalTarget, embedder, n: int, concurrency: int) -> dict:
    """One window at a time vs `concurrency` at a time, on 2n distinct windows (no cache hits)."""
    slices, negatives = eval_sets(target, 4 * n)
    texts = [*slices.get("en", []), *negatives.get("neighbours", [])]
    policy = judged_policy(target, (0.2, 0.0), 120_000)
    concept = policy.targets[0].concept
    assert concept is not None
    window = policy.semantic.window
    windows = list(dict.fromkeys(window_text(t, s) for t in texts for s in window_spans(t, window)))[: 2 * n]
    single = judges.client(model=None)
    times = []
    for w in windows[:n]:
        v = await single.ask(concept, w, 120_000)
        times.append(v.seconds)
    started = time.perf_counter()
    verdicts = await asyncio.gather(*(single.ask(concept, w, 120_000) for w in windows[n : 2 * n]))
    wall = time.perf_counter() - started
    return {
        "windows": n, "concurrency": concurrency,
        "single_p50_s": round(statistics.median(times), 3), "single_p95_s": round(sorted(times)[int(0.95 * (n - 1))], 3),
        "batched_wall_s": round(wall, 3), "batched_per_window_s": round(wall / n, 3),
        "batched_p50_s": round(statistics.median(v.seconds for v in verdicts), 3),
        "speedup_per_window": round(statistics.median(times) / (wall / n), 2),
        "errors": sum(v.outcome in (Outcome.TIMEOUT, Outcome.ERROR) for v in verdicts),
    }  # fmt: skip


async def run(args: argparse.Namespace, url: str, key: str | None) -> dict:
    embedder = CachedEmbedder(Encoder(args.encoder).embedder())
    judges = Judges(JudgeEndpoint(url.rstrip("/"), key), args.judge_model, concurrency=args.concurrency)
    benign_all = [r["prompt"] for r in _rows("benign_prompts.jsonl")]
    benign = {odd: _sample([t for t in benign_all if _odd(t) == odd], args.sample, seed=2) for odd in (False, True)}
    targets = [t for t in TARGETS if args.split == "all" or t.split == args.split]
    if args.targets:
        targets = [t for t in targets if t.id in args.targets.split(",")]
    band = tuple(float(x) for x in args.band_fpr.split(","))
    report: dict = {"judge_url": url, "judge_model": args.judge_model or "(the server's first)", "encoder": args.encoder,
                    "split": args.split, "sample": args.sample, "band_fpr": band, "targets": {}}  # fmt: skip
    print(f"judge {url} model {report['judge_model']}; encoder {args.encoder}; split {args.split}; "
          f"at most {args.sample} texts per set; band_fpr {band}", flush=True)  # fmt: skip
    for target in targets:
        report["targets"][target.id] = await evaluate_target(target, embedder, judges, args.sample,
                                                             benign[target.split == "report"],
                                                             band, args.timeout_ms)  # type: ignore[arg-type]  # fmt: skip
        embedder.save()
    if args.latency_windows:
        report["latency"] = await judge_latency(judges, targets[0], embedder, args.latency_windows, args.concurrency)
        print("judge latency:", json.dumps(report["latency"]), flush=True)
    report["judge_calls"] = judges.calls
    await judges.aclose()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge-url", help="OpenAI-compatible base URL ending in /v1")
    parser.add_argument("--judge-model", help="model name (default: the server's first)")
    parser.add_argument("--api-key", default=os.environ.get("QUELL_JUDGE_API_KEY"))
    parser.add_argument("--managed", action="store_true", help="start the packaged model on a managed CPU vLLM")
    parser.add_argument("--split", choices=["report", "tune", "all"], default="report")
    parser.add_argument("--targets", help="only these target ids (comma list)")
    parser.add_argument("--sample", type=int, default=40, help="at most this many texts per set")
    parser.add_argument("--encoder", default=Encoder.E5_SMALL.value, choices=[e.value for e in Encoder])
    parser.add_argument("--band-fpr", default="0.2,0.0", help="the judge band as [wide, narrow] negative shares")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout-ms", type=int, default=30_000)
    parser.add_argument("--latency-windows", type=int, default=16, help="0: skip the latency measurement")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"no evaluation data at {DATA} (set QUELL_EVAL_DATA)")
    if args.managed == bool(args.judge_url):
        raise SystemExit("give exactly one of --judge-url URL or --managed")
    if args.judge_url:
        report = asyncio.run(run(args, args.judge_url, args.api_key))
    else:
        from service.processes import free_port
        from service.settings import Settings
        from service.vllm_process import ManagedVLLM

        with tempfile.TemporaryDirectory() as cache:
            settings = Settings(vllm_port=free_port(), cache_dir=Path(cache),
                                model_dir=ROOT / ".cache/models/SmolLM2-135M-Instruct")  # fmt: skip
            server = ManagedVLLM(settings)
            started = time.perf_counter()
            server.start()
            try:
                server.wait_ready_blocking(600)
                print(f"managed vLLM ready in {time.perf_counter() - started:.1f} s", flush=True)
                key = (getattr(server, "headers", {}) or {}).get("Authorization", "").removeprefix("Bearer ") or None
                report = asyncio.run(run(args, f"{server.url}/v1", key))
            finally:
                server.stop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    json.dump({k: v for k, v in report.items() if k != "targets"}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
