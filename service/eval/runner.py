"""Send every (probe, transform, config) once, concurrently, appending one JSON line per answer to results.jsonl.

A line is written as soon as its answer arrives, so an interrupted run loses at most the requests in flight;
`resume=True` skips every key already in the file. Work is ordered probe by probe with every config of a probe
side by side, so a partial file still compares the columns on the same prompts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from filters.policy import Policy
from service.eval.configs import RunConfig, policy_terms
from service.eval.probes import Probe
from service.eval.transforms import NONE, Transform

POLICY_HEADER = "x-quell-policies"


@dataclass(frozen=True)
class Job:
    probe: Probe
    transform: Transform
    config: RunConfig

    @property
    def key(self) -> str:
        return f"{self.probe.id}|{self.transform.name}|{self.config.name}"


def plan(probes: Sequence[Probe], transforms: Sequence[Transform], configs: Sequence[RunConfig]) -> list[Job]:
    """Attack transforms apply to probes only; neighbours and benign prompts are asked as they are."""
    jobs = []
    for probe in probes:
        for transform in transforms if probe.group == "probe" else [NONE]:
            jobs.extend(Job(probe, transform, config) for config in configs)
    return jobs


def done_keys(results: Path) -> set[str]:
    """Keys already answered. Failed requests (transport errors, HTTP errors other than a refused prompt) and a
    torn last line from a killed run are not done: a resumed run tries them again."""
    return {row["key"] for row in read_results(results) if answered(row)}


def answered(row: dict) -> bool:
    return row.get("status") == 200 or row.get("error_code") == "content_filter"


def _error_code(resp: httpx.Response) -> str | None:
    try:
        error = resp.json().get("error") or {}
    except ValueError:
        return None
    return error.get("code") if isinstance(error, dict) else None


async def _one(client: httpx.AsyncClient, job: Job, url: str, policy: Policy, model: str, max_tokens: int,
               backend_key: str | None = None) -> dict:  # fmt: skip
    message = job.probe.user_message(job.transform.apply(job.probe.prompt, policy_terms(policy)))
    body = job.config.body(message, policy, model, max_tokens)
    if job.config.via == "gateway":
        headers = {POLICY_HEADER: policy.id}
    else:  # straight to vLLM, which requires its key
        headers = {"Authorization": f"Bearer {backend_key}"} if backend_key else {}
    row = {"key": job.key, "probe_id": job.probe.id, "group": job.probe.group, "role": job.probe.role,
           "probe_type": job.probe.probe_type, "lang": job.probe.lang, "target": job.probe.target,
           "transform": job.transform.name, "config": job.config.name, "prompt": message,
           "answers": list(job.probe.answers)}  # fmt: skip
    started = time.perf_counter()
    try:
        resp = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
    except httpx.HTTPError as exc:
        return {**row, "status": None, "error": f"{type(exc).__name__}: {exc}", "output": None}
    row["status"] = resp.status_code
    row["elapsed_s"] = round(time.perf_counter() - started, 3)
    if resp.status_code != 200:
        return {**row, "error_code": _error_code(resp), "error": resp.text[:300], "output": None}
    choice = resp.json()["choices"][0]
    return {**row, "output": (choice.get("message") or {}).get("content") or "",
            "finish_reason": choice.get("finish_reason"),
            "content_filter_results": choice.get("content_filter_results") or {},
            "policies": resp.headers.get(POLICY_HEADER)}  # fmt: skip


async def run_jobs(jobs: Sequence[Job], urls: dict[str, str], policy: Policy, results: Path, *, model: str,
                   max_tokens: int, concurrency: int, timeout_s: float = 600.0,
                   backend_key: str | None = None) -> int:  # fmt: skip
    """Run `jobs` (config name -> base URL in `urls`), append each answer to `results`; returns answers written."""
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    written = 0
    columns = (TextColumn("[bold]quell eval[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns) as progress, results.open("a", encoding="utf-8") as out:
        task = progress.add_task("requests", total=len(jobs))
        async with httpx.AsyncClient(timeout=timeout_s) as client:

            async def worker() -> None:
                nonlocal written
                while True:
                    try:
                        job = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    row = await _one(client, job, urls[job.config.name], policy, model, max_tokens, backend_key)
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    out.flush()
                    written += 1
                    progress.advance(task)

            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return written


def read_results(results: Path) -> list[dict]:
    rows = []
    if results.exists():
        for line in results.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
