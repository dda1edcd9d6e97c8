"""The concept judge's test material, shared by the tests and by `python -m tests.service.record judge_smollm`,
which records the real small model's answer to the judge's question on each window below (so the replayed answers
are ones vLLM gave, and a change to the question makes the replay answer 599 instead of a stale verdict)."""

from __future__ import annotations

from filters.judge import JUDGE_SYSTEM, TOP_LOGPROBS, judge_messages
from filters.policy import Policy
from tests.semantic_support import spiderman_policy

MODEL = "SmolLM2-135M-Instruct"
YES_AT = 0.2
"""The recorded SmolLM2-135M answers "No" to every window, P(yes) 0.18-0.23 with no signal in it (the sourdough
window gets more than the Spider-Man ones). The tests set the judge's `yes_threshold` here so that its real answers
fall on both sides: they test the mechanics, not this model's judgement (bench.judge_eval measures that)."""
WINDOWS = (
    "The young photographer from Queens was bitten by a radioactive spider and now swings between skyscrapers.",
    "Sourdough needs a lively starter, flour, water and salt, and a long slow rise overnight.",
    "The wall-crawler fought Doctor Octopus on the roof of the Daily Bugle.",
    "A tarantula's bite is painful but rarely dangerous to people.",
    "Batman patrols Gotham at night with Robin.",
    "The garden spider spun a web between the roses.",
    "Spider-Man is a superhero with a unique ability: he can manipulate light.",  # recordings/chat_spider's answer
)


def judge_policy(band: list[float] | None = None, on_concept: str = "refuse", **judge: object) -> Policy:
    """The shipped Spider-Man policy with a judge (`band` [low, high] on classifier scores; [0, 1]: every window),
    saying yes from P(yes) >= YES_AT unless `yes_threshold` is given."""
    judge.setdefault("yes_threshold", YES_AT)
    data = spiderman_policy().model_dump(mode="json")
    data["targets"][0]["on_concept"] = on_concept
    data["targets"][0]["concept"]["layers"] = ["classifier"]
    data["targets"][0]["concept"]["judge"] = {"band": band if band is not None else [0.0, 1.0], **judge}
    return Policy.model_validate(data)


def judge_request(window: str) -> dict:
    """The body the judge sends for `window` (what the recording holds)."""
    concept = judge_policy().targets[0].concept
    assert concept is not None
    return {"model": MODEL, "messages": judge_messages(concept, window), "max_tokens": 1, "temperature": 0.0,
            "logprobs": True, "top_logprobs": TOP_LOGPROBS}  # fmt: skip


__all__ = ["JUDGE_SYSTEM", "MODEL", "WINDOWS", "YES_AT", "judge_policy", "judge_request"]
