"""What differs between the two OpenAI generation endpoints, said once: where a choice's model-written texts are, how
a refusal replaces them, how the prompt reads as messages, and which request fields would leak the unfiltered model.

Everything else (forwarding, guarding, streaming) is shared and never asks which endpoint it serves.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import APIError

REASONING_FIELDS = ("reasoning_content", "reasoning")


@dataclass
class Channel:
    """One text the model produced inside a choice: the content, the reasoning, or one tool call's arguments.
    Each is guarded on its own (a term split across two of them is not one term to a reader)."""

    key: tuple[str, int]
    holder: dict
    name: str

    @property
    def text(self) -> str:
        value = self.holder.get(self.name)
        return value if isinstance(value, str) else ""

    def set(self, text: str) -> None:
        self.holder[self.name] = text


class Endpoint:
    name: str
    """The label in metrics and logs."""
    path: str
    """The backend path it forwards to (the same as its own)."""

    def channels(self, choice: dict, streaming: bool) -> list[Channel]:
        """Every model-written text of a choice (or of a stream chunk's choice), in the order the model writes them."""
        raise NotImplementedError

    def new_channel(self, choice: dict, key: tuple[str, int]) -> Channel:
        """A channel this stream chunk did not carry, created to release the text its guard still held."""
        raise NotImplementedError

    def answer(self, choice: dict, streaming: bool) -> str:
        """The answer text a refusal follows in a stream chunk."""
        raise NotImplementedError

    def set_refusal(self, choice: dict, streaming: bool, text: str) -> None:
        """A refused choice says the refusal and nothing else the model wrote."""
        raise NotImplementedError

    def prompt_messages(self, body: dict) -> list[dict]:
        """The input as chat messages, for the input screen."""
        raise NotImplementedError

    def reject_side_channels(self, body: dict) -> None:
        """Called while an output policy applies. Prompt logprobs rank what the model would say at each prompt
        position before any layer can act: they would hand a client the unmasked continuation (`Spider-` -> `Man`)."""
        if body.get("prompt_logprobs") is not None:
            raise APIError(400, "prompt_logprobs are not available while output policies apply: they show the "
                           "unfiltered model's ranking", param="prompt_logprobs", code="unsupported_under_policy")  # fmt: skip


class ChatEndpoint(Endpoint):
    name = "chat"
    path = "/v1/chat/completions"

    def channels(self, choice: dict, streaming: bool) -> list[Channel]:
        holder = choice.get("delta" if streaming else "message")
        if not isinstance(holder, dict):
            return []
        out = [Channel((name, 0), holder, name) for name in REASONING_FIELDS if isinstance(holder.get(name), str)]
        if isinstance(holder.get("content"), str):
            out.append(Channel(("content", 0), holder, "content"))
        for position, call in enumerate(holder.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                out.append(Channel(("tool", int(call.get("index", position))), function, "arguments"))
        return out

    def new_channel(self, choice: dict, key: tuple[str, int]) -> Channel:
        delta = choice.setdefault("delta", {})
        name, index = key
        if name == "tool":
            call = {"index": index, "function": {"arguments": ""}}
            delta.setdefault("tool_calls", []).append(call)
            return Channel(key, call["function"], "arguments")
        return Channel(key, delta, name)

    def answer(self, choice: dict, streaming: bool) -> str:
        holder = choice.get("delta" if streaming else "message") or {}
        return holder.get("content") or ""

    def set_refusal(self, choice: dict, streaming: bool, text: str) -> None:
        holder = choice.setdefault("delta" if streaming else "message", {})
        for name in REASONING_FIELDS:
            holder.pop(name, None)
        holder.pop("tool_calls", None)
        holder["content"] = text

    def prompt_messages(self, body: dict) -> list[dict]:
        return list(body.get("messages") or [])


class CompletionEndpoint(Endpoint):
    name = "completion"
    path = "/v1/completions"

    def channels(self, choice: dict, streaming: bool) -> list[Channel]:
        return [Channel(("text", 0), choice, "text")] if isinstance(choice.get("text"), str) else []

    def new_channel(self, choice: dict, key: tuple[str, int]) -> Channel:
        return Channel(key, choice, "text")

    def answer(self, choice: dict, streaming: bool) -> str:
        return choice.get("text") or ""

    def set_refusal(self, choice: dict, streaming: bool, text: str) -> None:
        choice["text"] = text

    def prompt_messages(self, body: dict) -> list[dict]:
        """One user message per prompt string; token-id prompts cannot be read."""
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not all(isinstance(p, str) for p in prompts or []):
            raise APIError(400, "token-id prompts cannot be screened by this gateway's input policies; send text",
                           param="prompt", code="content_filter_unscreenable")  # fmt: skip
        return [{"role": "user", "content": p} for p in prompts or []]

    def reject_side_channels(self, body: dict) -> None:
        super().reject_side_channels(body)
        if body.get("echo") and body.get("logprobs") is not None:
            raise APIError(400, "echo with logprobs is not available while output policies apply: the prompt's "
                           "top_logprobs show the unfiltered model's ranking", param="echo",
                           code="unsupported_under_policy")  # fmt: skip


CHAT = ChatEndpoint()
COMPLETION = CompletionEndpoint()
