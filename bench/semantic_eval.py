"""Evaluate the semantic layers (issues 4 and 14) on the shared evaluation sets, for each local encoder side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.semantic_eval [--split report|tune|all] [--sample 400]
        [--encoders minilm,e5-small] [--json out.json]
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.semantic_eval --sweep-heads        # tuning targets only
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.semantic_eval --crosslingual       # English anchors, German probes
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.semantic_eval --latency-only

Per concept target (bench/semantic_targets.py: eight examples and six counterexamples each, written by hand):
- positives: the target's probes (question + gold answer, or completion prompt) with the target's `terms` replaced by
  "___", so the surface layer cannot help; in slices by language (`en`, and `de` / `es` where the data has them:
  the examples stay English, so a non-English slice measures whether the encoder carries a concept across languages);
- neighbours: probes about near topics (other franchises, other writers, LOTR/Oz/D&D for Harry Potter), and where a
  German slice exists, German probes about other topics (`neighbours_de`: so "flags German text" cannot pass for
  recall);
- benign: the benign prompts, split in two halves by a hash of the text: the even half for tuning, the odd half for
  reporting (never both).
Each text is cut into the product's windows (2 sentences, overlap 1) and scores its best window. Methods, for each
encoder: `embedding` (the blocklist layer, max cosine), `head-before` (the classifier as it was before issue 14: raw
vectors, C=0.1, veto), `classifier` (the product's classifier now: filters.concept_classifier.DEFAULT_HEAD) and
`either` (both product layers on: flagged when either flags). Thresholds are the product's `auto` ones (FPR 1% on
counterexamples + background); nothing is fitted on the evaluation texts. Reported: AUROC positives vs neighbours and
vs benign; at the auto threshold recall per slice, neighbour FPR and benign FPR with the counts behind each rate; and,
as a diagnostic only, the recall at the threshold where 5% of the neighbours pass (an oracle threshold read off the
evaluation texts: it says what the encoder could separate, not what the product does).

For the product classifier the run also prints the judge band: how many positives, neighbours and benign texts
score between the classifier's auto threshold at BAND_FPR (10%) and at the policy's target FPR, i.e. the windows an
uncertainty-band judge would read, and the most recall a perfect judge could add.

`--sweep-heads` trains every head in HEAD_GRID on the tuning targets only and prints the same numbers per head; that
is how DEFAULT_HEAD was chosen. Embeddings are cached on disk per encoder (.cache/bench-embeddings), so a second run
costs seconds. Then CPU cost per encoder: load time, resident memory added, one window, a batch of 16.
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
from filters.concept_classifier import (
    DEFAULT_BACKGROUND,
    DEFAULT_HEAD,
    PREVIOUS_HEAD,
    ConceptClassifier,
    Head,
    load_background,
)
from filters.embedding import Embedder, Encoder
from filters.embedding_blocklist import EmbeddingBlocklist
from filters.policy import Policy
from filters.semantic import SemanticGuard, window_spans, window_text
from filters.semantic_stream import SemanticStream

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("QUELL_EVAL_DATA", ROOT.parent / "shared" / "eval-data"))
CACHE = ROOT / ".cache" / "bench-embeddings"
FICTION_TOPICS = [
    "The Lord of the Rings", "Harry Potter", "Final Fantasy VII", "Dark Souls (video game)",
    "Tactical role-playing game", "Japanese popular culture", "Star Wars", "Super Mario",
]  # fmt: skip
CV_NAMES = {"baseball": "Baseball", "shakespeare": "William Shakespeare", "star-wars": "Star Wars",
            "super-mario": "Super Mario", "netflix": "Netflix", "austria": "Austria"}  # fmt: skip
RETURN_NAMES = {"glenn-gould": "Glenn Gould", "edgar-allan-poe": "Edgar Allan Poe"}
HEAD_GRID = [Head(center, c, counter) for counter in (True, False) for center in (False, True)
             for c in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)]  # fmt: skip
AIM = {"recall": 0.8, "neighbour_fpr": 0.10, "benign_fpr": 0.01}


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
    texts = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    if len(texts) <= n:
        return texts
    rng = np.random.default_rng(seed)
    return [texts[i] for i in sorted(rng.choice(len(texts), n, replace=False))]


def eval_sets(target: EvalTarget, sample: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({slice: positives with names removed}, {"neighbours": ..., "neighbours_de": ...}) for one target."""
    cv = _rows("concept_probes_conceptvectors.jsonl")
    slices: dict[str, list[str]] = {}
    negatives: dict[str, list[str]] = {}
    if target.id in CV_NAMES:
        name = CV_NAMES[target.id]
        slices["en"] = [_qa(r) for r in cv if r["target"] == name and r["role"] == "forget" and r["lang"] == "en"]
        slices["de"] = [_qa(r) for r in cv if r["target"] == name and r["lang"] == "de"]
        if name in FICTION_TOPICS:
            neighbours = [_qa(r) for r in cv if r["target"] in FICTION_TOPICS and r["target"] != name
                          and r["role"] == "forget" and r["lang"] == "en"]  # fmt: skip
            neighbours += [_qa(r) for r in _rows("hp_neighbor_probes.jsonl") if r["role"] == "neighbor"]
        else:
            neighbours = [_qa(r) for r in cv if r["target"] != name and r["role"] == "forget" and r["lang"] == "en"]
        negatives["neighbours"] = neighbours
        negatives["neighbours_de"] = [_qa(r) for r in cv if r["target"] != name and r["lang"] == "de"]
    elif target.id in RETURN_NAMES:
        name = RETURN_NAMES[target.id]
        people = _rows("person_probes_return.jsonl")
        split = "forget_eval" if target.split == "report" else "retain_eval"
        slices["en"] = [_qa(r) for r in people if r["target"] == name]
        negatives["neighbours"] = [_qa(r) for r in people if r["target"] != name and r["split"] == split]
    elif target.id == "harry-potter":
        hp = _rows("hp_forget_probes.jsonl")
        slices["en"] = [_qa(r) for r in hp if r["lang"] == "en"]
        slices["es"] = [_qa(r) for r in hp if r["lang"] == "es"]
        slices["de"] = [_qa(r) for r in cv if r["target"] == "Harry Potter" and r["lang"] == "de"]
        negatives["neighbours"] = [_qa(r) for r in _rows("hp_neighbor_probes.jsonl") if r["role"] == "neighbor"]
        negatives["neighbours_de"] = [_qa(r) for r in cv if r["target"] != "Harry Potter" and r["lang"] == "de"]
    else:
        raise SystemExit(f"no evaluation data wired for target {target.id!r}")
    slices = {k: [strip_names(t, target.terms) for t in _sample(v, sample)] for k, v in slices.items() if v}
    negatives = {k: _sample(v, sample, seed=1) for k, v in negatives.items() if v}
    return slices, negatives


def policy_for(target: EvalTarget) -> Policy:
    return Policy.model_validate({
        "id": f"eval-{target.id}",
        "applies_to": ["input", "output"],
        "targets": [{"id": target.id, "concept": {
            "description": target.description, "examples": target.examples,
            "counterexamples": target.counterexamples, "layers": ["embedding", "classifier"]}}],
    })  # fmt: skip


class CachedEmbedder(Embedder):
    """An embedder whose vectors are kept on disk by text (bench only: the product never caches by text here)."""

    def __init__(self, inner: Embedder, folder: Path = CACHE):
        self.inner = inner
        self.name = inner.name
        self._path = folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", inner.name) + ".npz")
        self._vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        if self._path.is_file():
            with np.load(self._path) as data:
                self._vectors = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    def encode(self, texts):
        texts = list(texts)
        keys = [self._key(t) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in self._vectors))
        if missing:
            for text, vector in zip(missing, self.inner.encode(missing), strict=True):
                self._vectors[self._key(text)] = vector
            self._dirty = True
        if not texts:
            return self.inner.encode([])
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32)

    def save(self) -> None:
        if not self._dirty:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._vectors)
        np.savez(self._path, keys=np.array(keys), vectors=np.stack([self._vectors[k] for k in keys]))
        self._dirty = False


class WindowScorer:
    """Embeds the product's windows of many texts once; a method's text score is its best window's score."""

    def __init__(self, embedder, window, texts: list[str]):
        owners, windows = [], []
        for i, text in enumerate(texts):
            spans = window_spans(text, window) or [(0, len(text))]
            windows.extend(window_text(text, s) for s in spans)
            owners.extend([i] * len(spans))
        self.owners = np.array(owners, dtype=int)
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


TARGET_FPR = 0.01  # the policy default (concept.target_fpr); --target-fpr changes it for a whole run
BAND_FPR = 0.10
"""The uncertainty band a judge would read: windows the classifier scores between its auto threshold for
BAND_FPR and its auto threshold for TARGET_FPR (both cross-validated on the background, as the product does)."""


def methods(target: EvalTarget, embedder, background: np.ndarray, heads: dict[str, Head] | None = None):
    """name -> (score function over window vectors, auto threshold); `heads` replaces the default classifier set."""
    anchors = embedder.encode([target.description, *target.examples])
    counter = embedder.encode(target.counterexamples)
    negatives = np.vstack([counter, background])
    out = {}
    if heads is None:
        block = EmbeddingBlocklist.build(anchors, negatives, threshold="auto", target_fpr=TARGET_FPR)
        out["embedding"] = (block.scores, block.threshold)
        heads = {"head-before": PREVIOUS_HEAD, "classifier": DEFAULT_HEAD}
    for name, head in heads.items():
        model = ConceptClassifier.train(anchors, counter, background, threshold="auto", target_fpr=TARGET_FPR,
                                        name=f"{target.id}/{name}", head=head)  # fmt: skip
        out[name] = (model.scores, model.threshold)
    return out


def band_edge(target: EvalTarget, embedder, background: np.ndarray) -> float:
    """The default classifier's auto threshold at BAND_FPR: the lower edge of the judge's uncertainty band."""
    anchors = embedder.encode([target.description, *target.examples])
    counter = embedder.encode(target.counterexamples)
    model = ConceptClassifier.train(anchors, counter, background, threshold="auto", target_fpr=BAND_FPR,
                                    name=f"{target.id}/band")  # fmt: skip
    return model.threshold


def _pair(flags: np.ndarray) -> list[int]:
    return [int(flags.sum()), len(flags)]


def score_target(target, embedder, background, benign_scorer, sample, heads=None) -> dict:
    slices, negatives = eval_sets(target, sample)
    window = policy_for(target).semantic.window
    pos_s = {k: WindowScorer(embedder, window, v) for k, v in slices.items()}
    neg_s = {k: WindowScorer(embedder, window, v) for k, v in negatives.items()}
    rows, flags = {}, {}
    for name, (fn, threshold) in methods(target, embedder, background, heads).items():
        p = {k: s.best(fn) for k, s in pos_s.items()}
        n = {k: s.best(fn) for k, s in neg_s.items()}
        b = benign_scorer.best(fn)
        flags[name] = ({k: v >= threshold for k, v in p.items()}, {k: v >= threshold for k, v in n.items()},
                       b >= threshold)  # fmt: skip
        nb = n["neighbours"]
        at5 = np.quantile(nb, 0.95) if len(nb) else np.inf  # oracle: 5% of the neighbours at or above
        rows[name] = {
            "auroc_neighbours": round(auroc(p["en"], nb), 3),
            "auroc_benign": round(auroc(p["en"], b), 3),
            "threshold": round(float(threshold), 4),
            **{f"recall_{k}": _pair(v >= threshold) for k, v in p.items()},
            **{f"fpr_{k}": _pair(v >= threshold) for k, v in n.items()},
            "benign_fpr": _pair(b >= threshold),
            "oracle_recall_at_5pct_neighbours": round(float(np.mean(p["en"] > at5)), 3),
        }
        if name == "classifier" and heads is None:  # what a judge would see, and what a perfect one could add
            low = band_edge(target, embedder, background)
            rows[name]["band"] = {
                "low": round(float(low), 4),
                **{f"pos_{k}": _pair((v >= low) & (v < threshold)) for k, v in p.items()},
                **{f"neg_{k}": _pair((v >= low) & (v < threshold)) for k, v in n.items()},
                "benign": _pair((b >= low) & (b < threshold)),
            }
    if "embedding" in flags and "classifier" in flags:  # both product layers on: flagged when either flags
        e, c = flags["embedding"], flags["classifier"]
        rows["either"] = {
            **{f"recall_{k}": _pair(e[0][k] | c[0][k]) for k in e[0]},
            **{f"fpr_{k}": _pair(e[1][k] | c[1][k]) for k in e[1]},
            "benign_fpr": _pair(e[2] | c[2]),
        }
    return rows


def evaluate(split: str, sample: int, encoders: list[Encoder], heads: dict[str, Head] | None = None) -> dict:
    benign_all = [r["prompt"] for r in _rows("benign_prompts.jsonl")]
    targets = [t for t in TARGETS if split == "all" or t.split == split]
    report: dict = {"targets": {}}
    for encoder in encoders:
        embedder = CachedEmbedder(encoder.embedder())
        background = embedder.encode(load_background(DEFAULT_BACKGROUND))
        benign: dict[bool, WindowScorer] = {}
        for target in targets:
            odd = target.split == "report"
            if odd not in benign:
                texts = [t for t in benign_all if _odd(t) == odd]
                benign[odd] = WindowScorer(embedder, policy_for(target).semantic.window, texts)
            rows = score_target(target, embedder, background, benign[odd], sample, heads)
            report["targets"].setdefault(target.id, {"split": target.split, "encoders": {}})
            report["targets"][target.id]["encoders"][encoder.value] = rows
            embedder.save()
        if heads is None:
            _check_product_path(embedder.inner)
    report["summary"] = summary(report["targets"])
    _print(report)
    return report


CROSSLINGUAL_TUNE = {
    "Amazon Alexa": ["Amazon Alexa", "Alexa", "Amazon", "Amazon Echo", "Echo"],
    "Netflix": ["Netflix"],
    "McDonald's": ["McDonald's", "McDonalds", "McDonald", "Big Mac", "Happy Meal"],
    "The Lord of the Rings": ["The Lord of the Rings", "Lord of the Rings", "Der Herr der Ringe", "Herr der Ringe",
                              "Tolkien", "J.R.R. Tolkien", "J. R. R. Tolkien"],
    "Austria": ["Austria", "Austrian", "Austrians", "Österreich", "Österreichs", "Österreicher", "österreichisch",
                "österreichische", "österreichischen", "österreichischer"],
    "Satan": ["Satan", "Satans", "Satanic", "satanisch", "satanische", "Devil", "Teufel", "Lucifer", "Luzifer"],
    "Valentine's Day": ["Valentine's Day", "Valentines Day", "Valentine's", "Valentine", "Valentinstag",
                        "Valentinstags", "Valentinstages", "St. Valentine"],
}  # fmt: skip
"""ConceptVectors topics with English and German probes that no report target is about (tuning data), with the
names an operator would give as terms (English and German): removed from both sides, as for the other targets."""
CROSSLINGUAL_REPORT = {"Harry Potter", "Star Wars", "Super Mario"}


def crosslingual(encoders: list[Encoder]) -> dict:
    """Does a concept written in English reach German text? Per topic: anchors are its English probes (question +
    answer), positives its German questions, negatives the German questions of every other topic (report topics
    left out). Scores: max cosine to the anchors (the blocklist layer's rule). Reported: AUROC, and top-1 accuracy
    (the German question's nearest topic, by max cosine, is its own). Names are left in the German text, which
    favours an English-only encoder wherever a name is spelt the same in both languages."""
    cv = _rows("concept_probes_conceptvectors.jsonl")
    german = {t: [r["prompt"] for r in cv if r["target"] == t and r["lang"] == "de"]
              for t in {r["target"] for r in cv if r["lang"] == "de"} - CROSSLINGUAL_REPORT}  # fmt: skip
    german.update({t: [strip_names(x, names) for x in german[t]] for t, names in CROSSLINGUAL_TUNE.items()})
    english = {t: [strip_names(_qa(r), names) for r in cv if r["target"] == t and r["lang"] == "en"
                   and r["role"] == "forget"] for t, names in CROSSLINGUAL_TUNE.items()}  # fmt: skip
    out: dict = {}
    for encoder in encoders:
        embedder = CachedEmbedder(encoder.embedder())
        g_vectors = {t: embedder.encode(v) for t, v in german.items()}
        anchors = {t: embedder.encode(v) for t, v in english.items()}
        rows = {}
        for topic in CROSSLINGUAL_TUNE:
            pos = (g_vectors[topic] @ anchors[topic].T).max(axis=1)
            neg = np.concatenate([(v @ anchors[topic].T).max(axis=1) for t, v in g_vectors.items() if t != topic])
            own = np.stack([(g_vectors[topic] @ anchors[t].T).max(axis=1) for t in CROSSLINGUAL_TUNE])
            top1 = float(np.mean(own.argmax(axis=0) == list(CROSSLINGUAL_TUNE).index(topic)))
            rows[topic] = {"auroc": round(auroc(pos, neg), 3), "top1": round(top1, 2), "n_pos": len(pos),
                           "n_neg": len(neg)}  # fmt: skip
        embedder.save()
        mean_auc = float(np.mean([r["auroc"] for r in rows.values()]))
        mean_top1 = float(np.mean([r["top1"] for r in rows.values()]))
        out[encoder.value] = {"topics": rows, "mean_auroc": round(mean_auc, 3), "mean_top1": round(mean_top1, 3)}
        print(f"\ncross-lingual (English anchors -> German probes), {encoder.value}: mean AUROC {mean_auc:.3f}, "
              f"mean top-1 {mean_top1:.2f}")  # fmt: skip
        for topic, r in rows.items():
            print(f"  {topic:24s} AUROC {r['auroc']:.3f}  top-1 {r['top1']:.2f}  ({r['n_pos']} vs {r['n_neg']})")
    return out


def _rate(pair: list[int]) -> float:
    return pair[0] / pair[1] if pair[1] else float("nan")


def _means(targets: dict, encoder: str, head: str, keep) -> tuple[float, float, float]:
    rows = [info["encoders"][encoder][head] for t, info in targets.items() if keep(t)]
    return tuple(float(np.mean([_rate(r[k]) for r in rows])) for k in ("recall_en", "fpr_neighbours", "benign_fpr"))


def pick_head(targets: dict, encoder: str, heads: dict[str, Head], keep=lambda t: True) -> str:
    """The rule that chose DEFAULT_HEAD: the highest mean recall at the auto threshold among heads whose mean
    neighbour FPR <= AIM and mean benign FPR <= AIM; heads within 0.02 of the best recall count as tied, and a tie
    goes to the stronger regularisation (smaller C), then to centring."""
    rates = {name: _means(targets, encoder, name, keep) for name in heads}
    eligible = {n: r for n, r in rates.items() if r[1] <= AIM["neighbour_fpr"] and r[2] <= AIM["benign_fpr"]}
    if not eligible:
        return min(rates, key=lambda n: rates[n][2])
    best = max(r[0] for r in eligible.values())
    tied = [n for n, r in eligible.items() if r[0] >= best - 0.02 - 1e-9]
    return min(tied, key=lambda n: (heads[n].c, not heads[n].center))


def print_head_choice(report: dict, heads: dict[str, Head]) -> dict:
    """The chosen head per encoder on all tuning targets, and leave-one-target-out: the head chosen without a
    target, scored on that target (an honest estimate of what the choice gives on a target it never saw)."""
    targets = report["targets"]
    out = {}
    encoders = list(next(iter(targets.values()))["encoders"])
    for encoder in encoders:
        chosen = pick_head(targets, encoder, heads)
        held = []
        for t in targets:
            name = pick_head(targets, encoder, heads, keep=lambda x, t=t: x != t)
            r = targets[t]["encoders"][encoder][name]
            held.append((t, name, _rate(r["recall_en"]), _rate(r["fpr_neighbours"]), _rate(r["benign_fpr"])))
        mean = [round(float(np.mean([h[i] for h in held])), 3) for i in (2, 3, 4)]
        out[encoder] = {"chosen": chosen, "leave_one_target_out": held, "loto_mean_recall_nfpr_bfpr": mean}
        print(f"\nhead choice, {encoder}: {chosen}; leave-one-target-out mean recall {mean[0]:.3f}, "
              f"neighbour FPR {mean[1]:.3f}, benign FPR {mean[2]:.4f}")  # fmt: skip
        for t, name, rec, nf, bf in held:
            print(f"  without {t:12s} -> {name:24s} on {t}: recall {rec:.2f}  neighbour FPR {nf:.3f}  benign {bf:.4f}")
    return out


def summary(targets: dict) -> dict:
    """Per (encoder, method): mean rates over targets, and on how many targets the aim is met."""
    out: dict = {}
    for info in targets.values():
        for encoder, rows in info["encoders"].items():
            for method, r in rows.items():
                entry = out.setdefault(f"{encoder}/{method}", {"targets": 0, "aim_met": 0, "recall_en": [],
                                                                 "fpr_neighbours": [], "benign_fpr": []})  # fmt: skip
                recall, nfpr, bfpr = _rate(r["recall_en"]), _rate(r["fpr_neighbours"]), _rate(r["benign_fpr"])
                entry["targets"] += 1
                entry["aim_met"] += int(recall >= AIM["recall"] and nfpr <= AIM["neighbour_fpr"]
                                        and bfpr <= AIM["benign_fpr"])  # fmt: skip
                entry["recall_en"].append(recall)
                entry["fpr_neighbours"].append(nfpr)
                entry["benign_fpr"].append(bfpr)
    for entry in out.values():
        for key in ("recall_en", "fpr_neighbours", "benign_fpr"):
            entry[key] = round(float(np.mean(entry[key])), 3)
    return out


def _fmt(pair: list[int]) -> str:
    return f"{_rate(pair):.2f} ({pair[0]}/{pair[1]})"


def _print(report: dict) -> None:
    for target_id, info in report["targets"].items():
        print(f"\n{target_id} [{info['split']}]")
        for encoder, rows in info["encoders"].items():
            for method, r in rows.items():
                recalls = "  ".join(f"{k[7:]} {_fmt(v)}" for k, v in r.items() if k.startswith("recall_"))
                fprs = "  ".join(f"{k[4:].replace('neighbours', 'nb')} {_fmt(v)}" for k, v in r.items()
                                 if k.startswith("fpr_"))  # fmt: skip
                auc = (f"AUROC nb {r['auroc_neighbours']:.3f} ben {r['auroc_benign']:.3f} thr {r['threshold']:.3f} "
                       f"oracle@5%nb {r['oracle_recall_at_5pct_neighbours']:.2f}") if "threshold" in r else ""  # fmt: skip
                print(f"  {encoder:9s} {method:13s} recall {recalls} | FPR {fprs}  benign {_fmt(r['benign_fpr'])}"
                      f"  {auc}")  # fmt: skip
                if "band" in r:
                    band = "  ".join(f"{k} {_fmt(v)}" for k, v in r["band"].items() if k != "low")
                    print(f"  {'':9s} {'judge band':13s} [{r['band']['low']:.3f}, {r['threshold']:.3f}): {band}")
    print("\nsummary (mean over targets of the rates; aim: recall >= 0.8, neighbour FPR <= 0.10, benign FPR <= 0.01)")
    for key, e in report["summary"].items():
        print(f"  {key:28s} recall {e['recall_en']:.3f}  neighbour FPR {e['fpr_neighbours']:.3f}  "
              f"benign FPR {e['benign_fpr']:.4f}  aim met on {e['aim_met']}/{e['targets']} targets")  # fmt: skip


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


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def latency(encoder: Encoder, runs: int = 40) -> dict:
    load_before = os.getloadavg()[0]  # the CPU is shared: say how busy it was
    rss_before = _rss_mib()
    started = time.perf_counter()
    embedder = encoder.embedder()
    embedder.encode(["warm up"])
    load_s = time.perf_counter() - started
    rss_added = _rss_mib() - rss_before
    policies = [policy_for(t) for t in TARGETS if t.split == "report"]
    started = time.perf_counter()
    guard = SemanticGuard(policies, embedder)
    build_s = time.perf_counter() - started
    one = "The farm boy lifted the spaceship out of the swamp with his mind."
    batch = [f"{one} Item {i} of the batch asks about the weather and the train times." for i in range(16)]
    guard.check(one)  # warm up
    singles, batches = [], []
    for _ in range(runs):
        started = time.perf_counter()
        guard.check(one)
        singles.append(time.perf_counter() - started)
    for _ in range(max(5, runs // 8)):
        started = time.perf_counter()
        guard.check_batch(batch)
        batches.append(time.perf_counter() - started)
    response = " ".join(["The weather was mild and the market was busy with people buying bread."] * 12)
    chunks = [response[i : i + 12] for i in range(0, len(response), 12)]
    stream_times = {}
    for mode in ("safe", "fast"):
        started = time.perf_counter()
        stream = SemanticStream(guard, mode=mode)
        for chunk in chunks:
            stream.feed(chunk)
        stream.finish()
        stream_times[mode] = round((time.perf_counter() - started) * 1000, 1)
    result = {
        "encoder": encoder.value,
        "load_s": round(load_s, 2),
        "rss_added_mib": round(rss_added, 1),
        "guard_build_s": round(build_s, 2),
        "targets_loaded": len(guard.models),
        "one_window": _percentiles(singles),
        "batch_of_16": _percentiles(batches),
        "stream_12_sentences_total_ms": stream_times,
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(f"latency {encoder.value}: load {result['load_s']} s (+{result['rss_added_mib']} MiB RSS), "
          f"{result['targets_loaded']} targets built in {result['guard_build_s']} s; one window "
          f"{result['one_window']}, batch of 16 {result['batch_of_16']}, stream of 12 sentences total ms "
          f"{stream_times}; load average {result['load_average_1m_before_after']}")  # fmt: skip
    return result


def main() -> None:
    global TARGET_FPR
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["report", "tune", "all"], default="report")
    parser.add_argument("--sample", type=int, default=400, help="at most this many positives and neighbours")
    parser.add_argument("--encoders", default=",".join(e.value for e in Encoder),
                        help="comma list of " + ", ".join(e.value for e in Encoder))  # fmt: skip
    parser.add_argument("--sweep-heads", action="store_true", help="every head in HEAD_GRID, tuning targets only")
    parser.add_argument("--sweep-c", help="only these C values of HEAD_GRID (comma list)")
    parser.add_argument("--target-fpr", type=float, default=TARGET_FPR, help="the policies' target_fpr")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--latency-only", action="store_true", help="skip the quality numbers")
    parser.add_argument("--crosslingual", action="store_true", help="English anchors vs German probes, tuning topics")
    args = parser.parse_args()
    TARGET_FPR = args.target_fpr
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoders = [Encoder(e.strip()) for e in args.encoders.split(",") if e.strip()]
    if args.latency_only:
        report = {"latency": [latency(e) for e in encoders]}
    elif args.crosslingual:
        report = {"crosslingual": crosslingual(encoders)}
    elif args.sweep_heads:
        wanted = {float(c) for c in args.sweep_c.split(",")} if args.sweep_c else None
        heads = {h.label: h for h in HEAD_GRID if wanted is None or h.c in wanted}
        report = evaluate("tune", args.sample, encoders, heads)
        report["head_choice"] = print_head_choice(report, heads)
    else:
        report = evaluate(args.split, args.sample, encoders)
        report["latency"] = [latency(e) for e in encoders]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
