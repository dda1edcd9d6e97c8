"""Schemathesis over the gateway's OpenAPI schema (every /v1 and /admin route), with and without the operator token:
no 5xx, and every 4xx an OpenAI-style error object. Served over real HTTP in-process; the backend is the replay of
recorded vLLM answers, which refuses anything it has no recording for with a 599 that the gateway relays as its
502 "the model backend failed": a fuzzed request that reaches it was accepted by the gateway, and what vLLM would
say to it is vLLM's business. QUELL_FUZZ_EXAMPLES sets the examples per route and token (`make soak` raises it).

(Schemathesis's own pytest plugin does not run under pytest 9, so each operation's strategy is driven by hypothesis
here directly.)"""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, given, settings

EXAMPLES = int(os.environ.get("QUELL_FUZZ_EXAMPLES", "25"))
TOKEN = "operator-token-123"


def test_no_5xx_and_every_4xx_is_an_openai_error(serve_gateway) -> None:
    tried: dict[str, int] = {}
    with serve_gateway(admin_token=TOKEN) as (base, replay):
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        schema.config.update(base_url=base)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10
        for operation in operations:
            for headers in ({}, {"authorization": f"Bearer {TOKEN}"}):
                _fuzz(operation, headers, replay, tried)
    print(f"fuzz: {sum(tried.values())} cases over {len(operations)} operations, statuses {sorted(tried.items())}")


def _fuzz(operation, headers: dict, replay, tried: dict[str, int]) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                          database=None)  # fmt: skip
    def check(case) -> None:
        before = len(replay.requests)
        response = case.call(headers=headers)
        reached_backend = len(replay.requests) > before
        status = response.status_code
        tried[f"{status}"] = tried.get(f"{status}", 0) + 1
        assert status < 500 or (status == 502 and reached_backend), (
                        operation.label, status, response.text[:300], case.body)  # fmt: skip
        if 400 <= status < 500:
            error = response.json().get("error")
            assert isinstance(error, dict) and error.get("message") and error.get("type"), response.text

    check()
