"""A choice's token-level fields (`token_ids`, `logprobs`) kept in step with its guarded text.

The text of a choice is what the layers judge; its token ids and logprobs spell the same text a second way, and
`top_logprobs` offers words the model nearly said. So:
- when a layer changed or cut a choice's text, its token ids and logprobs are removed (`logprobs: null`);
- otherwise each `top_logprobs` alternative that would complete a listed term is removed;
- in a stream, ids and logprobs travel with the text they spell: while the guard holds text back, they are held
  too, and they go out with that text only if it was released unchanged; once a choice's text was changed they
  are never sent again for that choice (their alignment with the text is lost).

OpenAI's two shapes: chat `logprobs.content[]` entries `{token, logprob, bytes, top_logprobs: [{token, ...}]}`;
completions `logprobs` `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from filters.automaton import TermAutomaton
from filters.token_evidence import AlternativeFilter

TOKEN_FIELDS = ("token_ids", "logprobs")
_COMPLETION_LISTS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


def strip(choice: dict) -> None:
    """Remove what spells the model's original text."""
    choice.pop("token_ids", None)
    if "logprobs" in choice:
        choice["logprobs"] = None


def filter_alternatives(logprobs: object, automaton: TermAutomaton | None, alternatives: AlternativeFilter | None = None,
                        ) -> None:  # fmt: skip
    """Drop, in place, each top_logprobs alternative that would complete a term after the tokens chosen before it."""
    if automaton is None or not isinstance(logprobs, dict):
        return
    walk = alternatives or AlternativeFilter(automaton)
    content = logprobs.get("content")
    if isinstance(content, list):  # chat
        for entry in content:
            if not isinstance(entry, dict):
                continue
            tops = entry.get("top_logprobs")
            if isinstance(tops, list):
                entry["top_logprobs"] = [
                    t for t in tops if isinstance(t, dict) and walk.allowed(str(t.get("token", "")))
                ]
            walk.advance(str(entry.get("token", "")))
        return
    tokens, tops = logprobs.get("tokens"), logprobs.get("top_logprobs")
    if not isinstance(tokens, list):
        return
    for i, token in enumerate(tokens):
        if isinstance(tops, list) and i < len(tops) and isinstance(tops[i], dict):
            tops[i] = {alt: lp for alt, lp in tops[i].items() if walk.allowed(str(alt))}
        walk.advance(str(token))


def _merge_logprobs(held: dict | None, new: object) -> dict | None:
    if not isinstance(new, dict):
        return held
    if held is None:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in new.items()}
    if isinstance(new.get("content"), list):
        held.setdefault("content", []).extend(new["content"])
    for key in _COMPLETION_LISTS:
        if isinstance(new.get(key), list):
            held.setdefault(key, []).extend(new[key])
    return held


@dataclass
class StreamedTokens:
    """One streamed text of one choice: its ids and logprobs, held until the text they spell is released as is."""

    automaton: TermAutomaton | None
    _unreleased: str = ""  # text received from the model and not yet released to the client
    _ids: list = field(default_factory=list)
    _logprobs: dict | None = None
    _diverged: bool = False
    _alternatives: AlternativeFilter | None = None
    _keyed: bool = False  # the backend's chunks carry a `logprobs` key (null when not asked for): keep the shape

    def __post_init__(self) -> None:
        self._alternatives = AlternativeFilter(self.automaton)

    def take(self, choice: dict, text: str) -> None:
        """Move this chunk's token fields out of `choice` into the hold; `text` is the chunk's model text."""
        self._keyed = "logprobs" in choice
        ids = choice.pop("token_ids", None)
        logprobs = choice.pop("logprobs", None)
        if self._diverged:
            return
        self._unreleased += text
        if isinstance(ids, list):
            self._ids.extend(ids)
        self._logprobs = _merge_logprobs(self._logprobs, logprobs)

    def give(self, choice: dict, released: str, changed: bool) -> None:
        """`released` went out in this chunk; attach the held fields if it was everything held, unchanged."""
        if self._keyed:
            choice["logprobs"] = None
        if changed or self._diverged or not self._unreleased.startswith(released):
            self._diverged = True
            self._ids, self._logprobs, self._unreleased = [], None, ""
            return
        self._unreleased = self._unreleased[len(released) :]
        if self._unreleased:
            return  # part of the text is still held back: so are the tokens that spell it
        if self._ids:
            choice["token_ids"], self._ids = self._ids, []
        if self._logprobs is not None:
            filter_alternatives(self._logprobs, self.automaton, self._alternatives)
            choice["logprobs"], self._logprobs = self._logprobs, None
