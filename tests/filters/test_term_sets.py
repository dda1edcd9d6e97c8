"""Large term sets go to the plugin by content hash (filters.term_sets): written once, atomically, read back by the
plugin's own parser; a missing, altered or malformed set is refused (the request fails closed, never unmasked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from filters.policy_loader import parse_policy
from filters.surface import SurfaceLayer
from filters.term_sets import SUBDIR, TERM_SET_KEY, by_hash, resolve, save_term_set
from filters.vllm_plugin import parse_facts, parse_terms

SMALL = {"quell_terms": ["Spider-Man", "Peter Parker"], "quell_protected": ["ab" * 32]}


@pytest.fixture(autouse=True)
def index_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QUELL_INDEX_DIR", str(tmp_path / "indexes"))
    return tmp_path / "indexes"


def _many(n: int) -> list[str]:
    return [f"Zorblax{i:05d} Quintarian" for i in range(n)]


def test_small_sets_stay_inline_large_ones_go_by_hash(index_dir: Path) -> None:
    assert by_hash(SMALL) == SMALL and not (index_dir / SUBDIR).exists()
    large = {"quell_terms": _many(4000), "quell_prefix_terms": ["Spidey"], "quell_protected": ["ab" * 32]}
    sent = by_hash(large)
    assert set(sent) == {TERM_SET_KEY, "quell_protected"} and sent["quell_protected"] == ["ab" * 32]
    (digest,) = sent[TERM_SET_KEY]
    assert len(json.dumps(sent)) < 200  # the request carries the hash, not 100 KiB of terms
    assert [p.name for p in (index_dir / SUBDIR).iterdir()] == [f"{digest}.json"]  # no temp file left behind
    terms = parse_terms(sent)  # what the plugin reads back
    assert terms == parse_terms(large)
    assert "Zorblax03999 Quintarian" in terms.words and terms.prefix == ("Spidey",)
    assert by_hash(large) == sent  # same content, same name; written once


def test_inline_terms_of_the_same_key_are_merged() -> None:
    digest = save_term_set({"quell_terms": ["Batman"]})
    merged = resolve({TERM_SET_KEY: [digest], "quell_terms": ["Robin"]})
    assert sorted(merged["quell_terms"]) == ["Batman", "Robin"]


@pytest.mark.parametrize("damage", ["missing", "altered", "not_json"])
def test_unusable_sets_are_refused_naming_the_set_and_folder(index_dir: Path, damage: str) -> None:
    digest = save_term_set({"quell_terms": _many(10), "quell_facts": []})
    path = index_dir / SUBDIR / f"{digest}.json"
    if damage == "missing":
        digest = "0" * 64
    elif damage == "altered":
        path.write_text(json.dumps({"quell_terms": ["Something Else"]}))
    else:
        path.write_text("{not json")
    args = {TERM_SET_KEY: [digest]}
    with pytest.raises(ValueError, match=f"term set {digest[:12]}.*{SUBDIR}") as caught:
        parse_terms(args)
    assert str(index_dir) in str(caught.value)
    with pytest.raises(ValueError):
        parse_facts(args)


@pytest.mark.parametrize("bad", ["nothex", ["zz" * 32], [1], ["ab" * 32] * 5])
def test_malformed_ids_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=TERM_SET_KEY):
        parse_terms({TERM_SET_KEY: bad})


def test_a_policy_with_many_terms_sends_its_hash(tmp_path: Path, index_dir: Path) -> None:
    terms = "\n".join(f"      - {t}" for t in _many(4000))
    policy = parse_policy(f"id: big\nrefusal: nope\ntargets:\n  - id: t\n    on_surface: mask\n    terms:\n{terms}\n")
    args = SurfaceLayer([policy]).plugin_args()
    assert list(args) == [TERM_SET_KEY]
    sent = parse_terms(args)
    assert {"Zorblax00000 Quintarian", "Zorblax03999 Quintarian"} <= set(sent.words + sent.prefix + sent.inside)
    assert sent.size == 4000
