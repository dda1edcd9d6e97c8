"""Decode-time term masking as a vLLM V1 logits processor (DESIGN.md, "Surface layer", use 2).

Load it with `--logits-processors filters.vllm_plugin:QuellLogitsProcessor`; a request opts in with
`"vllm_xargs": {"quell_terms": ["Spider-Man", ...]}` (a flat list of strings; these match between word edges),
`"quell_prefix_terms"` for terms that match at a word start whatever follows them, and `"quell_inside_terms"` for
terms that match anywhere, inside words too (`filters.automaton`, "the matching contract"). `"quell_patterns"` lists
regular expressions for identifiers (`filters.patterns`), compiled into the same automaton. `"quell_facts"` lists one
JSON object per person, `{"names": [...], "facts": [...]}`: when the request's prompt names the person (any name, as
a reader-mode term), the facts' written forms join the request's mask terms (`filters.facts`). `"quell_armed_facts"`
lists fact forms that join them whatever the prompt says (the gateway's input screen recognised the person by
their concept, not their name). Requests without terms are untouched.

Call order (vLLM's interface): `validate_params` in the API server (bad input -> HTTP 400); in the engine, before
each forward pass `update_state` (batch changes: removed, then added, then moved; then every masked request's cursor
advances over its new output ids and its banned ids for this step are chosen), then `apply` (one `index_fill_` per
masked row: on a busy CPU host `masked_fill_` over a whole row took milliseconds, the index fill microseconds).
Neither of the last two may raise, because an exception there kills the engine: a request whose state cannot be
computed gets every token but end-of-sequence banned, and the error is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from filters.automaton import MatchMode, TermAutomaton, reader_mode
from filters.facts import ARMED_FACTS_KEY
from filters.normalize import word_chars
from filters.patterns import PatternError, compile_pattern
from filters.protected_text import ProtectedCursor, ProtectedMasks, cached_index, default_index_dir, is_digest
from filters.term_sets import resolve as resolve_term_set
from filters.token_mask import Cursor, TokenMasks
from filters.vocab import VocabularyIndex

if TYPE_CHECKING:
    from vllm.config import VllmConfig

log = logging.getLogger(__name__)

TERMS_KEY = "quell_terms"
PREFIX_TERMS_KEY = "quell_prefix_terms"
INSIDE_TERMS_KEY = "quell_inside_terms"
KEYS = (TERMS_KEY, PREFIX_TERMS_KEY, INSIDE_TERMS_KEY)
PATTERNS_KEY = "quell_patterns"
FACTS_KEY = "quell_facts"
MAX_PATTERNS = 256
MAX_ARMED_FACTS = 1024
"""Fact forms per request in `quell_armed_facts` (a date alone has about a dozen written forms)."""
PROTECTED_KEY = "quell_protected"
"""Protected-text indexes by content hash (`filters.protected_text`): the gateway writes them to the shared index
directory ($QUELL_INDEX_DIR, else $QUELL_CACHE_DIR/protected); a request carries only the hashes."""
MAX_PROTECTED = 16
MAX_TERMS = 100_000
MAX_TERMS_BYTES = 4 * 1024 * 1024
MAX_CACHED_TERM_SETS = 16
MAX_CACHED_BANNED_IDS = 1024
"""Banned-id tensors kept across term sets (a pending state bans ~33k ids: 260 KiB); cleared when full."""
WARM_DEPTH = 2
WARM_BUDGET_S = 30.0
"""A new term set's masks near the start of every term (`TokenMasks.warm_start`) are computed in a background
thread for at most this long, so that first visits to those states are not paid on the decode step."""


def _log_through_vllm() -> None:
    """vLLM gives handlers to its own `vllm` logger only, so in its worker the library's INFO lines (ready, masks
    precomputed) fell to the root logger's WARNING level and were lost, and its warnings came out unformatted: the
    whole `filters` package writes through vLLM's handlers, at vLLM's level."""
    vllm_log, package = logging.getLogger("vllm"), logging.getLogger(__name__.partition(".")[0])
    for handler in vllm_log.handlers:
        if handler not in package.handlers:
            package.addHandler(handler)
    if vllm_log.handlers and package.level == logging.NOTSET:
        package.setLevel(vllm_log.getEffectiveLevel())


def _spare_time_only() -> None:
    """Run the calling thread only when a core would otherwise be idle (Linux `SCHED_IDLE`, else the lowest nice).

    Precomputing at normal priority took CPU from the very decode steps it was meant to spare: on a CPU host the
    forward pass uses every core, so a cold request ran at 0.80 (1,000 terms) and 0.70 (10,000) of its unmasked
    speed, against 0.92 and 0.91 with the thread in spare time and 0.88 and 0.79 with no precomputing at all
    (`bench.decode_mask --batches single --counts 1000,10000`, 2026-12-03). The cost of the choice: under a host
    saturated by other processes the thread may wait long, and while it holds the GIL the decode step waits too
    (the step never waits for a mask itself: it computes a missing one on the spot)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            log.debug("Quell: could not lower the priority of the precomputing thread", exc_info=True)


class TermSet(NamedTuple):
    """A request's terms: `words` end on a word edge, `prefix` terms match at a word start whatever follows,
    `inside` terms anywhere."""

    words: tuple[str, ...]
    prefix: tuple[str, ...] = ()
    inside: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.words or self.prefix or self.inside or self.patterns)

    @property
    def size(self) -> int:
        return len(self.words) + len(self.prefix) + len(self.inside) + len(self.patterns)

    def automaton(self) -> TermAutomaton:
        return TermAutomaton(self.words, prefix=self.prefix, inside=self.inside, patterns=self.patterns)

    def with_terms(self, terms: tuple[str, ...]) -> TermSet:
        """This set plus `terms` in their reader mode (facts of a person the prompt names)."""
        prefix = [t for t in terms if reader_mode(t) is MatchMode.PREFIX]
        inside = [t for t in terms if reader_mode(t) is MatchMode.INSIDE]
        return self._replace(prefix=tuple(sorted(set(self.prefix).union(prefix))),
                             inside=tuple(sorted(set(self.inside).union(inside))))  # fmt: skip


def _parse_list(extra_args: dict[str, Any], key: str) -> list[str]:
    raw = extra_args.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(term, str) for term in raw):
        got = type(raw).__name__ if not isinstance(raw, list) else "a list with non-strings"
        raise ValueError(f"vllm_xargs.{key} must be a flat list of strings, got {got}")
    return raw


def parse_terms(extra_args: dict[str, Any] | None) -> TermSet:
    """The request's terms, deduplicated and sorted (empty: not masked). ValueError says what is wrong."""
    args = resolve_term_set(extra_args)  # a large set comes by hash (filters.term_sets); fails closed
    groups = {key: _parse_list(args, key) for key in KEYS}
    everything = [term for group in groups.values() for term in group]
    where = "vllm_xargs." + " + ".join(key for key, group in groups.items() if group)
    if len(everything) > MAX_TERMS:
        raise ValueError(f"{where} has {len(everything)} terms; at most {MAX_TERMS} are accepted")
    size = sum(len(term.encode("utf-8", errors="surrogatepass")) for term in everything)
    if size > MAX_TERMS_BYTES:
        raise ValueError(f"{where} is {size} bytes of text; at most {MAX_TERMS_BYTES} are accepted")
    empty = [term for term in everything if not word_chars(term)]
    if empty:
        raise ValueError(
            f"{where} has terms with no letters or digits once normalised, which can never match: {empty[:5]!r}"
        )
    patterns = _parse_list(args, PATTERNS_KEY)
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"vllm_xargs.{PATTERNS_KEY} has {len(patterns)} patterns; at most {MAX_PATTERNS} are accepted")
    for pattern in patterns:
        try:
            compile_pattern(pattern)
        except PatternError as exc:
            raise ValueError(f"vllm_xargs.{PATTERNS_KEY}: pattern {pattern!r}: {exc}") from None
    words, prefix, inside = (tuple(sorted(set(groups[key]))) for key in KEYS)
    return TermSet(words, prefix, inside, tuple(sorted(set(patterns))))


def parse_facts(extra_args: dict[str, Any] | None) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """The request's (names, facts) per person; ValueError says what is wrong."""
    out = []
    for i, raw in enumerate(_parse_list(resolve_term_set(extra_args), FACTS_KEY)):
        try:
            group = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"vllm_xargs.{FACTS_KEY}[{i}] is not JSON: {exc}") from None
        if (
            not isinstance(group, dict)
            or set(group) != {"names", "facts"}
            or not all(
                isinstance(v, list) and v and all(isinstance(x, str) and word_chars(x) for x in v)
                for v in group.values()
            )
        ):
            raise ValueError(f'vllm_xargs.{FACTS_KEY}[{i}] must be {{"names": [...], "facts": [...]}} with non-empty '
                             "lists of strings that have letters or digits")  # fmt: skip
        out.append((tuple(group["names"]), tuple(group["facts"])))
    return out


def parse_armed_facts(extra_args: dict[str, Any] | None) -> tuple[str, ...]:
    """Fact forms masked whatever the prompt names (sent inline, never by hash); ValueError says what is wrong."""
    armed = _parse_list(extra_args or {}, ARMED_FACTS_KEY)
    if len(armed) > MAX_ARMED_FACTS:
        raise ValueError(f"vllm_xargs.{ARMED_FACTS_KEY} has {len(armed)} facts; at most {MAX_ARMED_FACTS} are accepted")
    empty = [fact for fact in armed if not word_chars(fact)]
    if empty:
        raise ValueError(f"vllm_xargs.{ARMED_FACTS_KEY} has facts with no letters or digits: {empty[:5]!r}")
    return tuple(armed)


@lru_cache(maxsize=256)
def _names_automaton(names: tuple[str, ...]) -> TermAutomaton:
    return TermAutomaton.reader(names)


def facts_named(groups: list[tuple[tuple[str, ...], tuple[str, ...]]], prompt: str) -> tuple[str, ...]:
    """The facts of every person the prompt names."""
    named = [facts for names, facts in groups if _names_automaton(names).matches(prompt)]
    return tuple(fact for facts in named for fact in facts)


def term_set_key(terms: TermSet) -> str:
    digest = hashlib.sha256()
    for group in terms:
        for term in group:
            digest.update(term.encode("utf-8", errors="surrogatepass") + b"\0")
        digest.update(b"\1")  # the same string as a word term and as a prefix term are different sets
    return digest.hexdigest()


@dataclass
class _Request:
    cursor: Cursor | None
    masks: TokenMasks | None
    output_ids: list[int]
    max_tokens: int | None
    prompt_len: int
    set_key: str = ""
    banned: torch.Tensor | None = None
    """This step's banned token ids (int64, on the device); `None` until `update_state` ran for it."""
    protected: tuple[ProtectedCursor, ...] = ()
    terms: bool = True  # False: protected text only, no term cursor


def parse_protected(extra_args: dict[str, Any] | None) -> tuple[str, ...]:
    """The request's protected-text index ids (content hashes); ValueError says what is wrong."""
    raw = _parse_list(extra_args or {}, PROTECTED_KEY)
    if len(raw) > MAX_PROTECTED or not all(is_digest(d) for d in raw):
        raise ValueError(f"vllm_xargs.{PROTECTED_KEY} must list at most {MAX_PROTECTED} index ids of 64 hex digits")
    for digest in raw:
        try:
            cached_index(digest)
        except (OSError, ValueError) as exc:
            raise ValueError(f"vllm_xargs.{PROTECTED_KEY}: {exc} (the gateway writes indexes there; point "
                             f"QUELL_INDEX_DIR at the same folder in both processes)") from None  # fmt: skip
    return tuple(dict.fromkeys(raw))


class QuellLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        parse_terms(sampling_params.extra_args)
        parse_protected(sampling_params.extra_args)
        parse_facts(sampling_params.extra_args)
        parse_armed_facts(sampling_params.extra_args)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        _log_through_vllm()
        model_config = vllm_config.model_config
        self.device = torch.device(device)
        self.width = model_config.get_vocab_size()
        self.max_model_len = model_config.max_model_len
        self.vocab = VocabularyIndex.from_pretrained(model_config.tokenizer, revision=model_config.tokenizer_revision)
        _ = self.vocab.char_table  # build the kernel's table now, not on the first masked request
        self._term_sets: OrderedDict[str, TokenMasks] = OrderedDict()
        self._warmers: dict[str, threading.Event] = {}
        self._requests: dict[int, _Request] = {}
        fallback = np.ones(self.width, dtype=np.bool_)
        fallback[sorted(self.vocab.eos_token_ids)] = False
        self._end_only = torch.from_numpy(np.flatnonzero(fallback)).to(self.device)
        self._banned_ids: dict[tuple[str, int, bytes, bool, bool], torch.Tensor] = {}
        self._protected_masks: OrderedDict[str, ProtectedMasks] = OrderedDict()
        self._no_ids = torch.zeros(0, dtype=torch.int64, device=self.device)
        log.info("Quell decode-time masking ready: %d tokens, logits width %d", self.vocab.size, self.width)

    def is_argmax_invariant(self) -> bool:
        return False

    def needs_output_token_ids(self) -> bool:
        """Newer vLLM versions ask; the cursors advance over output ids, so always yes."""
        return True

    # ---- state --------------------------------------------------------------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        try:
            process_dict_updates(self._requests, batch_update, self._new_request)
        except Exception:
            log.exception("Quell: batch update failed; ending every masked request")
            for request in self._requests.values():
                request.cursor = None
        for request in self._requests.values():
            request.banned = self._with_protected(request, self._step_banned(request))

    def _new_request(
        self, params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int]
    ) -> _Request | None:
        try:
            terms = parse_terms(params.extra_args)
            facts = parse_facts(params.extra_args)
            armed = parse_armed_facts(params.extra_args)
            if facts:
                armed += facts_named(facts, self._prompt_text(prompt_ids or []))
            if armed:
                terms = terms.with_terms(armed)
            protected = tuple(ProtectedCursor(self._protected_for(d)) for d in parse_protected(params.extra_args))
        except Exception:
            log.exception("Quell: invalid terms or protected-text indexes reached the engine; ending the request")
            return _Request(None, None, output_ids, params.max_tokens, len(prompt_ids or ()))
        if not terms:
            if not protected:
                return None
            return _Request(None, None, output_ids, params.max_tokens, len(prompt_ids or ()), protected=protected,
                            terms=False)  # fmt: skip
        key = term_set_key(terms)
        try:
            masks = self._masks_for(key, terms)
            cursor = Cursor(masks.automaton, masks.vocab)
        except Exception:
            log.exception("Quell: compiling %d terms failed; ending the request", terms.size)
            masks, cursor = None, None
        return _Request(cursor, masks, output_ids, params.max_tokens, len(prompt_ids or ()), key, protected=protected)

    def _prompt_text(self, prompt_ids: list[int]) -> str:
        vocab = self.vocab
        data = [vocab.token_bytes[t] for t in prompt_ids if 0 <= t < vocab.size]
        return b"".join(d for d in data if d is not None).decode("utf-8", errors="replace")

    def _protected_for(self, digest: str) -> ProtectedMasks:
        masks = self._protected_masks.get(digest)
        if masks is None:
            masks = ProtectedMasks(cached_index(digest, default_index_dir()), self.vocab)
            self._protected_masks[digest] = masks
            if len(self._protected_masks) > MAX_PROTECTED:
                self._protected_masks.popitem(last=False)
        return masks

    def _with_protected(self, request: _Request, banned: torch.Tensor) -> torch.Tensor:
        """This step's banned ids plus every token that would complete a protected run; on an error, end it."""
        if not request.terms and not request.protected:
            return self._end_only
        if not request.protected:
            return banned
        try:
            extra = []
            for cursor in request.protected:
                while cursor.consumed < len(request.output_ids) and request.output_ids[cursor.consumed] >= 0:
                    cursor.advance(request.output_ids[cursor.consumed])
                ids = cursor.banned()
                if ids.size:
                    extra.append(torch.from_numpy(ids).to(self.device, non_blocking=True))
            if not request.terms:
                banned = self._no_ids
            return torch.cat([banned, *extra]) if extra else banned
        except Exception:
            log.exception("Quell: advancing a protected-text cursor failed; ending the request")
            request.protected, request.terms, request.cursor = (), True, None
            return self._end_only

    def _masks_for(self, key: str, terms: TermSet) -> TokenMasks:
        masks = self._term_sets.get(key)
        if masks is None:
            masks = TokenMasks(terms.automaton(), self.vocab, self.width)
            self._term_sets[key] = masks
            self._start_warming(key, masks)
            if len(self._term_sets) > MAX_CACHED_TERM_SETS:
                old_key, _ = self._term_sets.popitem(last=False)
                self._banned_ids = {k: v for k, v in self._banned_ids.items() if k[0] != old_key}
                stop = self._warmers.pop(old_key, None)
                if stop is not None:
                    stop.set()
        else:
            self._term_sets.move_to_end(key)
        return masks

    def _start_warming(self, key: str, masks: TokenMasks) -> None:
        stop = threading.Event()
        self._warmers[key] = stop

        def warm() -> None:
            _spare_time_only()
            try:
                count = masks.warm_start(WARM_DEPTH, WARM_BUDGET_S, stop)
                log.info("Quell: %d start masks precomputed for term set %s", count, key[:12])
            except Exception:
                log.exception("Quell: precomputing masks failed for term set %s", key[:12])
            finally:
                self._warmers.pop(key, None)

        threading.Thread(target=warm, name=f"quell-warm-{key[:8]}", daemon=True).start()

    def _step_banned(self, request: _Request) -> torch.Tensor:
        cursor, masks = request.cursor, request.masks
        if cursor is None or masks is None:
            return self._end_only
        try:
            output = request.output_ids
            while cursor.consumed < len(output):
                token = output[cursor.consumed]
                if token < 0:
                    break  # async scheduling placeholder: the real id arrives before the next step
                cursor.advance(token)
            produced = cursor.consumed
            last = request.max_tokens is not None and produced + 1 >= request.max_tokens
            last = last or request.prompt_len + produced + 1 >= self.max_model_len
            key = (request.set_key, cursor.state, cursor.tail, cursor.after_lower, last)
            ids = self._banned_ids.get(key)
            if ids is None:
                if len(self._banned_ids) >= MAX_CACHED_BANNED_IDS:
                    self._banned_ids.clear()
                banned = masks.banned(cursor.state, cursor.tail, after_lower=cursor.after_lower, last=last)
                ids = torch.from_numpy(np.flatnonzero(banned)).to(self.device, non_blocking=True)
                self._banned_ids[key] = ids
            return ids
        except Exception:
            log.exception("Quell: advancing a request failed; ending it")
            request.cursor = None
            return self._end_only

    # ---- logits -------------------------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._requests:
            return logits
        try:
            for index, request in self._requests.items():
                banned = request.banned if request.banned is not None else self._end_only
                if banned.numel():
                    logits[index].index_fill_(0, banned, -float("inf"))
        except Exception:
            log.exception("Quell: applying masks failed; ending every masked request")
            for index in self._requests:
                try:
                    logits[index].index_fill_(0, self._end_only, -float("inf"))
                except Exception:
                    log.exception("Quell: could not end request at batch index %d", index)
        return logits
