"""The gateway's text-level surface guard: one decision path for JSON and streams, whatever the chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.policy_loader import parse_policy
from filters.stream_guard import REDACTION, OutputGuard
from filters.surface import SurfaceLayer


def layer(action: str, refusal: str = "No.") -> SurfaceLayer:
    policy = parse_policy(
        f"id: p\nrefusal: {refusal!r}\ntargets:\n  - id: hero\n    terms: [Spider-Man, Peter Parker]\n"
        f"    match: word\n    on_surface: {action}\n"
    )
    return SurfaceLayer([policy])


def run(guard: OutputGuard, text: str, size: int) -> tuple[str, list, bool, str | None]:
    out, decisions, refusal = [], [], None
    for i in range(0, len(text), size):
        step = guard.feed(text[i : i + size])
        out.append(step.text)
        decisions += step.decisions
        refusal = refusal or step.refusal
    step = guard.finish()
    out.append(step.text)
    decisions += step.decisions
    return "".join(out), decisions, guard.stopped, refusal or step.refusal


TEXT = "He is Spider-Man, also called peter  PARKER; spidermanagement is a different word."


@pytest.mark.parametrize("size", [1, 2, 5, 13, 1000])
def test_redact_any_chunking(size: int) -> None:
    text, decisions, stopped, _ = run(OutputGuard(layer("redact")), TEXT, size)
    assert text == f"He is {REDACTION}, also called {REDACTION}; spidermanagement is a different word."
    assert [(d.start, d.end, d.action) for d in decisions] == [(6, 16, "redact"), (30, 43, "redact")]
    assert not stopped


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_stop_cuts_before_the_first_match(size: int) -> None:
    text, decisions, stopped, refusal = run(OutputGuard(layer("stop")), TEXT, size)
    assert text == "He is " and stopped and refusal is None
    assert decisions[0].action == "stop"


def test_refuse_reports_the_policy_refusal() -> None:
    text, _, stopped, refusal = run(OutputGuard(layer("refuse", "Not that topic.")), TEXT, 4)
    assert stopped and refusal == "Not that topic." and "Spider" not in text


def test_mask_terms_that_reach_the_text_are_redacted() -> None:
    text, decisions, _, _ = run(OutputGuard(layer("mask")), "I am Spiderman.", 3)
    assert text == f"I am {REDACTION}." and decisions[0].action == "redact"


def test_mask_terms_go_to_the_plugin_other_actions_do_not() -> None:
    assert set(layer("mask").mask_terms) == {"Spider-Man", "Peter Parker"}
    assert layer("redact").mask_terms == ()


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(["Spider", "-", "Man", " ", "Peter", "Parker", "x", "ma", "n", ".", "\u200b"]),
                    max_size=20),
    cuts=st.lists(st.integers(1, 6), min_size=1, max_size=30),
)  # fmt: skip
def test_streamed_output_never_contains_a_match_and_equals_one_shot(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    one_shot, _, _, _ = run(OutputGuard(layer("redact")), text, max(1, len(text)))
    guard, out, pos, i = OutputGuard(layer("redact")), [], 0, 0
    while pos < len(text):
        size = cuts[i % len(cuts)]
        out.append(guard.feed(text[pos : pos + size]).text)
        pos, i = pos + size, i + 1
    out.append(guard.finish().text)
    streamed = "".join(out)
    assert streamed == one_shot
    assert not layer("redact").automaton.matches(streamed)  # "[redacted]" has word chars: it breaks a term


@pytest.mark.parametrize("size", [1, 3, 100])
def test_prefix_target_redacts_any_ending_and_goes_to_the_plugin_as_prefix(size: int) -> None:
    policy = parse_policy("id: p\ntargets:\n  - id: hero\n    terms: [Spider-Man]\n    match: prefix\n")
    surface = SurfaceLayer([policy])
    assert surface.mask_prefix_terms == ("Spider-Man",) and surface.mask_terms == ()
    text, decisions, _, _ = run(OutputGuard(surface), "Hello Spider-Manes and spiders.", size)
    assert text == f"Hello {REDACTION}es and spiders." and len(decisions) == 1
