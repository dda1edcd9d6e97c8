"""Request bodies of the OpenAI-compatible routes: the fields the gateway reads are typed, the rest pass through.

Typing the common fields gives clients a 400 that names the field for a wrong type, before anything reaches the
backend. Unknown fields are forwarded unchanged, so vLLM extensions keep working.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Passthrough(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Passthrough):
    include_usage: bool | None = None


class ChatMessage(_Passthrough):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None


class QuellOptions(BaseModel):
    """Quell's own request options (`extra_body={"quell": {...}}` in the openai SDK); never sent to the backend."""

    model_config = ConfigDict(extra="forbid")
    policies: list[str] = Field(default_factory=list, description="policy ids to add to the key's defaults")


class _Sampling(_Passthrough):
    model: str = Field(min_length=1)
    stream: bool = Field(False, strict=True)  # "yes" or 1 is a client bug to report, not a stream to start
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    logprobs: bool | int | None = None
    vllm_xargs: dict[str, Any] | None = None
    quell: QuellOptions | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]


def check_sendable(value: Any, path: str = "") -> None:
    """Refuse what strict JSON cannot carry to the backend (a lone surrogate, NaN or an infinity), naming the field.
    Python's JSON parser accepts both, and passthrough fields are not typed, so they would surface as a 500."""
    from service.errors import APIError  # schemas stay importable without the service's error types

    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, f"{path or 'body'}: text holds a lone UTF-16 surrogate (not valid Unicode)",
                           param=path or None, code="invalid_value") from None  # fmt: skip
    elif isinstance(value, float) and not math.isfinite(value):
        raise APIError(400, f"{path or 'body'}: {value} is not a JSON number", param=path or None, code="invalid_value")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_sendable(key, path)
            check_sendable(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_sendable(item, f"{path}[{i}]")
