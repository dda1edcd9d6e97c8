"""`quell index build`: build the protected-text indexes of policy files ahead of time, with progress.

The gateway builds a missing index when it loads a policy (at start, or in the background on a reload while the
last good policies serve); building ahead of time makes that load a read from disk. Indexes are written where the
gateway and the vLLM plugin read them: --index-dir, else $QUELL_INDEX_DIR, else $QUELL_CACHE_DIR/protected.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

index_app = typer.Typer(no_args_is_help=True, help="Protected-text indexes.")
console = Console()
err_console = Console(stderr=True)


@index_app.command("build")
def index_build(
    paths: Annotated[list[Path], typer.Argument(help="Policy files, or directories of them")],
    index_dir: Annotated[
        Path | None, typer.Option(help="Where to write [env QUELL_INDEX_DIR, default $QUELL_CACHE_DIR/protected]")
    ] = None,
) -> None:
    """Build every protected_text index of the policies (an index already on disk is kept). Exit 1 on any problem
    (a policy that does not validate, a source that cannot be read), 0 when every index is on disk."""
    from filters.policy_loader import PolicyError, parse_policy, policy_files
    from filters.protected_text import CorpusError, ProtectedIndex, default_index_dir

    directory = (index_dir or default_index_dir()).resolve()
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            err_console.print(f"[red]error[/]: {path} does not exist")
            raise typer.Exit(2)
        files += policy_files(path) if path.is_dir() else [path]
    failed = 0
    table = Table("policy", "target", "files", "words", "index", "runs", "MiB", "seconds", "status")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("words"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())  # fmt: skip
    for file in files:
        try:
            policy = parse_policy(file.read_text(encoding="utf-8"), str(file), file.parent)
        except (OSError, UnicodeDecodeError) as exc:
            failed += 1
            console.print(f"[red]ERROR[/] {file}: cannot read: {exc}", highlight=False, soft_wrap=True)
            continue
        except PolicyError as exc:
            failed += 1
            for issue in exc.issues:
                console.print(f"[red]ERROR[/] {issue}", highlight=False, soft_wrap=True)
            continue
        for target in policy.targets:
            if target.protected_text is None:
                continue
            corpus = target.protected_text.corpus
            row = [policy.ref, target.id, str(len(corpus.files)), f"{corpus.words:,}", corpus.digest[:12]]
            try:
                index = ProtectedIndex.load(directory, corpus.digest)
                table.add_row(*row, f"{len(index.grams):,}", f"{index.nbytes / 2**20:.1f}", "", "on disk")
                continue
            except FileNotFoundError:
                pass
            started = time.perf_counter()
            try:
                with Progress(*columns, console=err_console, transient=True) as progress:
                    task = progress.add_task(f"{target.id} ({corpus.digest[:12]})", total=corpus.words)
                    index = ProtectedIndex.build(corpus, lambda done, task=task: progress.update(task, completed=done))
                index.save(directory)
            except (OSError, MemoryError, CorpusError) as exc:
                failed += 1
                table.add_row(*row, "", "", "", f"[red]failed: {exc}[/]")
                continue
            table.add_row(*row, f"{len(index.grams):,}", f"{index.nbytes / 2**20:.1f}",
                          f"{time.perf_counter() - started:.1f}", "built")  # fmt: skip
    console.print(table)
    console.print(f"indexes in {directory}", highlight=False)
    if not files:
        err_console.print("[yellow]no policy files (*.yaml, *.yml) found[/]")
        raise typer.Exit(1)
    raise typer.Exit(1 if failed else 0)
