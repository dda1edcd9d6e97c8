"""Near spellings of names (filters.near_names): what a masked model writes instead of a name is caught in text, the
same for a whole text and any chunking of it, and ordinary words next to a name's initials are left alone."""

from __future__ import annotations

import pytest

from filters.near_names import NearName, NearNameStream, find_near_names, is_near
from filters.normalize import SEPARATOR, surface_symbols
from filters.output_pipeline import OutputPipeline
from filters.policy_loader import parse_policy
from filters.stream_guard import REDACTION, OutputGuard
from filters.surface import SurfaceLayer

NAMES = ["Werner Herzog", "Francis Parkman", "Harrison Ford", "Demi Moore", "Patricia Arquette", "Paris Hilton",
         "Larry Bird", "Thomas More", "Jack the Ripper", "Arthur Conan Doyle"]  # fmt: skip
RULES = [r for r in (NearName.of("people@1", "people", "mask", "", n) for n in NAMES) if r is not None]
# what SmolLM2 wrote with these names masked at decode time (bench.real_people, 2026-12-03)
WRITTEN = ["Werner Herzöog's first film", "themes in Werner Herzko's films", "Yes, Francis Parkland Jr. did",
           "Harrison F. Ford is a renowned actor", 'Larry "Larry" B. Bird is a legend', "Demoni Moore is an actress",
           "is Patricia Arquelle, a", "designer, Paris HILLO, who", "Jack the Rapper sang",
           "Arthur Conan Boyle wrote"]  # fmt: skip
LEFT_ALONE = ["Francis Bacon wrote essays.", "Larry B. called.", "Harrison F. is here.", "I think that more is more.",
              "Harrison Ford acted.", "Parks and hills in Paris.", "The hero will be white.", "Demi-glace, more please.",
              "Arthur Conan is a name.", "Paris Bilton"]  # fmt: skip


def words(text: str) -> list[str]:
    return [w for w in surface_symbols(text)[0].split(SEPARATOR) if w]


@pytest.mark.parametrize("text", WRITTEN)
def test_what_masked_models_wrote_is_caught(text: str) -> None:
    assert [d.detail for d in find_near_names(RULES, text)] == ["near"]


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_ordinary_words_initials_and_the_name_itself_are_left_alone(text: str) -> None:
    assert find_near_names(RULES, text) == []  # the exact name is the surface automaton's, not this stage's


def test_the_rule_word_by_word() -> None:
    assert is_near(words("Werner Herzoog"), words("Werner Herzog"))
    assert not is_near(words("Wernor Herzoog"), words("Werner Herzog"))  # no word of the name left as it is
    assert is_near(words("Harrison F Ford"), words("Harrison Ford"))  # the name with an initial put in
    assert not is_near(words("Harrison F"), words("Harrison Ford"))  # an initial is not a surname
    assert not is_near(words("that more"), words("Thomas More"))  # a changed word must resemble its word
    assert NearName.of("p@1", "t", "mask", "", "Al Gore") is None  # too short to tell from other names
    assert NearName.of("p@1", "t", "mask", "", "Pikachu") is None  # one word: not a name of this kind


@pytest.mark.parametrize("chunk", [1, 2, 5, 13])
def test_streamed_output_equals_one_shot_and_never_lets_a_near_spelling_out(chunk: int) -> None:
    text = " ".join(WRITTEN + LEFT_ALONE)
    whole = NearNameStream(names=RULES)
    expected = whole.feed(text).text + whole.finish().text
    stream, out = NearNameStream(names=RULES), ""
    for i in range(0, len(text), chunk):
        out += stream.feed(text[i : i + chunk]).text
        assert find_near_names(RULES, out) == [], out  # what went out never holds a near spelling
    out += stream.finish().text
    assert out == expected and out.count(REDACTION) == len(WRITTEN)
    assert find_near_names(RULES, out) == []


POLICY = """\
id: forget-herzog
targets:
  - id: herzog
    terms: [Werner Herzog]
    near_names: {near}
    on_surface: {action}
"""


@pytest.mark.anyio
@pytest.mark.parametrize(("near", "action", "expected", "cut"), [
    ("true", "mask", f"Seen: {REDACTION}'s first film. Herzog's last.", False),
    ("true", "stop", "Seen: ", True),
    ("false", "mask", "Seen: Werner Herzöog's first film. Herzog's last.", False),
])  # fmt: skip
async def test_the_pipeline_acts_on_near_spellings_of_a_target_that_asks_for_it(near, action, expected, cut) -> None:
    policy = parse_policy(POLICY.format(near=near, action=action))
    pipeline = OutputPipeline(OutputGuard(SurfaceLayer([policy])), None, {policy.ref: policy.refusal})
    text, stopped = await pipeline.whole("Seen: Werner Herzöog's first film. Herzog's last.")
    assert (text, stopped) == (expected, cut)
    assert [d.detail for d in pipeline.decisions] == (["near"] if near == "true" else [])
    reported = SurfaceLayer([policy]).decisions("Werner Herzöog's first film.")  # moderations, admin :test
    assert [d.detail for d in reported] == (["near"] if near == "true" else [])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
