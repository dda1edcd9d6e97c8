"""Over-blocking of each match mode on text that names no target: how the reader contract's length threshold was chosen.

For a panel of targets (the product's example policies, ConceptVectors concepts, RETURN people) and texts that are
not about them (benign prompts, ConceptVectors `unrelated` rows, RETURN `retain_eval` rows), count the texts a
target's terms match under a mode while they do not match it between word edges (`word`: a real mention, not
over-blocking). A text changed by a `prefix`/`inside`/`reader` match that `word` does not make is over-blocked.
Rates are per target (the chance one policy target changes one text), averaged over the panel, and for the shipped
example policies as whole policies.

Only the tuning sets of ../shared/eval-data are read by default (its README: ConceptVectors, RETURN, benign); the
Harry Potter neighbour set is report-only and read only with `--report` (never to choose a threshold).

    python -m bench.term_overblocking            # tuning sets: choose INSIDE_MIN_CHARS here
    python -m bench.term_overblocking --report   # also the report-only Harry Potter neighbours, at the chosen setting
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from filters.automaton import INSIDE_MIN_CHARS, TermAutomaton
from filters.normalize import word_chars
from filters.policy_loader import load_policy_file
from filters.text_matcher import find_matches

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "eval-data"
THRESHOLDS = (5, 6, 7, 8, 9, 10, 12, 99)
"""`reader` with `inside` from this many word characters (99: never inside, i.e. `prefix`)."""


def rows(name: str) -> list[dict]:
    path = DATA / name
    if not path.is_file():
        raise SystemExit(f"{path} not found: the evaluation data lives in ../shared/eval-data (see its README)")
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def _text(row: dict) -> str:
    return "\n".join(str(row.get(k) or "") for k in ("prompt", "answer"))


def panel() -> dict[str, list[str]]:
    """target id -> terms."""
    targets: dict[str, list[str]] = {}
    for name in ("spiderman.yaml", "examples/harry-potter.yaml"):
        policy = load_policy_file(ROOT / "policies" / name)
        for target in policy.targets:
            targets[f"policy:{policy.id}/{target.id}"] = list(target.terms)
    for row in rows("concept_probes_conceptvectors.jsonl"):
        if row.get("target"):
            targets.setdefault(f"concept:{row['target']}", [row["target"]])
    for row in rows("person_probes_return.jsonl"):
        name = (row.get("target") or "").split(",")[0].strip()
        if name:
            targets.setdefault(f"person:{name}", [name])
    return {k: [t for t in v if len(word_chars(t)) >= 3] for k, v in targets.items() if v}


def text_sets(report: bool) -> dict[str, list[str]]:
    sets = {
        "benign": [r["prompt"] for r in rows("benign_prompts.jsonl")],
        "conceptvectors-unrelated": [_text(r) for r in rows("concept_probes_conceptvectors.jsonl")
                                     if r.get("role") == "unrelated"],
        "return-retain": [_text(r) for r in rows("person_probes_return.jsonl") if r.get("split") == "retain_eval"],
    }  # fmt: skip
    if report:
        sets["REPORT-ONLY hp-neighbours"] = [_text(r) for r in rows("hp_neighbor_probes.jsonl")]
    return sets


def hits(automaton: TermAutomaton, term_target: dict[str, set[str]], texts: list[str]) -> list[set[tuple[str, str]]]:
    """Per text: the (target, term) pairs matched."""
    out = []
    for text in texts:
        found = set()
        for m in find_matches(automaton, text):
            for target in term_target[word_chars(m.term)]:
                found.add((target, m.term))
        out.append(found)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="also the report-only Harry Potter neighbour set")
    parser.add_argument("--examples", type=int, default=12, help="over-blocked texts to print per set")
    args = parser.parse_args()
    Panel(panel()).print_tables(text_sets(args.report), args.examples)


class Panel:
    """The panel's terms compiled once per mode; `print_tables` counts over-blocked texts per mode and threshold."""

    def __init__(self, targets: dict[str, list[str]]) -> None:
        self.targets = targets
        self.term_target: dict[str, set[str]] = defaultdict(set)
        for target, terms in targets.items():
            for term in terms:
                self.term_target[word_chars(term)].add(target)
        terms = sorted({t for ts in targets.values() for t in ts})
        self.length = {t: len(word_chars(t)) for t in terms}
        self.automata = {"word": TermAutomaton(terms), "prefix": TermAutomaton(prefix=terms),
                         "inside": TermAutomaton(inside=terms)}  # fmt: skip
        self.policies = [t for t in targets if t.startswith("policy:")]
        print(f"panel: {len(targets)} targets, {len(terms)} terms; current INSIDE_MIN_CHARS = {INSIDE_MIN_CHARS}")

    def print_tables(self, sets: dict[str, list[str]], examples: int = 12) -> None:
        for name, texts in sets.items():
            thresholds = (
                ("word", 99, INSIDE_MIN_CHARS) if name.startswith("REPORT") else ("word", *THRESHOLDS, "inside")
            )
            self._table(name, texts, thresholds, examples)

    def _table(self, name: str, texts: list[str], thresholds: tuple, examples_max: int) -> None:
        targets, policies, long_term = self.targets, self.policies, self.length
        by_mode = {mode: hits(a, self.term_target, texts) for mode, a in self.automata.items()}
        print(f"\n== {name}: {len(texts)} texts")
        print(
            f"{'mode':<14}{'per-target rate':>18}{'texts hit by any':>18}"
            + "".join(f"{p.split('/')[0][7:]:>24}" for p in policies)
        )
        chosen_examples: list = []
        for threshold in thresholds:  # report-only sets: the chosen setting and its neighbours in mode only, no sweep
            over_by_target: dict[str, int] = defaultdict(int)
            any_hit = 0
            examples = []
            for i, text in enumerate(texts):
                word = {tg for tg, _ in by_mode["word"][i]}
                if threshold == "word":
                    got = word
                    over = set()
                else:
                    if threshold == "inside":
                        pairs = by_mode["inside"][i]
                    else:
                        pairs = {p for p in by_mode["prefix"][i] if long_term[p[1]] < threshold}
                        pairs |= {p for p in by_mode["inside"][i] if long_term[p[1]] >= threshold}
                    got = {tg for tg, _ in pairs}
                    over = got - word
                    if over and len(examples) < examples_max:
                        examples.append((sorted(p for p in pairs if p[0] in over), text))
                for tg in over if threshold != "word" else got:
                    over_by_target[tg] += 1
                any_hit += bool(over if threshold != "word" else got)
            label = "word (hits)" if threshold == "word" else ("prefix" if threshold == 99 else
                                                               ("inside (all)" if threshold == "inside" else f"reader>={threshold}"))  # fmt: skip
            per_target = sum(over_by_target.values()) / (len(targets) * len(texts))
            cells = "".join(
                f"{over_by_target.get(p, 0):>12}/{len(texts):<5} {100 * over_by_target.get(p, 0) / len(texts):4.1f}%"
                for p in policies
            )
            print(f"{label:<14}{100 * per_target:>17.4f}%{any_hit:>10}/{len(texts):<7}{cells}")
            if threshold == INSIDE_MIN_CHARS:
                chosen_examples = examples
        for pairs, text in chosen_examples:
            print(f"   reader>={INSIDE_MIN_CHARS} over-blocks {pairs[:3]}: {text[:150]!r}")


if __name__ == "__main__":
    main()
