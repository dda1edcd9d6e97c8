"""`quell audit`: read the audit store (newest first) as a table or JSON lines.

Exit codes: 0 events shown, 1 no event matched, 2 bad arguments, 3 the store cannot be read (unreachable, no audit
table yet, unusable URL). Register with `app.command("audit")(audit)` on the main `quell` app; runs alone as
`python -m service.cli_audit`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

DEFAULT_URL = "sqlite:///.cache/audit.db"
EXIT_NO_MATCH, EXIT_BAD_INPUT, EXIT_UNAVAILABLE = 1, 2, 3


def audit(
    since: Annotated[str | None, typer.Option(help="Only events after this: 15m, 2h, 7d, or an ISO time (UTC)")] = None,
    policy: Annotated[str | None, typer.Option(help="A policy id (all versions) or id@version")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many events, newest first")] = 50,
    url: Annotated[str, typer.Option(envvar="QUELL_AUDIT_URL", help="Audit store (SQLAlchemy URL)")] = DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table")] = False,
) -> None:
    """Show suppression decisions from the audit store (exit 1 when none matched, 3 when the store can't be read)."""
    console, err_console = Console(), Console(stderr=True)
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from service.audit import AuditStoreError, events_table, make_engine, parse_since, query_events

    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        err_console.print(f"[red]error[/]: --since: {exc}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        err_console.print(f"[red]error[/]: --url: not a SQLAlchemy URL: {url!r}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    shown = parsed.render_as_string(hide_password=True)
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not Path(database).exists():
        err_console.print(f"[red]error[/]: no audit database at {database} (has the gateway run with this "
                          f"QUELL_AUDIT_URL?)", highlight=False)  # fmt: skip
        raise typer.Exit(EXIT_UNAVAILABLE)
    try:
        engine = make_engine(url)
    except ValueError as exc:
        err_console.print(f"[red]error[/]: {exc}", highlight=False)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    try:
        if not sa.inspect(engine).has_table(events_table.name):
            err_console.print(f"[red]error[/]: {shown} has no {events_table.name} table (the gateway creates it at "
                              f"start-up)", highlight=False)  # fmt: skip
            raise typer.Exit(EXIT_UNAVAILABLE)
        events = query_events(engine, since=since_at, policy=policy, limit=limit)
    except (AuditStoreError, sa.exc.SQLAlchemyError) as exc:
        err_console.print(f"[red]error[/]: cannot read the audit store: {_reason(exc)}", highlight=False)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    finally:
        engine.dispose()

    if as_json:
        for event in events:
            print(json.dumps(event.as_dict(), ensure_ascii=False))
    elif events:
        console.print(_table(events, shown))
    if not events:
        err_console.print("no audit events matched", highlight=False)
        raise typer.Exit(EXIT_NO_MATCH)


def _reason(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _table(events, source: str) -> Table:
    show_text = any(e.text_hash or e.snippet for e in events)
    table = Table(title=f"{len(events)} audit event(s), newest first", caption=source, title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)  # fmt: skip
    table.add_column("time (UTC)", min_width=10)  # wraps between date and time when narrow
    for name in ("request", "tenant", "policy", "target", "layer", "action"):
        table.add_column(name, overflow="fold")  # long ids wrap on narrow terminals, never cut
    table.add_column("score", justify="right", no_wrap=True)
    if show_text:
        table.add_column("text", overflow="fold")
    for e in events:
        row = [e.time.strftime("%Y-%m-%d %H:%M:%S"), e.request_id, e.tenant or "-", e.policy_ref, e.target_id,
               e.layer, e.action, f"{e.score:.3f}"]  # fmt: skip
        if show_text:
            row.append(e.snippet or (e.text_hash[:12] + "…" if e.text_hash else ""))
        table.add_row(*row)
    return table


def main() -> None:  # pragma: no cover
    app = typer.Typer(add_completion=False)
    app.command()(audit)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
