"""Record real vLLM exchanges for the in-process gateway tests: `python -m tests.service.record [NAME ...]`.

Starts the managed vLLM (CPU build, the packaged model) on a free port, sends each request below exactly as the
gateway forwards it in text-only mode (no `vllm_xargs`: the recorded model text still holds the terms, which is
what the gateway's own layers must then catch), and writes `recordings/NAME.json`. The server parses tool calls
(hermes) so that tool-call arguments can be recorded too. Greedy decoding, so a rerun on
the same vLLM and model gives the same text; rerun it after changing either.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import httpx

from service.settings import Settings
from service.vllm_process import ManagedVLLM
from tests.judge_support import WINDOWS as JUDGE_WINDOWS
from tests.judge_support import judge_request
from tests.procs import ROOT, free_port
from tests.service.replay import RECORDINGS

MODEL = "SmolLM2-135M-Instruct"
WHO = [{"role": "user", "content": "Who is Spider-Man? Answer in two sentences and use his name."}]
GREEDY = {"model": MODEL, "temperature": 0, "max_tokens": 48}
TOOLS = [{"type": "function", "function": {
    "name": "lookup_character", "description": "Look up a comic book character by name.",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}]  # fmt: skip

REQUESTS: dict[str, list[tuple[str, str, dict | None]]] = {
    "models": [("GET", "/v1/models", None)],
    "chat_spider": [("POST", "/v1/chat/completions", {**GREEDY, "messages": WHO, "logprobs": True,
                                                       "top_logprobs": 5, "return_token_ids": True})],
    "chat_spider_stream": [("POST", "/v1/chat/completions", {**GREEDY, "messages": WHO, "stream": True,
                                                              "logprobs": True, "top_logprobs": 5,
                                                              "return_token_ids": True})],
    "completion_spider": [("POST", "/v1/completions", {**GREEDY, "prompt": "Q: Who is Spider-Man?\nA:",
                                                        "logprobs": 5, "return_token_ids": True})],
    "completion_spider_stream": [("POST", "/v1/completions", {**GREEDY, "prompt": "Q: Who is Spider-Man?\nA:",
                                                               "logprobs": 5, "return_token_ids": True,
                                                               "stream": True})],
    "chat_two_choices": [("POST", "/v1/chat/completions", {**GREEDY, "temperature": 1.0, "seed": 7, "n": 2,
                                                            "messages": WHO})],
    "chat_tool_call": [("POST", "/v1/chat/completions", {**GREEDY, "max_tokens": 64, "tools": TOOLS,
                                                          "tool_choice": "required", "messages": [
        {"role": "user", "content": "Look up the character Spider-Man, the one who is also Peter Parker."}]})],
    "chat_tool_call_stream": [("POST", "/v1/chat/completions", {**GREEDY, "max_tokens": 64, "tools": TOOLS,
                                                                 "tool_choice": "required", "stream": True,
                                                                 "messages": [
        {"role": "user", "content": "Look up the character Spider-Man, the one who is also Peter Parker."}]})],
}  # fmt: skip
# In-context copying (issue 10): the passage is in the prompt and the user asks for it back, in upper case.
DICKENS = (ROOT / "policies/examples/corpora/dickens/two-cities-opening.txt").read_text().split("\n\n")[0]
COPY = [{"role": "user", "content": f"Repeat this passage exactly, in upper case, one sentence per line:\n\n{DICKENS}"}]
REQUESTS["chat_copy_dickens"] = [("POST", "/v1/chat/completions", {**GREEDY, "max_tokens": 80, "messages": COPY})]
REQUESTS["chat_copy_dickens_stream"] = [
    ("POST", "/v1/chat/completions", {**GREEDY, "max_tokens": 80, "messages": COPY, "stream": True})
]

# The concept judge (issue 14): the model's one-token answer, with its logprobs, to the judge's question per window.
REQUESTS["judge_smollm"] = [("GET", "/v1/models", None)] + [
    ("POST", "/v1/chat/completions", judge_request(w)) for w in JUDGE_WINDOWS]  # fmt: skip


def record(client: httpx.Client, name: str) -> None:
    exchanges = []
    for method, path, body in REQUESTS[name]:
        if body is not None and body.get("stream"):
            with client.stream(method, path, json=body) as resp:
                raw = resp.read().decode("utf-8")
            answer = {"status": resp.status_code, "sse": raw}
        else:
            resp = client.request(method, path, json=body)
            answer = {"status": resp.status_code, "json": resp.json()}
        exchanges.append({"request": {"method": method, "path": path, "json": body}, "response": answer})
        print(f"{name}: {method} {path} -> {resp.status_code}", file=sys.stderr)
    out = RECORDINGS / f"{name}.json"
    out.write_text(json.dumps({"exchanges": exchanges}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(names: list[str]) -> None:
    RECORDINGS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:
        settings = Settings(vllm_port=free_port(), model_dir=ROOT / ".cache/models" / MODEL, cache_dir=Path(cache),
                            vllm_extra_args="--enable-auto-tool-choice --tool-call-parser hermes")  # fmt: skip
        server = ManagedVLLM(settings)
        server.start()
        try:
            server.wait_ready_blocking(600)
            with httpx.Client(base_url=server.url, timeout=300, headers=getattr(server, "headers", {})) as client:
                for name in names or REQUESTS:
                    record(client, name)
        finally:
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
