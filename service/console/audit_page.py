"""Audit page: recent suppression decisions with filters, and suppressions over time by layer (an SVG chart)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections import Counter
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import SQLAlchemyError

from service.audit import AuditStoreError, events_table, parse_since
from service.console.session import SessionDep
from service.console.web import page
from service.deps import GatewayDep

router = APIRouter()
FILTERS = ("policy", "target", "layer", "action", "tenant")
PAGE_ROWS = 200
CHART_ROWS = 50_000
"""Most decisions the chart counts in one range (newest first): a bound on what one page view reads."""


def _select(filters: dict[str, str], start: datetime, end: datetime) -> sa.Select:
    c = events_table.c
    stmt = sa.select(events_table).where(c.time >= start, c.time <= end)
    if filters.get("policy"):
        column = c.policy_ref if "@" in filters["policy"] else c.policy_id
        stmt = stmt.where(column == filters["policy"])
    for name, column in (("target", c.target_id), ("layer", c.layer), ("action", c.action), ("tenant", c.tenant)):
        if filters.get(name):
            stmt = stmt.where(column == filters[name])
    return stmt.order_by(c.time.desc(), c.id.desc())


def _bucket(start: datetime, end: datetime) -> timedelta:
    span = end - start
    for size in (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1),
                 timedelta(hours=6), timedelta(days=1)):  # fmt: skip
        if span / size <= 60:
            return size
    return timedelta(days=7)


def _chart(times_layers: list[tuple[datetime, str]], start: datetime, end: datetime) -> str:
    """Stacked bars of decisions per time bucket and layer, as an SVG data URI (matplotlib, no fonts fetched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = _bucket(start, end)
    n = max(1, int((end - start) / size) + 1)
    layers = sorted({layer for _, layer in times_layers})
    counts: dict[str, Counter[int]] = {layer: Counter() for layer in layers}
    for when, layer in times_layers:
        counts[layer][min(n - 1, int((when - start) / size))] += 1
    fig, ax = plt.subplots(figsize=(9, 2.6))
    xs = [start + size * i for i in range(n)]
    bottom = [0] * n
    for layer in layers:
        ys = [counts[layer][i] for i in range(n)]
        ax.bar(xs, ys, width=size * 0.9, bottom=bottom, label=layer, align="edge")
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    ax.set_ylabel("decisions")
    ax.set_title(f"suppressions per {_human(size)} by layer (UTC)", fontsize=10)
    if layers:
        ax.legend(fontsize=8, loc="upper left")
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def _human(size: timedelta) -> str:
    minutes = int(size.total_seconds() // 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h" if minutes < 1440 else f"{minutes // 1440} d"


def _query(engine: sa.Engine, filters: dict[str, str], start: datetime, end: datetime):
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(_select(filters, start, end).limit(PAGE_ROWS)))
            stmt = _select(filters, start, end).with_only_columns(events_table.c.time, events_table.c.layer)
            points = [(_utc(t), layer) for t, layer in conn.execute(stmt.limit(CHART_ROWS))]
    except SQLAlchemyError as exc:
        raise AuditStoreError(str(getattr(exc, "orig", None) or exc).splitlines()[0]) from exc
    return rows, points


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/audit", response_class=HTMLResponse)
async def audit(request: Request, session: SessionDep, gateway: GatewayDep) -> HTMLResponse:
    q = request.query_params
    filters = {name: q.get(name, "").strip() for name in FILTERS}
    since, until = q.get("since", "").strip() or "24h", q.get("until", "").strip()
    try:
        start = parse_since(since)
        end = parse_since(until) if until else datetime.now(UTC)
        if end <= start:
            raise ValueError(f"until ({until}) must be after since ({since})")
    except ValueError as exc:
        return page(request, "audit.html", 400, session=session, filters=filters, since=since, until=until,
                    error=str(exc), rows=[], chart=None)  # fmt: skip
    try:
        rows, points = await asyncio.to_thread(_query, gateway.audit.engine, filters, start, end)
    except AuditStoreError as exc:
        return page(request, "audit.html", 503, session=session, filters=filters, since=since, until=until,
                    error=f"audit store unavailable: {exc}", rows=[], chart=None)  # fmt: skip
    chart = await asyncio.to_thread(_chart, points, start, end)
    return page(request, "audit.html", session=session, filters=filters, since=since, until=until, error=None,
                rows=rows, chart=chart, total=len(points), capped=len(points) >= CHART_ROWS,
                queued=gateway.audit.depth)  # fmt: skip
