from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from filters.policy_loader import PolicyError, load_policy_dir, load_policy_file, parse_policy
from service.cli import app
from service.policy_registry import PolicyRegistry
from tests.procs import ROOT

QUELL = str(Path(sys.executable).parent / "quell")


def quell(*args: str, input: str | None = None, columns: int = 200) -> Result:
    """`quell ARGS` in this process (a subprocess costs a second of imports each); one test runs the installed
    command itself."""
    return CliRunner(env={"COLUMNS": str(columns)}).invoke(app, list(args), input=input)


GOOD = """\
id: demo
targets:
  - id: hero
    terms: [Spider-Man]
"""


def test_shipped_policy_is_valid() -> None:
    policy = load_policy_file(ROOT / "policies" / "spiderman.yaml")
    assert policy.default and policy.targets[0].id == "spider-man"


def test_version_is_content_hash_not_formatting() -> None:
    a = parse_policy(GOOD)
    b = parse_policy("# comment\nid: demo\ntargets: [{id: hero, terms: ['Spider-Man']}]\n")
    c = parse_policy(GOOD.replace("Spider-Man", "Spiderman"))
    assert a.version == b.version
    assert a.version != c.version
    assert a.ref == f"demo@{a.version}" and len(a.digest) == 64


@pytest.mark.parametrize(
    ("text", "line", "field", "fragment"),
    [
        ("id: x\ntargets:\n  - id: a\n    terms: [ok1, '--']\n", 4, "targets[0].terms", "no letters or digits"),
        ("id: x\ntargets:\n  - id: a\n    terms: [AI]\n", 3, "targets[0]", "allow_short"),
        ("id: x\ntargets:\n  - id: a\n    terms: [abc]\n    on_surface: zap\n", 5, "targets[0].on_surface", "'mask'"),
        ("id: x\ntargets:\n  - id: a\n    terms: [abc]\n    bogus: 1\n", 5, "targets[0].bogus", "unknown field"),
        ("id: Bad Id\ntargets:\n  - id: a\n    terms: [abc]\n", 1, "id", "pattern"),
        ("id: x\ntargets: []\n", 2, "targets", "at least 1"),
        ("id: x\ntargets:\n  - id: a\n", 3, "targets[0]", "needs terms, a concept"),
        ("id: x\ntargets:\n  - {id: a, terms: [abc]}\n  - {id: a, terms: [def]}\n", 2, "targets", "appears twice"),
        ("id: x\ntargets: [\n", 3, "", "invalid YAML"),
    ],
)
def test_errors_name_file_line_and_field(text: str, line: int, field: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    issue = info.value.issues[0]
    assert (issue.file, issue.line, issue.field) == ("p.yaml", line, field)
    assert fragment in issue.message


def test_allow_short_lets_short_terms_in() -> None:
    policy = parse_policy("id: x\ntargets:\n  - id: a\n    terms: [AI]\n    allow_short: true\n")
    assert policy.targets[0].terms == ["AI"]


def test_directory_load_reports_broken_files_and_duplicate_ids(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)  # same id as a.yaml
    (tmp_path / "c.yml").write_text("id: [\n")
    (tmp_path / ".swap.yaml").write_text("not: a policy")
    result = load_policy_dir(tmp_path)
    assert list(result.policies) == ["demo"]
    assert {p.name for p in result.errors} == {"b.yaml", "c.yml"}


def test_registry_keeps_last_good_version_of_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(GOOD)
    registry = PolicyRegistry(tmp_path)
    good = registry.reload().policies["demo"].policy
    path.write_text(GOOD + "    on_surface: nonsense\n")
    snapshot = registry.reload()
    assert snapshot.policies["demo"].policy.digest == good.digest
    assert path in snapshot.errors
    path.write_text(GOOD.replace("Spider-Man", "Spidey"))
    assert registry.reload().policies["demo"].policy.targets[0].terms == ["Spidey"]


def test_cli_validate_ok_and_errors(tmp_path: Path) -> None:
    ok = subprocess.run(  # the installed console script, once
        [QUELL, "policy", "validate", str(ROOT / "policies")], capture_output=True, check=False, text=True
    )
    assert ok.returncode == 0 and "OK" in ok.stdout and "spiderman@" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\ntargets:\n  - id: a\n    terms: [abc]\n    on_surface: zap\n")
    res = quell("policy", "validate", str(bad), columns=60)
    assert res.exit_code == 1
    # One line per error, however long the path and whatever the terminal width: grep and editors can jump to it.
    (line,) = res.stdout.splitlines()
    assert line.startswith(f"ERROR {bad}:5: targets[0].on_surface: Input should be 'mask'"), line
    assert quell("policy", "validate", str(tmp_path / "nope")).exit_code == 2


def test_cli_policy_test_exit_codes_and_spans() -> None:
    policy = str(ROOT / "policies" / "spiderman.yaml")
    fired = quell("policy", "test", policy, "I met s.p.i.d.e.r.m.a.n yesterday")
    assert fired.exit_code == 1 and "6-23" in fired.stdout and "spider-man" in fired.stdout
    quiet = quell("policy", "test", policy, input="A garden spider spun its web.")
    assert quiet.exit_code == 0 and "nothing fired" in quiet.stdout


def test_cli_policy_test_reads_like_a_person() -> None:
    """The shipped policy uses the default (reader) contract: glued starts, case changes and leetspeak fire."""
    policy = str(ROOT / "policies" / "spiderman.yaml")
    for text in ("Go #TeamSpiderman!", "xXSp1derM4nXx", "Spidermanizzato", "$pidey rules"):
        res = quell("policy", "test", policy, text)
        assert res.exit_code == 1 and "spider-man" in res.stdout, (text, res.stdout)
    quiet = quell("policy", "test", policy, input="In 1154 the spider crawled; the man paid $300.")
    assert quiet.exit_code == 0 and "nothing fired" in quiet.stdout


def test_match_mode_errors_name_the_field() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy("id: x\ntargets:\n  - id: a\n    terms: [abc]\n    match: suffix\n", "p.yaml")
    issue = info.value.issues[0]
    assert (issue.file, issue.line, issue.field) == ("p.yaml", 5, "targets[0].match")
    assert all(mode in issue.message for mode in ("'reader'", "'word'", "'prefix'", "'inside'"))


def test_cli_policy_list_flags_broken_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text("id: b\ntargets: []\n")
    res = quell("policy", "list", str(tmp_path))
    assert res.exit_code == 1 and "demo" in res.stdout and "b.yaml:2: targets" in res.stdout


def test_cli_policy_test_semantic_layers() -> None:
    policy = str(ROOT / "policies" / "spiderman.yaml")
    text = "The web-slinger from Queens swung between skyscrapers after a radioactive spider bit him."
    res = quell("policy", "test", "--semantic", policy, text)
    assert res.exit_code == 1 and "classifier" in res.stdout, res.output
