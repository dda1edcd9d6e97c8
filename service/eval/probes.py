"""Read the evaluation sets (../shared/eval-data JSONL) into `Probe`s, and pick a stratified sample.

Every row of those files has a `prompt` and a `source`; what a leak looks like depends on the file:
- `answer` (QA and trivia: "Hedwig"), optional `distractor` (2-choice trivia; ignored: probes are asked open);
- `references` (completion probes: words a familiar completion uses, e.g. ["Ron", "Hermione", "wand"]);
- `reference` (verbatim sets: the true continuation of a book or article prefix);
- `role` / `split` (forget, unrelated, neighbor, boundary, forget_eval, retain_eval), `lang`, `probe_type` or
  `category` (benign prompts), `target`.
A row becomes a probe (should not leak), a neighbour (should not be blocked) or benign (should not be blocked). In
a probes file, rows whose role says they are not the target (unrelated, neighbor, boundary, retain_eval) are
neighbours. Ids are `<file stem>:<line number>`, stable across runs, so `--resume` can skip what is done.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Group = Literal["probe", "neighbor", "benign"]
NOT_TARGET_ROLES = frozenset({"unrelated", "neighbor", "boundary", "retain_eval"})
COMPLETION_MARKERS = ("completion", "continuation")
"""A probe type naming one of these is the start of a text to continue (asked as "Continue this text: ...")."""


class ProbeFileError(ValueError):
    """A JSONL file that cannot be read as probes; the message names the file and line."""


@dataclass(frozen=True)
class Probe:
    id: str
    group: Group
    prompt: str
    answers: tuple[str, ...]  # what counts as the answer reaching the user (any of them)
    probe_type: str
    lang: str
    role: str
    target: str | None = None
    source: str = ""

    @property
    def is_completion(self) -> bool:
        return any(marker in self.probe_type for marker in COMPLETION_MARKERS)

    def user_message(self, prompt: str | None = None) -> str:
        """The chat message sent for this probe (completion probes are asked to be continued)."""
        text = self.prompt if prompt is None else prompt
        if self.probe_type == "name_cloze":
            return f"Fill in [MASK] with the right name and say the name: {text}"
        if self.is_completion:
            return f"Continue this text: {text}"
        return text


def _answers(row: dict) -> tuple[str, ...]:
    out: list[str] = []
    if isinstance(row.get("answer"), str) and row["answer"].strip():
        out.append(row["answer"].strip())
    refs = row.get("references")
    if isinstance(refs, list):
        out += [r.strip() for r in refs if isinstance(r, str) and r.strip()]
    if isinstance(row.get("reference"), str) and row["reference"].strip():
        out.append(row["reference"].strip())
    return tuple(dict.fromkeys(out))


def _family(row: dict) -> str:
    """Where a benign prompt comes from (mt_bench, xstest, tofu, ...): its `source` folder. Benign rows carry a
    `category` (hundreds of them, e.g. self-instruct app names), too fine to stratify a sample by."""
    parts = str(row.get("source") or "").split("/")
    family = parts[1] if parts[0] == "benign" and len(parts) > 2 else parts[0]
    return f"benign:{family}" if family else "benign"


def _group(row: dict, default: Group) -> Group:
    role = str(row.get("role") or row.get("split") or "")
    if default == "probe" and role in NOT_TARGET_ROLES:
        return "neighbor"
    return default


def read_probes(path: Path, default: Group, target: str | None = None) -> list[Probe]:
    """Every usable row of a JSONL file. `target`: keep only rows whose `target` (or `work`) is that one."""
    probes: list[Probe] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ProbeFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeFileError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ProbeFileError(f"{path}:{lineno}: expected an object with a non-empty string 'prompt'")
        row_target = row.get("target") if isinstance(row.get("target"), str) else row.get("work")
        if target is not None and str(row_target or "").casefold() != target.casefold():
            continue
        group = _group(row, default)
        role = str(row.get("role") or row.get("split") or ("benign" if default == "benign" else "forget"))
        probe_type = str(row.get("probe_type") or (_family(row) if default == "benign" else default))
        probes.append(Probe(id=f"{path.stem}:{lineno}", group=group, prompt=row["prompt"], answers=_answers(row),
                            probe_type=probe_type, lang=str(row.get("lang") or "en"), role=role,
                            target=row_target, source=str(row.get("source", ""))))  # fmt: skip
    return probes


def report_half(probes: list[Probe]) -> list[Probe]:
    """The benign prompts are a tuning set; the half with an odd sha256 of the prompt is kept for reporting
    (the same split as bench/semantic_eval.py)."""
    return [p for p in probes if int(hashlib.sha256(p.prompt.encode()).hexdigest(), 16) % 2 == 1]


def stratified(probes: list[Probe], limit: int | None, seed: int = 0) -> list[Probe]:
    """At most `limit` probes, taken round-robin over (group, role, probe type, language) strata, each stratum in
    a seeded shuffle: a small limit still covers every kind of probe. None: all of them, in file order."""
    if limit is None or limit >= len(probes):
        return list(probes)
    strata: dict[tuple, list[Probe]] = defaultdict(list)
    for p in probes:
        strata[(p.group, p.role, p.probe_type, p.lang)].append(p)
    rng = random.Random(seed)
    queues = []
    for key in sorted(strata):
        rows = strata[key][:]
        rng.shuffle(rows)
        queues.append(rows)
    picked: list[Probe] = []
    while len(picked) < limit:
        for rows in queues:
            if rows and len(picked) < limit:
                picked.append(rows.pop())
    return picked
