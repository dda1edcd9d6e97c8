"""The vLLM plugin's logits processor driven without a server, by a 'model' that greedily copies a target text.

Each step's logits prefer the target's next token (10), then the token after it (5, so the copier skips a masked
token rather than stopping), then " and" (1); the processor's `apply` masks what it must and the argmax is taken,
as greedy decoding would. Tests use it to show a mask holds against the most determined copier there is."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

VOCAB = 49152  # SmolLM2's


def processor_and_tokenizer(model_dir: Path) -> tuple[Any, Any]:
    """The real QuellLogitsProcessor (no engine) and the model's tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from filters.vllm_plugin import QuellLogitsProcessor

    config = types.SimpleNamespace(model_config=types.SimpleNamespace(
        get_vocab_size=lambda: VOCAB, max_model_len=2048, tokenizer=str(model_dir), tokenizer_revision=None))  # fmt: skip
    return QuellLogitsProcessor(config, torch.device("cpu"), False), AutoTokenizer.from_pretrained(str(model_dir))


def copy_greedily(proc: Any, tokenizer: Any, params: Any, prompt_ids: list[int], target: str) -> tuple[str, int]:
    """Decode one request that tries to write `target`; returns the text and how many steps the mask diverted."""
    import torch

    lure = tokenizer.encode(target, add_special_tokens=False)
    and_id = tokenizer.encode(" and", add_special_tokens=False)[0]
    output: list[int] = []
    proc._requests = {0: proc._new_request(params, list(prompt_ids), output)}
    diverted = 0
    for step in range(len(lure)):
        proc.update_state(None)
        logits = torch.zeros(1, VOCAB)
        logits[0, lure[step]] = 10.0
        logits[0, lure[(step + 1) % len(lure)]] = 5.0
        logits[0, and_id] = 1.0
        choice = int(proc.apply(logits).argmax())
        diverted += choice != lure[step]
        output.append(choice)
    return tokenizer.decode(output), diverted
