"""`quell eval`: run a policy's probes through the gateway (one per layer) and the baselines, write the report.

    quell eval --policy policies/examples/harry-potter.yaml --probes ../shared/eval-data/hp_forget_probes.jsonl \
        --neighbors ../shared/eval-data/hp_neighbor_probes.jsonl --out eval-out/hp --limit 40

Writes OUT/results.jsonl (one line per answer, appended as they arrive), OUT/summary.json and OUT/report.html.
Ctrl-C or SIGTERM stops cleanly (every gateway and vLLM it started is stopped; so does its death by SIGKILL);
`--resume` carries on where it stopped. With `--backend-url`, the backend's key comes from QUELL_BACKEND_API_KEY.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True)

ProbesFile = Annotated[Path, typer.Option("--probes", help="JSONL probes that must not leak (../shared/eval-data)")]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error[/]: {message}", highlight=False)
    return typer.Exit(2)


def eval_command(
    policy: Annotated[Path, typer.Option(help="The policy file to evaluate (its `default` does not matter)")],
    probes: ProbesFile,
    out: Annotated[Path, typer.Option(help="Output folder: results.jsonl, summary.json, report.html")],
    neighbors: Annotated[Path | None, typer.Option(help="JSONL near neighbours that must not be blocked")] = None,
    benign: Annotated[Path | None, typer.Option(help="JSONL benign prompts (the report half is used)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N rows per file, stratified by type")] = None,
    transforms: Annotated[str, typer.Option(help="Comma list of attack transforms, or 'all'")] = "none",
    configs: Annotated[str | None, typer.Option(help="Comma list of columns (default: all that can run)")] = None,
    target: Annotated[str | None, typer.Option(help="Keep only rows whose `target` is this")] = None,
    backend_url: Annotated[str | None, typer.Option(help="A running vLLM with the Quell plugin")] = None,
    max_tokens: Annotated[int, typer.Option(min=1)] = 64,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight")] = 8,
    semantic_scores: Annotated[
        bool,
        typer.Option(
            help="Score unfiltered outputs with the policy's semantic layers (threshold curves, in-process columns)"
        ),
    ] = True,
    resume: Annotated[bool, typer.Option(help="Keep OUT/results.jsonl and skip what it already answered")] = False,
) -> None:
    """Measure leak rate and over-blocking of a policy, per layer, against baselines; write an HTML report."""
    from filters.policy_loader import PolicyError, load_policy_file
    from service.eval import configs as configs_mod
    from service.eval import transforms as transforms_mod
    from service.eval.probes import ProbeFileError, read_probes, report_half, stratified
    from service.settings import Settings

    try:
        pol = load_policy_file(policy)
    except PolicyError as exc:
        raise _fail("; ".join(str(i) for i in exc.issues)) from None
    try:
        chosen = [p for p in transforms.split(",") if p.strip()] if transforms != "all" else None
        tfs = transforms_mod.by_names(chosen) if chosen else list(transforms_mod.TRANSFORMS)
        semantic_ok = "semantic" in Settings.model_fields
        has_judge = any(t.concept is not None and t.concept.judge is not None for t in pol.targets)
        run_configs, skipped = configs_mod.select(configs.split(",") if configs else None, semantic_ok, has_judge)
        selected = stratified(read_probes(probes, "probe", target), limit)
        if neighbors:
            selected += stratified(read_probes(neighbors, "neighbor", target), limit)
        if benign:
            selected += stratified(report_half(read_probes(benign, "benign")), limit)
    except (ValueError, ProbeFileError) as exc:
        raise _fail(str(exc)) from None
    if not any(p.group == "probe" for p in selected):
        raise _fail(f"no probes selected from {probes}" + (f" for target {target!r}" if target else ""))
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    if results.exists() and results.stat().st_size and not resume:
        raise _fail(f"{results} exists: pass --resume to continue it, or choose another --out")

    from service.eval.gateways import running
    from service.eval.runner import done_keys, plan, read_results, run_jobs

    code_state = _git_state()  # before the run: what the gateways started from
    done = done_keys(results)
    jobs = [j for j in plan(selected, tfs, run_configs) if j.key not in done]
    model = Settings().served_model_name
    err.print(f"{len(selected)} prompts x {len(tfs)} transform(s) x {len(run_configs)} columns: "
              f"{len(jobs)} requests to run ({len(done)} done before)", highlight=False)  # fmt: skip
    if jobs:
        key = Settings().backend_api_key if backend_url else None  # QUELL_BACKEND_API_KEY, as for the gateway
        previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops every gateway and vLLM, as Ctrl-C does
        try:
            with running(run_configs, policy, out / "work", backend_url, key) as live:
                urls = {c.name: live.backend if c.via == "backend" else live.gateways[c.name] for c in run_configs}
                asyncio.run(run_jobs(jobs, urls, pol, results, model=model, max_tokens=max_tokens,
                                     concurrency=concurrency, backend_key=live.backend_key))  # fmt: skip
        except KeyboardInterrupt:
            err.print(f"[yellow]interrupted[/]: answers so far are in {results}; rerun with --resume to go on")
            raise typer.Exit(130) from None
        except (RuntimeError, TimeoutError) as exc:
            raise _fail(str(exc)) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    from service.eval.report import render
    from service.eval.summary import judged_rows, latest, summarise
    from service.eval.thresholds import semantic_scores as score_rows

    keys = {j.key for j in plan(selected, tfs, run_configs)}
    rows = [r for r in latest(read_results(results)) if r["key"] in keys]
    terms = configs_mod.policy_terms(pol)
    layers = []
    notes = []
    if semantic_scores:
        from filters.embedding import EmbedderError

        unfiltered = [r for r in judged_rows(rows, run_configs, terms) if r["config"] == configs_mod.NONE]
        try:
            layers = score_rows(pol, unfiltered)
        except (ImportError, EmbedderError) as exc:
            notes.append(f"No threshold curves or in-process semantic columns: {exc}")
            err.print(f"[yellow]semantic scores skipped[/]: {exc}", highlight=False)
    from service.eval.judge import DataJudge
    from service.eval.verbatim import VerbatimJudge

    verbatim = VerbatimJudge(pol)  # protected-text targets: longest verbatim run, over the limit, ROUGE-L
    summary = summarise(rows, run_configs, terms, layers, verbatim or None, DataJudge.of(pol))
    if not semantic_ok:
        notes.append(
            "This gateway build has no QUELL_SEMANTIC setting: the `all` column runs the decode mask "
            "and the text backstop only; the semantic layers are measured in process (@inproc columns)."
        )
    ready_file = out / "work" / "gateways.json"
    gateways_ready = json.loads(ready_file.read_text()) if ready_file.exists() else {}
    descriptions = {c.name: c.description for c in run_configs}
    descriptions.update({f"{s.layer}@inproc": f"{s.layer} layer applied in process to the unfiltered outputs at "
                         f"the policy's threshold {s.threshold:.3f}" for s in layers})  # fmt: skip
    summary["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "model": model, "policy": pol.ref,
        "policy_file": str(policy), "probes": str(probes), "neighbors": str(neighbors or ""),
        "benign": str(benign or ""), "limit": limit, "max_tokens": max_tokens,
        "transforms": [t.name for t in tfs], "descriptions": descriptions, "skipped": skipped, "notes": notes,
        "n_probes": sum(p.group == "probe" for p in selected),
        "n_neighbors": sum(p.group == "neighbor" for p in selected),
        "n_benign": sum(p.group == "benign" for p in selected),
        "command": "quell eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "git": code_state, "gateways_ready": gateways_ready,
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    (out / "report.html").write_text(render(summary), encoding="utf-8")
    _print_headline(summary)
    err.print(f"wrote {out / 'report.html'}, {out / 'summary.json'}, {results}", highlight=False)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _git_state() -> str:
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    return f"{head}{' (working tree has uncommitted changes)' if git('status', '--porcelain', '-uno') else ''}"


def _print_headline(summary: dict) -> None:
    from rich.table import Table

    from service.eval.stats import Rate

    def cell(rate: dict | None) -> str:
        return str(Rate(rate["k"], rate["n"])) if rate else "n/a"

    table = Table("column", "leak", "answer leak", "term leak (as read)", "term (exact)", "person's data",
                  "over-blocking")  # fmt: skip
    for c in summary["columns"]:
        base = summary["leak"][c].get("none", {})
        table.add_row(c, cell(base.get("leak")), cell(base.get("answer")), cell(base.get("term")),
                      cell(base.get("term_exact")), cell(base.get("data")),
                      cell(summary["over_blocking"][c]["all"]))  # fmt: skip
    Console().print(table)
    if not any(summary["leak"][c].get("none", {}).get("protected") for c in summary["columns"]):
        return
    table = Table("column", "run over the limit", "longest run (max)", "longest run (mean)", "ROUGE-L (mean)",
                  "innocent over the limit")  # fmt: skip
    for c in summary["columns"]:
        p = summary["leak"][c].get("none", {}).get("protected") or {}
        q = summary["over_blocking"][c].get("protected") or {}
        rouge = p.get("rouge_l_mean")
        table.add_row(c, cell(p.get("over_limit")), str(p.get("longest_max", "n/a")),
                      str(p.get("longest_mean", "n/a")), "n/a" if rouge is None else f"{rouge:.3f}",
                      cell(q.get("over_limit")))  # fmt: skip
    Console().print(table)
