"""The concept judge (filters.judge): which windows reach it, how its answer decides them, its cache, its time-out
policy, and bad judge settings at load. The judge's answers are the real SmolLM2-135M's, recorded from vLLM
(`python -m tests.service.record judge_smollm`) and replayed; the embedder is the real default encoder. A fake
judge server appears only where a fault cannot be caused otherwise (a judge that never answers, one that fails),
and says so."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from filters.decision import Action, Layer
from filters.judge import JudgeEndpoint, Judges, Outcome, p_yes
from filters.output_pipeline import OutputPipeline
from filters.policy import Policy
from filters.policy_loader import PolicyError, parse_policy
from filters.semantic import SemanticGuard
from filters.stream_guard import OutputGuard
from filters.surface import SurfaceLayer
from tests.judge_support import MODEL, WINDOWS, YES_AT, judge_policy
from tests.semantic_support import shared_cache, shared_embedder
from tests.service.replay import Replay, load

PHOTOGRAPHER, SOURDOUGH = WINDOWS[0], WINDOWS[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def recorded_p_yes() -> dict[str, float]:
    """The real model's P(yes) per window, read straight from the recording."""
    out = {}
    for exchange in load("judge_smollm")["exchanges"][1:]:
        window = exchange["request"]["json"]["messages"][1]["content"].split("<<<\n", 1)[1].split("\n>>>", 1)[0]
        out[window] = p_yes(exchange["response"]["json"])
    return out


def guard(policy: Policy) -> SemanticGuard:
    return SemanticGuard([policy], shared_embedder(), shared_cache())


def replayed_judges(replay: Replay) -> Judges:
    return Judges(JudgeEndpoint("http://vllm.replay/v1"), MODEL, transport=replay.transport)


async def judged(policy: Policy, judges: Judges, text: str):
    return await judges.resolve(text, await guard(policy).check_async(text, judge_band=True))


def test_the_recording_has_both_answers() -> None:
    """At the tests' yes_threshold the replayed model says yes to some windows and no to others, so the tests below
    see both verdicts."""
    answers = recorded_p_yes()
    assert set(answers) == set(WINDOWS)
    assert any(p >= YES_AT for p in answers.values()) and any(p < YES_AT for p in answers.values()), answers


@pytest.mark.anyio
async def test_windows_outside_the_band_never_reach_the_judge() -> None:
    """Band [0.5, 0.9]: the Spider-Man window scores above it (the classifier's verdict stands), the sourdough one
    below it (passes); neither is sent anywhere. An empty replay answers any call with a 599, which would show."""
    replay = Replay()
    judges = replayed_judges(replay)
    policy = judge_policy(band=[0.5, 0.9])
    above = await judged(policy, judges, PHOTOGRAPHER)
    below = await judged(policy, judges, SOURDOUGH)
    assert [(d.layer, d.uncertain) for d in above] == [("classifier", False)]
    assert below == []
    assert replay.requests == [] and judges.calls == 0


@pytest.mark.anyio
async def test_inside_the_band_the_judges_answer_decides() -> None:
    """Band [0, 1] sends every window to the judge; each is flagged (layer judge, score P(yes)) exactly when the
    recorded model put P(yes) at the judge's yes_threshold or more, whatever the classifier scored."""
    answers = recorded_p_yes()
    replay = Replay("judge_smollm")
    judges = replayed_judges(replay)
    policy = judge_policy(band=[0.0, 1.0])
    for window in WINDOWS:
        found = await judged(policy, judges, window)
        if answers[window] >= YES_AT:
            assert [(d.layer, d.judge_outcome) for d in found] == [("judge", "yes")], window
            assert found[0].score == pytest.approx(answers[window])
        else:
            assert found == [], window
    assert judges.calls == len(WINDOWS)


@pytest.mark.anyio
async def test_a_cached_window_costs_no_call() -> None:
    replay = Replay("judge_smollm")
    judges = replayed_judges(replay)
    client = judges.client()
    concept = judge_policy().targets[0].concept
    assert concept is not None
    first = await client.ask(concept, PHOTOGRAPHER, 5000, YES_AT)
    again = await client.ask(concept, PHOTOGRAPHER, 5000, YES_AT)
    assert not first.cached and again.cached and again.p_yes == first.p_yes
    assert client.calls == 1 and len(replay.requests) == 1


@pytest.mark.anyio
async def test_json_and_safe_stream_take_the_judges_verdict() -> None:
    """The output pipeline runs the judge in both paths: a window the judge says yes to refuses the response
    (refuse target), whole or streamed in small chunks, with a decision of layer `judge`; a no passes it unchanged."""
    answers = recorded_p_yes()
    yes = next(w for w in WINDOWS if answers[w] >= YES_AT)
    no = next(w for w in WINDOWS if answers[w] < YES_AT)
    policy = judge_policy(band=[0.0, 1.0])
    semantic = guard(policy)

    def pipeline() -> OutputPipeline:
        return OutputPipeline(OutputGuard(SurfaceLayer([])), semantic, {policy.ref: policy.refusal},
                              judge=replayed_judges(Replay("judge_smollm")))  # fmt: skip

    for text, blocked in ((yes, True), (no, False)):
        whole = pipeline()
        out, stopped = await whole.whole(text)
        stream, streamed = pipeline(), ""
        for i in range(0, len(text), 7):
            step = await stream.feed(text[i : i + 7])
            streamed += step.refusal if step.refusal is not None else step.text
        last = await stream.finish()
        streamed += last.refusal if last.refusal is not None else last.text
        expected = policy.refusal if blocked else text
        assert (out, stopped) == (expected, blocked) and streamed == expected, text
        for p in (whole, stream):
            assert [(d.layer, d.action) for d in p.decisions] == ([(Layer.JUDGE, Action.REFUSE)] if blocked else [])


class _NeverAnswers(httpx.AsyncBaseTransport):
    """FAKE judge server: it never answers (a hung judge cannot be caused on demand with the real model)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class _Fails(httpx.AsyncBaseTransport):
    """FAKE judge server: it answers 500 (a failing judge cannot be caused on demand with the real model)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "engine dead"}})


@pytest.mark.anyio
@pytest.mark.parametrize(("on_concept", "on_timeout", "blocks"), [
    ("refuse", None, True),  # the default for refuse targets: fail closed
    ("flag", None, False),  # ... and open for the others
    ("refuse", "pass", False),
    ("flag", "block", True),
])  # fmt: skip
@pytest.mark.parametrize("fault", [_NeverAnswers, _Fails])
async def test_a_judge_that_times_out_or_fails_follows_on_timeout(on_concept, on_timeout, blocks, fault) -> None:
    extra = {"on_timeout": on_timeout} if on_timeout else {}
    policy = judge_policy(band=[0.0, 1.0], on_concept=on_concept, timeout_ms=50, **extra)
    judges = Judges(JudgeEndpoint("http://judge.fake/v1"), MODEL, transport=fault())
    found = await judged(policy, judges, PHOTOGRAPHER)
    outcome = str(Outcome.TIMEOUT if fault is _NeverAnswers else Outcome.ERROR)
    assert [(d.layer, d.judge_outcome) for d in found] == ([("judge", outcome)] if blocks else [])


def _policy_yaml(judge: str, layers: str = "[classifier]") -> str:
    return f"""id: judged
targets:
  - id: spider-man
    concept:
      description: The Marvel superhero Spider-Man.
      examples: ["The web-slinger swings through Queens.", "Peter Parker hides his costume."]
      layers: {layers}
      judge:
{judge}
"""


@pytest.mark.parametrize(("judge", "layers", "field", "line", "says"), [
    ("        band: [0.9, 0.2]", "[classifier]", "targets[0].concept.judge.band", 9, "low < high"),
    ("        band_fpr: [0.01, 0.2]", "[classifier]", "targets[0].concept.judge.band_fpr", 9, "wide > narrow"),
    ("        band: [0.2, 0.9]\n        band_fpr: [0.2, 0.0]", "[classifier]", "targets[0].concept.judge", 8,
     "not both"),
    ("        url: ftp://judge:21", "[classifier]", "targets[0].concept.judge.url", 9, "http(s)"),
    ("        on_timeout: maybe", "[classifier]", "targets[0].concept.judge.on_timeout", 9, "block"),
    ("        timeout_ms: 0", "[classifier]", "targets[0].concept.judge.timeout_ms", 9, "10"),
    ("        band: [0.2, 0.9]", "[embedding]", "targets[0].concept", 4, "add classifier"),
])  # fmt: skip
def test_bad_judge_settings_are_rejected_at_load(judge, layers, field, line, says) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(_policy_yaml(judge, layers), "policies/judged.yaml")
    issues = [(i.field, i.line) for i in caught.value.issues]
    assert (field, line) in issues, caught.value.issues
    assert says in str(caught.value) and "policies/judged.yaml" in str(caught.value)


def test_band_fpr_brackets_the_threshold() -> None:
    """`band_fpr` reads the band off the negative texts' scores; the classifier threshold always lies inside."""
    model = guard(_band_fpr_policy()).models[0]
    assert model.classifier is not None and model.band is not None
    low, high = model.band
    assert low <= model.classifier.threshold < high


def _band_fpr_policy() -> Policy:
    data = judge_policy().model_dump(mode="json")
    data["targets"][0]["concept"]["judge"] = {"band_fpr": [0.2, 0.0]}
    return Policy.model_validate(data)


def test_p_yes_reads_the_first_tokens_alternatives() -> None:
    body = {
        "choices": [
            {
                "logprobs": {
                    "content": [
                        {
                            "token": "No",
                            "logprob": -0.1,
                            "top_logprobs": [
                                {"token": "No", "logprob": -0.1},
                                {"token": " yes", "logprob": -2.4},
                                {"token": "Maybe", "logprob": -3.0},
                            ],
                        }
                    ]
                }
            }
        ]
    }
    assert p_yes(body) == pytest.approx(0.0911, abs=1e-3)
