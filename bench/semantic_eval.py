"""Evaluate the semantic layers (issue 4, "Evaluation") on the shared evaluation sets.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.semantic_eval [--split report|tune|all] [--sample 400] [--json out.json]
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.semantic_eval --latency-only

Per concept target (bench/semantic_targets.py: eight examples and six counterexamples each, written by hand):
- positives: the target's probes (question + gold answer, or completion prompt) with the target's `terms` replaced by
  "___", so the surface layer cannot help;
- neighbours: probes about near topics (other franchises, other writers, LOTR/Oz/D&D for Harry Potter);
- benign: the benign prompts, split in two halves by a hash of the text: the even half for tuning, the odd half for
  reporting (never both).
Each text is cut into the product's windows (2 sentences, overlap 1) and scores its best window. Methods:
`embedding` (the blocklist layer, max cosine), `classifier` (the product's classifier: logistic regression plus
the counterexample veto), `either` (both layers on: flagged when either flags), and two alternatives: `logreg` (no veto) and `margin` (max cosine to the examples minus
max cosine to the counterexamples). Thresholds are the product's `auto` ones (FPR 1% on counterexamples +
background); nothing is fitted on the evaluation texts. Reported: AUROC positives vs neighbours and vs benign, and at
the auto threshold recall, neighbour FPR and benign FPR with the counts behind each rate. Then CPU latency of
`SemanticGuard.check` (one window; batch of 16) and of a streamed response (safe, fast, none).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np

from bench.semantic_targets import TARGETS, EvalTarget
from filters.concept_classifier import DEFAULT_BACKGROUND, ConceptClassifier, load_background, pick_threshold
from filters.embedding import LocalEmbedder
from filters.embedding_blocklist import EmbeddingBlocklist
from filters.policy import Policy
from filters.semantic import SemanticGuard, window_spans, window_text
from filters.semantic_stream import SemanticStream

DATA = Path(os.environ.get("QUELL_EVAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "eval-data"))
FICTION_TOPICS = [
    "The Lord of the Rings", "Harry Potter", "Final Fantasy VII", "Dark Souls (video game)",
    "Tactical role-playing game", "Japanese popular culture", "Star Wars", "Super Mario",
]  # fmt: skip
CV_NAMES = {"baseball": "Baseball", "shakespeare": "William Shakespeare", "star-wars": "Star Wars",
            "super-mario": "Super Mario"}  # fmt: skip
RETURN_NAMES = {"glenn-gould": "Glenn Gould", "edgar-allan-poe": "Edgar Allan Poe"}


def _rows(name: str) -> list[dict]:
    path = DATA / name
    if not path.is_file():
        raise SystemExit(f"evaluation file {path} is missing; set QUELL_EVAL_DATA to the eval-data folder")
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def _odd(text: str) -> bool:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 2 == 1


def strip_names(text: str, terms: list[str]) -> str:
    for term in sorted(terms, key=len, reverse=True):
        text = re.sub(r"\b" + re.escape(term) + r"(?:'s)?\b", "___", text, flags=re.IGNORECASE)
    return text


def _qa(row: dict) -> str:
    answer = row.get("answer")
    return f"{row['prompt']} {answer}" if answer else row["prompt"]


def _sample(texts: list[str], n: int, seed: int = 0) -> list[str]:
    texts = list(dict.fromkeys(texts))
    if len(texts) <= n:
        return texts
    rng = np.random.default_rng(seed)
    return [texts[i] for i in sorted(rng.choice(len(texts), n, replace=False))]


def eval_sets(target: EvalTarget, sample: int) -> tuple[list[str], list[str]]:
    """(positives with names removed, neighbours) for one target."""
    cv = _rows("concept_probes_conceptvectors.jsonl")
    if target.id in CV_NAMES:
        name = CV_NAMES[target.id]
        pos = [_qa(r) for r in cv if r["target"] == name and r["role"] == "forget" and r["lang"] == "en"]
        if name in FICTION_TOPICS:
            neighbours = [_qa(r) for r in cv if r["target"] in FICTION_TOPICS and r["target"] != name
                          and r["role"] == "forget" and r["lang"] == "en"]  # fmt: skip
            neighbours += [_qa(r) for r in _rows("hp_neighbor_probes.jsonl") if r["role"] == "neighbor"]
        else:
            neighbours = [_qa(r) for r in cv if r["target"] != name and r["role"] == "forget" and r["lang"] == "en"]
    elif target.id in RETURN_NAMES:
        name = RETURN_NAMES[target.id]
        people = _rows("person_probes_return.jsonl")
        split = "forget_eval" if target.split == "report" else "retain_eval"
        pos = [_qa(r) for r in people if r["target"] == name]
        neighbours = [_qa(r) for r in people if r["target"] != name and r["split"] == split]
    elif target.id == "harry-potter":
        pos = [_qa(r) for r in _rows("hp_forget_probes.jsonl") if r["lang"] == "en"]
        neighbours = [_qa(r) for r in _rows("hp_neighbor_probes.jsonl") if r["role"] == "neighbor"]
    else:
        raise SystemExit(f"no evaluation data wired for target {target.id!r}")
    pos = [strip_names(t, target.terms) for t in _sample(pos, sample)]
    return pos, _sample(neighbours, sample, seed=1)


def policy_for(target: EvalTarget) -> Policy:
    return Policy.model_validate({
        "id": f"eval-{target.id}",
        "applies_to": ["input", "output"],
        "targets": [{"id": target.id, "concept": {
            "description": target.description, "examples": target.examples,
            "counterexamples": target.counterexamples, "layers": ["embedding", "classifier"]}}],
    })  # fmt: skip


class WindowScorer:
    """Embeds the product's windows of many texts once; a method's text score is its best window's score."""

    def __init__(self, embedder, window, texts: list[str]):
        self.embedder = embedder
        owners, windows = [], []
        for i, text in enumerate(texts):
            spans = window_spans(text, window) or [(0, len(text))]
            windows.extend(window_text(text, s) for s in spans)
            owners.extend([i] * len(spans))
        self.owners = np.array(owners)
        self.n = len(texts)
        self.vectors = embedder.encode(windows)

    def best(self, score_fn) -> np.ndarray:
        scores = score_fn(self.vectors)
        out = np.full(self.n, -np.inf)
        np.maximum.at(out, self.owners, scores)
        return out


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability a random positive outscores a random negative (ties count half)."""
    pos, neg = np.asarray(pos), np.asarray(neg)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def methods(target: EvalTarget, embedder, background: np.ndarray):
    anchors = embedder.encode([target.description, *target.examples])
    counter = embedder.encode(target.counterexamples)
    negatives = np.vstack([counter, background])
    block = EmbeddingBlocklist.build(anchors, negatives, threshold="auto", target_fpr=0.01)
    product = ConceptClassifier.train(anchors, counter, background, threshold="auto", target_fpr=0.01, name=target.id)
    plain = ConceptClassifier.train(anchors, counter, background, threshold="auto", target_fpr=0.01,
                                    name=target.id + "/no-veto", veto=False)  # fmt: skip

    def margin(v):
        return (v @ anchors.T).max(1) - (v @ counter.T).max(1)

    margin_threshold = pick_threshold(margin(negatives[len(counter):]), 0.01)  # background only: counter score 0
    return {
        "embedding": (block.scores, block.threshold),
        "classifier": (product.scores, product.threshold),
        "logreg": (plain.scores, plain.threshold),
        "margin": (margin, margin_threshold),
    }


def evaluate(split: str, sample: int) -> dict:
    embedder = LocalEmbedder()
    background = embedder.encode(load_background(DEFAULT_BACKGROUND))
    benign_all = [r["prompt"] for r in _rows("benign_prompts.jsonl")]
    report = {}
    benign = {True: None, False: None}
    for target in TARGETS:
        if split != "all" and target.split != split:
            continue
        odd = target.split == "report"
        if benign[odd] is None:
            texts = [t for t in benign_all if _odd(t) == odd]
            benign[odd] = (len(texts), WindowScorer(embedder, policy_for(target).semantic.window, texts))
        n_benign, benign_scorer = benign[odd]
        pos, neigh = eval_sets(target, sample)
        window = policy_for(target).semantic.window
        pos_s, neigh_s = WindowScorer(embedder, window, pos), WindowScorer(embedder, window, neigh)
        rows = {}
        flags = {}
        for name, (fn, threshold) in methods(target, embedder, background).items():
            p, n, b = pos_s.best(fn), neigh_s.best(fn), benign_scorer.best(fn)
            flags[name] = (p >= threshold, n >= threshold, b >= threshold)
            rows[name] = {
                "auroc_neighbours": round(auroc(p, n), 3),
                "auroc_benign": round(auroc(p, b), 3),
                "threshold": round(threshold, 4),
                "recall": [int((p >= threshold).sum()), len(p)],
                "neighbour_fpr": [int((n >= threshold).sum()), len(n)],
                "benign_fpr": [int((b >= threshold).sum()), n_benign],
            }
        # both product layers enabled: a text is flagged when either layer flags it (no AUROC: two thresholds)
        p, n, b = (flags["embedding"][i] | flags["classifier"][i] for i in range(3))
        rows["either"] = {
            "auroc_neighbours": float("nan"),
            "auroc_benign": float("nan"),
            "threshold": float("nan"),
            "recall": [int(p.sum()), len(p)],
            "neighbour_fpr": [int(n.sum()), len(n)],
            "benign_fpr": [int(b.sum()), n_benign],
        }
        report[target.id] = {"split": target.split, "methods": rows}
        _print_target(target.id, target.split, rows)
    _check_product_path(embedder)
    report["latency"] = latency(embedder)
    return report


def _rate(pair: list[int]) -> str:
    return f"{pair[0] / pair[1]:.3f} ({pair[0]}/{pair[1]})"


def _print_target(target_id: str, split: str, rows: dict) -> None:
    print(f"\n{target_id} [{split}]")
    print(f"  {'method':11s} {'AUROC nb':>8s} {'AUROC ben':>9s} {'thresh':>7s}  {'recall':>16s} "
          f"{'neighbour FPR':>18s} {'benign FPR':>18s}")  # fmt: skip
    for name, r in rows.items():
        print(f"  {name:11s} {r['auroc_neighbours']:8.3f} {r['auroc_benign']:9.3f} {r['threshold']:7.3f}  "
              f"{_rate(r['recall']):>16s} {_rate(r['neighbour_fpr']):>18s} {_rate(r['benign_fpr']):>18s}")  # fmt: skip


def _check_product_path(embedder) -> None:
    """The bench's window scoring must equal what SemanticGuard reports, or the numbers measure something else."""
    target = next(t for t in TARGETS if t.split == "report")
    guard = SemanticGuard([policy_for(target)], embedder)
    texts = [target.examples[0] + " It was a long day. " + target.counterexamples[0], "How do I bake bread?"]
    m = methods(target, embedder, embedder.encode(load_background(DEFAULT_BACKGROUND)))
    scorer = WindowScorer(embedder, policy_for(target).semantic.window, texts)
    for verdicts, i in zip(guard.scores(texts), range(len(texts)), strict=True):
        for d in verdicts:
            expected = scorer.best(m[d.layer][0])[i]
            if abs(expected - d.score) > 1e-4:
                raise SystemExit(f"bench and SemanticGuard disagree on {d.layer}: {expected} vs {d.score}")


def _percentiles(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    return {"median_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2)}


def latency(embedder, runs: int = 60) -> dict:
    load_before = os.getloadavg()[0]  # the CPU is shared: say how busy it was
    policies = [policy_for(t) for t in TARGETS if t.split == "report"]
    guard = SemanticGuard(policies, embedder)
    one = "The farm boy lifted the spaceship out of the swamp with his mind."
    batch = [f"{one} Item {i} of the batch asks about the weather and the train times." for i in range(16)]
    guard.check(one)  # warm up
    singles, batches = [], []
    for _ in range(runs):
        started = time.perf_counter()
        guard.check(one)
        singles.append(time.perf_counter() - started)
    for _ in range(max(10, runs // 4)):
        started = time.perf_counter()
        guard.check_batch(batch)
        batches.append(time.perf_counter() - started)
    response = " ".join(["The weather was mild and the market was busy with people buying bread."] * 12)
    chunks = [response[i : i + 12] for i in range(0, len(response), 12)]
    stream_times = {}
    for mode in ("safe", "fast", "none"):
        started = time.perf_counter()
        if mode != "none":
            stream = SemanticStream(guard, mode=mode)
            for chunk in chunks:
                stream.feed(chunk)
            stream.finish()
        stream_times[mode] = round((time.perf_counter() - started) * 1000, 1)
    result = {
        "targets_loaded": len(guard.models),
        "one_window": _percentiles(singles),
        "batch_of_16": _percentiles(batches),
        "stream_12_sentences_total_ms": stream_times,
        "torch_threads": _torch_threads(),
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(f"\nlatency ({result['targets_loaded']} targets, both layers, {result['torch_threads']} torch threads, "
          f"load average {result['load_average_1m_before_after']}): "
          f"one window {result['one_window']}, batch of 16 {result['batch_of_16']}, "
          f"stream of 12 sentences in 12-char chunks, total ms {stream_times}")  # fmt: skip
    return result


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["report", "tune", "all"], default="report")
    parser.add_argument("--sample", type=int, default=400, help="at most this many positives and neighbours")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--latency-only", action="store_true", help="skip the quality numbers")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.latency_only:
        report = {"latency": latency(LocalEmbedder())}
    else:
        report = evaluate(args.split, args.sample)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
