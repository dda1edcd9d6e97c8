"""A MemFree-style baseline (Ippolito et al. 2022) for `bench.protected_text`: token n-gram banning at decode time.

MemFree bans the next token when it would complete an n-gram of *tokens* found in the protected corpus. It is the
field's decode-time answer to verbatim copying, and it reads tokens, not words: an ALL-CAPS or re-spaced copy is
another token sequence and passes. Quell's protected-text mask reads normalised words instead; the bench puts the
two side by side.

Bench only, never loaded by the product: vLLM is started with
`--logits-processors filters.vllm_plugin:QuellLogitsProcessor bench.memfree:MemFreeLogitsProcessor`, and a request
opts in with `vllm_xargs: {"memfree_table": "<path of a table written by write_table>"}`. The table is an int32
array of shape (rows, n): every n-gram of corpus token ids; the processor bans `row[-1]` after `row[:-1]`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

if TYPE_CHECKING:
    from vllm.config import VllmConfig

log = logging.getLogger(__name__)
KEY = "memfree_table"


def write_table(path: Path, token_docs: Sequence[Sequence[int]], n: int) -> int:
    """Every n-gram of token ids of each document (none across documents) to `path` (.npy); returns how many."""
    rows = [doc[i : i + n] for doc in token_docs for i in range(len(doc) - n + 1)]
    table = np.unique(np.array(rows, dtype=np.int32).reshape(-1, n), axis=0)
    np.save(path, table)
    return len(table)


class _Table:
    def __init__(self, path: str):
        rows = np.load(path)
        self.n = int(rows.shape[1])
        self.next: dict[tuple[int, ...], list[int]] = {}
        for row in rows.tolist():
            self.next.setdefault(tuple(row[:-1]), []).append(row[-1])


def _path(params: SamplingParams) -> str | None:
    raw = (params.extra_args or {}).get(KEY)
    if raw is None:
        return None
    if not isinstance(raw, str) or not Path(raw).is_file():
        raise ValueError(f"vllm_xargs.{KEY} must be the path of a MemFree table file, got {raw!r}")
    return raw


class MemFreeLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        _path(sampling_params)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        self.device = torch.device(device)
        self._tables: dict[str, _Table] = {}
        self._requests: dict[int, tuple[_Table, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def needs_output_token_ids(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self._requests, batch_update, self._new)

    def _new(self, params: SamplingParams, prompt_ids: list[int] | None,
             output_ids: list[int]) -> tuple[_Table, list[int]] | None:  # fmt: skip
        try:
            path = _path(params)
            if path is None:
                return None
            if path not in self._tables:
                self._tables[path] = _Table(path)
            return self._tables[path], output_ids
        except Exception:
            log.exception("MemFree: could not load the table; this request runs without it")
            return None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, (table, output) in self._requests.items():
            real = [t for t in output if t >= 0]
            if len(real) < table.n - 1:
                continue
            banned = table.next.get(tuple(real[len(real) - table.n + 1 :]))
            if banned:
                logits[index, torch.tensor(banned, dtype=torch.int64, device=logits.device)] = -float("inf")
        return logits
