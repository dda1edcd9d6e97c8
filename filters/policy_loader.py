"""Load policy files and report every problem with its file, line and field.

A directory load never half-succeeds silently: each file is either a valid `Policy` or a list of `PolicyIssue`s,
and the caller decides what to keep (the gateway keeps the last good version of a broken file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from filters.policy import Policy
from filters.protected_text import CorpusError, cached_index

POLICY_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class PolicyIssue:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyError(ValueError):
    """A policy file (or text) is invalid; `issues` says where and why."""

    def __init__(self, issues: Sequence[PolicyIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass
class DirectoryLoad:
    """The outcome of loading a directory: good policies by id, and the problems of the files that failed."""

    policies: dict[str, Policy] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # policy id -> file
    errors: dict[Path, list[PolicyIssue]] = field(default_factory=dict)


def parse_policy(text: str, source: str = "<text>", base_dir: Path | None = None) -> Policy:
    """Parse and validate one policy from YAML text; raises PolicyError naming `source`, line and field.
    `base_dir` is the policy's folder: protected-text sources are read relative to it."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError([PolicyIssue(source, line, "", f"invalid YAML: {problem}")]) from None
    if not isinstance(data, dict):
        raise PolicyError([PolicyIssue(source, 1, "", "a policy file must be a YAML mapping (id, targets, ...)")])
    try:
        return Policy.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            issues.append(PolicyIssue(source, _line_of(node, loc), _dotted(loc), _message(err)))
        raise PolicyError(issues) from None


def load_policy_file(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([PolicyIssue(str(path), None, "", f"cannot read: {exc}")]) from None
    policy = parse_policy(text, str(path), path.parent)
    _build_indexes(policy, str(path))
    return policy


def _build_indexes(policy: Policy, source: str) -> None:
    """Build (or find on disk) each protected-text index now, in the loading thread: a reload keeps the last good
    policy serving while a new corpus is indexed, and the first request never waits for it."""
    for i, target in enumerate(policy.targets):
        if target.protected_text is None:
            continue
        corpus = target.protected_text.corpus
        try:
            cached_index(corpus.digest, corpus=corpus)
        except (OSError, MemoryError, CorpusError) as exc:
            raise PolicyError(
                [
                    PolicyIssue(
                        source,
                        None,
                        f"targets[{i}].protected_text",
                        f"cannot build the index of {len(corpus.files)} file(s): {exc}",
                    )
                ]
            ) from None


def policy_files(directory: Path) -> list[Path]:
    """Policy files in a directory, in a stable order; hidden files (editor swap files, ..data links) skipped."""
    return sorted(
        p for p in directory.iterdir() if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def load_policy_dir(directory: Path) -> DirectoryLoad:
    result = DirectoryLoad()
    if not directory.is_dir():
        result.errors[directory] = [PolicyIssue(str(directory), None, "", "policies directory does not exist")]
        return result
    for path in policy_files(directory):
        try:
            policy = load_policy_file(path)
        except PolicyError as exc:
            result.errors[path] = exc.issues
            continue
        if policy.id in result.policies:
            other = result.files[policy.id]
            result.errors[path] = [
                PolicyIssue(str(path), None, "id", f"policy id {policy.id!r} is also used by {other}")
            ]
            continue
        result.policies[policy.id] = policy
        result.files[policy.id] = path
    return result


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: ErrorDetails) -> str:
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling)"
    return msg


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at `loc`, or of the nearest ancestor that exists."""
    if node is None:
        return None
    line: int = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if key.value == part:
                    node = value
                    line = key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
