"""A person's data in policies: patterns and facts through the loader (file, line, field on bad input), the surface
layer (decisions, plugin arguments) and the plugin's request parsing (facts armed by a prompt that names the
person)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from filters.automaton import TermAutomaton
from filters.facts import ARMED_FACTS_KEY, date_forms, fact_forms
from filters.policy_loader import PolicyError, parse_policy
from filters.stream_guard import OutputGuard
from filters.surface import SurfaceLayer

PERSON = """\
id: forget-jane
targets:
  - id: jane
    terms: [Jane Roe, Jane Q. Roe]
    facts: ["1985-03-12", "12 Baker Street", Northwind Traders]
    patterns:
      - {name: jane-phone, regex: '555 ?010 ?0199'}
"""


@pytest.mark.parametrize(
    ("regex", "fragment"),
    [
        (r"(abc)\1", "unsupported regex feature"),
        (r"(?=a)abcde", "lookaround"),
        (r"\d*", "matches the empty string"),
        (r"[a-z ]{6}", "matches almost anything"),
        (r"\d{3}-\d{4}", "can never match normalised text"),
        ("(ab", "invalid regex"),
    ],
)
def test_bad_patterns_name_file_line_and_field(regex: str, fragment: str) -> None:
    text = f"id: x\ntargets:\n  - id: a\n    patterns:\n      - name: p\n        regex: '{regex}'\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    issue = info.value.issues[0]
    assert (issue.file, issue.line, issue.field) == ("p.yaml", 6, "targets[0].patterns[0].regex")
    assert fragment in issue.message


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ("    terms: [Jane Roe]\n    facts: ['1985-02-30']\n", "targets[0].facts", "is not one"),
        ("    terms: [Jane Roe]\n    facts: [abc]\n", "targets[0].facts", "fewer than 5"),
        ("    patterns: [{name: p, regex: '\\d{9}'}]\n    facts: [Baker Street]\n", "targets[0]", "terms that name"),
        ("    patterns: [{name: p, regex: '\\d{9}'}, {name: p, regex: '\\d{8}'}]\n", "targets[0].patterns",
         "appear twice"),
    ],
)  # fmt: skip
def test_bad_facts_and_pattern_lists_are_rejected(body: str, field: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(f"id: x\ntargets:\n  - id: a\n{body}", "p.yaml")
    issue = info.value.issues[0]
    assert issue.field == field and fragment in issue.message


def test_dates_stand_for_their_written_forms() -> None:
    forms = date_forms(dt.date(1985, 3, 12))
    automaton = TermAutomaton.reader(forms)
    for text in ("born 1985-03-12", "12/03/1985", "03.12.1985", "March 12th, 1985", "12 Mar 1985", "the 12th of March 1985",
                 "Mar 12 1985"):  # fmt: skip
        assert automaton.matches(text), text
    for text in ("March 13, 1985", "12/03/1986", "in 1985 and March"):
        assert not automaton.matches(text), text
    assert [f.lower() for f in fact_forms("12 Baker Street")] == ["12 baker street", "12 baker st"]
    assert [f.lower() for f in fact_forms("12 Baker St.")] == ["12 baker st.", "12 baker street"]


def test_facts_are_decisions_only_where_the_person_is_named() -> None:
    layer = SurfaceLayer([parse_policy(PERSON)])
    named = "Jane Roe was born on March 12th, 1985 and works at Northwind Traders."
    unnamed = "The customer was born on March 12th, 1985 and works at Northwind Traders."
    spans = [named[d.start : d.end] for d in layer.decisions(named) if d.start is not None]
    assert "Jane Roe" in spans and "March 12th, 1985" in spans and "Northwind Traders" in spans
    assert layer.decisions(unnamed) == []
    in_prompt = layer.fact_decisions(unnamed, prompt="Tell me about Jane Roe.")
    assert {unnamed[d.start : d.end] for d in in_prompt if d.start is not None} == {"March 12th, 1985",
                                                                                   "Northwind Traders"}  # fmt: skip


def _guarded(layer: SurfaceLayer, text: str, chunk: int) -> tuple[str, list[str]]:
    guard = OutputGuard(layer)
    steps = [guard.feed(text[i : i + chunk]) for i in range(0, len(text), chunk)] + [guard.finish()]
    return "".join(s.text for s in steps), [d.detail for s in steps for d in s.decisions]


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_the_text_backstop_arms_facts_by_the_prompt_as_the_plugin_does(chunk: int) -> None:
    """Without the plugin, the per-choice backstop is all there is: a prompt naming Jane arms her facts there too."""
    base = SurfaceLayer([parse_policy(PERSON)])
    answer = "The customer was born on March 12th, 1985 and works at Northwind Traders."
    armed = base.armed_by("Where does Jane Roe work, and when was she born?")
    assert armed is not base and armed is base.armed_by("Tell me about jane  ROE.")  # one compiled layer per set
    text, details = _guarded(armed, answer, chunk)
    assert text == "The customer was born on [redacted] and works at [redacted].", text
    assert details == ["fact", "fact"]
    assert base.armed_by("Where does the customer work?") is base  # not named: the facts stay free, as at decode
    assert _guarded(base, answer, chunk)[0] == answer
    assert _guarded(base.armed_by(None), answer, chunk)[0] == text  # a prompt that cannot be read arms them all
    assert armed.decisions(answer) == base.fact_decisions(answer, prompt="Jane Roe")  # reported once, alike


def test_pattern_decisions_carry_the_target_and_the_backstop_rule() -> None:
    layer = SurfaceLayer([parse_policy(PERSON)])
    text = "Call 555-010-0199."
    (decision,) = layer.decisions(text)
    assert (decision.target_id, text[decision.start : decision.end], decision.action) == (
        "jane",
        "555-010-0199",
        "mask",
    )
    assert layer.strongest("555 ?010 ?0199").target_id == "jane"


def test_plugin_args_carry_patterns_and_fact_groups() -> None:
    args = SurfaceLayer([parse_policy(PERSON)]).plugin_args()
    assert args["quell_patterns"] == ["555 ?010 ?0199"]
    (group,) = [json.loads(g) for g in args["quell_facts"]]
    assert group["names"] == ["Jane Roe", "Jane Q. Roe"] and "march 12 1985" in group["facts"]
    redact = PERSON.replace("  - id: jane\n", "  - id: jane\n    on_surface: redact\n")
    assert "quell_facts" not in SurfaceLayer([parse_policy(redact)]).plugin_args()


def test_plugin_arms_facts_only_for_a_prompt_that_names_the_person() -> None:
    plugin = pytest.importorskip("filters.vllm_plugin")  # needs torch and vLLM
    args = SurfaceLayer([parse_policy(PERSON)]).plugin_args()
    groups = plugin.parse_facts(args)
    terms = plugin.parse_terms(args)
    armed = terms.with_terms(plugin.facts_named(groups, "<|user|>What is Jane Roe's birthday?"))
    idle = terms.with_terms(plugin.facts_named(groups, "<|user|>What is the customer's birthday?"))
    assert armed.automaton().matches("She was born on 12/03/1985.")
    assert not idle.automaton().matches("She was born on 12/03/1985.")
    assert idle.automaton().matches("call 5550100199") and armed.patterns == ("555 ?010 ?0199",)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"quell_facts": ["{"]}, "is not JSON"),
        ({"quell_facts": ['{"names": ["x"]}']}, 'must be {"names"'),
        ({"quell_facts": ['{"names": [], "facts": ["abc"]}']}, 'must be {"names"'),
        ({"quell_patterns": ["(a)\\1"]}, "unsupported regex feature"),
        ({"quell_patterns": "abc"}, "flat list of strings"),
        ({"quell_armed_facts": "1985"}, "flat list of strings"),
        ({"quell_armed_facts": ["--"]}, "no letters or digits"),
    ],
)
def test_plugin_rejects_bad_pattern_and_fact_arguments(extra: dict[str, object], fragment: str) -> None:
    plugin = pytest.importorskip("filters.vllm_plugin")
    with pytest.raises(ValueError, match=None) as info:
        plugin.parse_terms(extra)
        plugin.parse_facts(extra)
        plugin.parse_armed_facts(extra)
    assert fragment in str(info.value)


MODEL_DIR = Path(__file__).resolve().parents[2] / ".cache" / "models" / "SmolLM2-135M-Instruct"


@pytest.mark.parametrize(("named", "recognised"), [(True, False), (False, False), (False, True)])
def test_plugin_processor_masks_a_greedy_copier_of_facts_and_patterns(named: bool, recognised: bool) -> None:
    """The logits processor itself (no server): a 'model' that always prefers the next token of a sentence holding
    the person's date of birth and phone number, decoded greedily through update_state/apply. The phone pattern is
    never completed; the date is masked only when the prompt names the person, or when the gateway recognised them
    by their concept and sent their facts as `quell_armed_facts`."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    vllm = pytest.importorskip("vllm")
    if not (MODEL_DIR / "tokenizer.json").exists():
        pytest.skip(f"model not prepared at {MODEL_DIR} (run `make setup`)")
    from filters.vllm_plugin import QuellLogitsProcessor
    from tests.filters.greedy_copier import copy_greedily, processor_and_tokenizer

    proc, tokenizer = processor_and_tokenizer(MODEL_DIR)
    layer = SurfaceLayer([parse_policy(PERSON)])
    args = layer.plugin_args()
    if recognised:
        args[ARMED_FACTS_KEY] = layer.armed_fact_forms({(layer.facts[0][1].policy_ref, "jane")})
    params = vllm.SamplingParams(max_tokens=200, extra_args=args)
    QuellLogitsProcessor.validate_params(params)
    question = "When was Jane Roe born?" if named else "When was the customer born?"
    prompt = tokenizer.encode(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        ),
        add_special_tokens=False,
    )
    text, _ = copy_greedily(proc, tokenizer, params, prompt, "She was born on 12/03/1985; call 555-010-0199 any time.")
    assert text.startswith("She was born on") and "call" in text, text  # the request was not ended
    assert not TermAutomaton(patterns=["555 ?010 ?0199"]).matches(text), text
    assert TermAutomaton.reader(date_forms(dt.date(1985, 3, 12))).matches(text) is not (named or recognised), text


def test_a_target_recognised_without_its_name_is_armed_in_the_backstop_and_for_the_plugin() -> None:
    layer = SurfaceLayer([parse_policy(PERSON)])
    ref = layer.facts[0][1].policy_ref
    answer = "She was born on 12/03/1985."
    assert layer.armed_by("When was the customer born?").decisions(answer) == []  # not named: the date passes
    armed = layer.armed_by("When was the customer born?", {(ref, "jane")})
    assert [(d.detail, answer[d.start : d.end]) for d in armed.decisions(answer)] == [("fact", "12/03/1985")]
    assert layer.armed_by("When was the customer born?", {("other@1", "jane")}) is layer  # another policy's jane
    forms = layer.armed_fact_forms({(ref, "jane")})
    assert "12/03/1985" in forms and "Northwind Traders" in forms and layer.armed_fact_forms(set()) == []
    flagged = SurfaceLayer([parse_policy(PERSON.replace("    terms:", "    on_surface: redact\n    terms:"))])
    assert flagged.armed_fact_forms({(flagged.facts[0][1].policy_ref, "jane")}) == []  # only mask targets' facts
