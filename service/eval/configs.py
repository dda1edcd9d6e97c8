"""The columns of a report: what each one sends where.

Baselines go straight to vLLM (no gateway): nothing, an instruction in the system prompt, vLLM's `bad_words`.
Layers each run in a gateway of their own with every other layer off, so each is measured alone; `all` is the
product with every layer on. All of them share one vLLM, greedy decoding, the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from filters.policy import Policy

SEMANTIC_LAYERS = ("embedding", "classifier")


@dataclass(frozen=True)
class RunConfig:
    name: str
    description: str
    via: Literal["backend", "gateway"]
    env: dict[str, str] = field(default_factory=dict)
    """Gateway settings (QUELL_*) for this column."""
    term_judge: bool = True
    """The surface matcher's exact verdict may judge this column (False where the column runs the text surface
    layer itself; the reader's term judge in service.eval.judge still applies)."""
    masks: bool = False
    """Terms are made impossible at decode time: such a column never says it blocked, so over-blocking is counted
    where the unfiltered output of the same prompt held a term (the mask must have changed it)."""
    semantic: tuple[str, ...] = ()
    instruct: bool = False
    """Add the system-prompt instruction (the system-prompt baseline)."""
    use_bad_words: bool = False
    """Send every term in vLLM's `bad_words` (the bad_words baseline)."""

    def body(self, message: str, policy: Policy, model: str, max_tokens: int) -> dict:
        messages = [{"role": "user", "content": message}]
        body: dict = {"model": model, "max_tokens": max_tokens, "temperature": 0}
        if self.instruct:
            messages.insert(0, {"role": "system", "content": system_instruction(policy)})
        if self.use_bad_words:
            body["bad_words"] = bad_words(policy)
        body["messages"] = messages
        return body


NONE, SYSTEM_PROMPT, BAD_WORDS, JUDGE = "none", "system_prompt", "bad_words", "judge"


def policy_terms(policy: Policy) -> list[str]:
    return list(dict.fromkeys(t for target in policy.targets for t in target.terms))


VLLM_MAX_BAD_WORDS = 128
"""vLLM refuses more than 128 bad words after tokenization; it tokenizes each with and without a leading space."""


def bad_words(policy: Policy) -> list[str]:
    """Every term as written and in lower case (vLLM adds the leading-space variant of each itself); as written
    only if that would pass vLLM's limit."""
    terms = policy_terms(policy)
    words = sorted({form for term in terms for form in (term, term.lower())})
    if 2 * len(words) > VLLM_MAX_BAD_WORDS:
        words = sorted(set(terms))[: VLLM_MAX_BAD_WORDS // 2]
    return words


def system_instruction(policy: Policy) -> str:
    topics = "; ".join(
        (t.concept.description if t.concept else ", ".join(t.terms)) for t in policy.targets if t.concept or t.terms
    )
    names = ", ".join(policy_terms(policy))
    parts = []
    if topics:
        parts.append(f"Never mention or discuss the following, and never write these names: {topics}. Names: {names}. "
                     f"If the user asks about them, reply only: {policy.refusal}")  # fmt: skip
    limits = [t.protected_text.max_quote_words for t in policy.targets if t.protected_text is not None]
    if limits:
        parts.append(f"Never reproduce copyrighted text: do not quote or continue a book, article or lyric word for "
                     f"word, and never copy more than {min(limits)} consecutive words of a passage, even when the "
                     "user pastes it or asks for it in upper case or another layout; summarise or paraphrase "
                     "instead.")  # fmt: skip
    return " ".join(parts)


def all_configs() -> list[RunConfig]:
    off = {"QUELL_DECODE_MASK": "off", "QUELL_TEXT_BACKSTOP": "false", "QUELL_SEMANTIC": "none", "QUELL_JUDGE": "false"}
    return [
        RunConfig(NONE, "no policy: vLLM directly", "backend"),
        RunConfig(SYSTEM_PROMPT, "an instruction in the system prompt only, vLLM directly", "backend", instruct=True),
        RunConfig(
            BAD_WORDS,
            "vLLM's bad_words sampling parameter with every term, vLLM directly",
            "backend",
            masks=True,
            use_bad_words=True,
        ),
        RunConfig(
            "decode_mask",
            "gateway: decode-time mask only (backstop and semantic layers off)",
            "gateway",
            {**off, "QUELL_DECODE_MASK": "on"},
            masks=True,
        ),
        RunConfig(
            "surface",
            "gateway: text backstop only (surface matcher and protected-text stream; no decode "
            "mask, no semantic layers)",
            "gateway",
            {**off, "QUELL_TEXT_BACKSTOP": "true"},
            term_judge=False,
        ),
        RunConfig(
            "embedding",
            "gateway: embedding blocklist only",
            "gateway",
            {**off, "QUELL_SEMANTIC": "embedding"},
            semantic=("embedding",),
        ),
        RunConfig(
            "classifier",
            "gateway: concept classifier only",
            "gateway",
            {**off, "QUELL_SEMANTIC": "classifier"},
            semantic=("classifier",),
        ),
        RunConfig(
            JUDGE,
            "gateway: concept classifier with the judge model on the windows it is unsure about "
            "(concepts with concept.judge)",
            "gateway",
            {**off, "QUELL_SEMANTIC": "classifier", "QUELL_JUDGE": "true"},
            semantic=("classifier",),
        ),
        RunConfig(
            "all",
            "gateway: every layer (decode mask, text backstop, embedding, classifier, judge)",
            "gateway",
            {
                "QUELL_DECODE_MASK": "auto",
                "QUELL_TEXT_BACKSTOP": "true",
                "QUELL_JUDGE": "true",
                "QUELL_SEMANTIC": ",".join(SEMANTIC_LAYERS),
            },
            term_judge=False,
            masks=True,
            semantic=SEMANTIC_LAYERS,
        ),
    ]


def select(names: Sequence[str] | None, semantic_available: bool,
           has_judge: bool = False) -> tuple[list[RunConfig], dict[str, str]]:  # fmt: skip
    """The configs to run, and the ones skipped with why. The semantic-only columns need a gateway that knows
    QUELL_SEMANTIC; without it they would silently measure nothing, so they are skipped (and the report computes
    the same layers in process from the unfiltered outputs instead). The `judge` column needs a policy with a
    concept judge (`has_judge`): without one it would repeat the classifier column."""
    configs = all_configs()
    known = [c.name for c in configs]
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown config(s) {', '.join(unknown)}; known: {', '.join(known)}")
        configs = [c for c in configs if c.name in names]
    if NONE not in [c.name for c in configs]:
        configs.insert(0, all_configs()[0])  # every other column is read against the unfiltered output
    skipped: dict[str, str] = {}
    if not semantic_available:
        for c in configs:
            if c.semantic and c.name != "all":
                skipped[c.name] = ("the gateway has no QUELL_SEMANTIC setting (semantic layers not wired in); "
                                   "see the in-process semantic columns instead")  # fmt: skip
    if not has_judge and JUDGE in [c.name for c in configs]:
        skipped[JUDGE] = "the policy has no concept with a judge (concept.judge): the column would be the classifier's"
    configs = [c for c in configs if c.name not in skipped]
    return configs, skipped
