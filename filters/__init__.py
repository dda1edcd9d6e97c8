"""Quell's suppression library: policies, the surface automaton, decode-time token masks, semantic layers, protected
text, and the per-choice output pipeline that turns their detections into decisions. It never imports `service`.

The public names below are imported lazily (PEP 562), so `import filters` stays cheap: the embedders pull torch,
the plugin pulls vLLM, and a caller that needs neither should not pay for them.

    from filters import OutputGuard, OutputPipeline, SurfaceLayer, load_policy_file
    policy = load_policy_file(Path("policies/spiderman.yaml"))
    pipeline = OutputPipeline(OutputGuard(SurfaceLayer([policy])), None, {policy.ref: policy.refusal})
    text, cut = await pipeline.whole("Spider-Man swung by.")   # ("[redacted] swung by.", False)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # policies
    "Policy": "filters.policy",
    "Target": "filters.policy",
    "PolicyError": "filters.policy_loader",
    "PolicyIssue": "filters.policy_loader",
    "parse_policy": "filters.policy_loader",
    "load_policy_file": "filters.policy_loader",
    "load_policy_dir": "filters.policy_loader",
    # decisions
    "Action": "filters.decision",
    "Decision": "filters.decision",
    "Layer": "filters.decision",
    "content_filter_results": "filters.decision",
    "moderation_result": "filters.moderation",
    # surface layer
    "MatchMode": "filters.automaton",
    "TermAutomaton": "filters.automaton",
    "SurfaceLayer": "filters.surface",
    "find_matches": "filters.text_matcher",
    "StreamMatcher": "filters.text_matcher",
    # semantic layers
    "Embedder": "filters.embedding",
    "Encoder": "filters.embedding",
    "SemanticGuard": "filters.semantic",
    "Judges": "filters.judge",
    "JudgeEndpoint": "filters.judge",
    # protected text
    "find_runs": "filters.protected_text",
    # the output pipeline
    "OutputGuard": "filters.stream_guard",
    "GuardStep": "filters.stream_guard",
    "OutputPipeline": "filters.output_pipeline",
}

__all__ = [  # the names of _EXPORTS, written out so that linters and IDEs read them
    "Action",
    "Decision",
    "Embedder",
    "Encoder",
    "GuardStep",
    "JudgeEndpoint",
    "Judges",
    "Layer",
    "MatchMode",
    "OutputGuard",
    "OutputPipeline",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "SemanticGuard",
    "StreamMatcher",
    "SurfaceLayer",
    "Target",
    "TermAutomaton",
    "content_filter_results",
    "find_matches",
    "find_runs",
    "load_policy_dir",
    "load_policy_file",
    "moderation_result",
    "parse_policy",
]

if TYPE_CHECKING:
    from filters.automaton import MatchMode, TermAutomaton
    from filters.decision import Action, Decision, Layer, content_filter_results
    from filters.embedding import Embedder, Encoder
    from filters.judge import JudgeEndpoint, Judges
    from filters.moderation import moderation_result
    from filters.output_pipeline import OutputPipeline
    from filters.policy import Policy, Target
    from filters.policy_loader import PolicyError, PolicyIssue, load_policy_dir, load_policy_file, parse_policy
    from filters.protected_text import find_runs
    from filters.semantic import SemanticGuard
    from filters.stream_guard import GuardStep, OutputGuard
    from filters.surface import SurfaceLayer
    from filters.text_matcher import StreamMatcher, find_matches


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'filters' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
