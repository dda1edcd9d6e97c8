"""Audit store: one row per suppression decision, written off the response path.

Call order: `AuditLog(url, ...)` (checks the URL, connects to nothing) -> `await start()` (migrates the schema if
the database answers, starts the writer task) -> `record(events)` from request handlers, any number of times ->
`await aclose()` on shutdown (writes what is queued, within a deadline).

`record()` never blocks and never raises: events go into a bounded in-memory queue and a background task writes
them in batches (one transaction per batch, in a worker thread). While the database is down, events stay in the
queue and the writer retries with exponential backoff; when the queue is full new events are dropped and counted.
The queue is a deque that the writer only pops once a batch is committed, so "waiting" events are always counted
in the depth and the bound, including the batch being retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, NoSuchModuleError, SQLAlchemyError

if TYPE_CHECKING:
    from filters.decision import Decision
    from service.metrics import Metrics

log = logging.getLogger("quell.audit")

StoreText = Literal["none", "hash", "snippet"]
SNIPPET_CONTEXT = 40
"""Characters kept on each side of a detection's span in a snippet."""
SNIPPET_MAX = 200
VERSION_TABLE = "quell_alembic_version"
"""Our own Alembic version table, so the audit schema can live in a database that another app also migrates."""
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

metadata = sa.MetaData()
events_table = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=True),
    sa.Column("policy_ref", sa.String(200), nullable=False),
    sa.Column("policy_id", sa.String(128), nullable=False),
    sa.Column("target_id", sa.String(128), nullable=False),
    sa.Column("layer", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("score", sa.Float(), nullable=False),
    sa.Column("text_hash", sa.String(64), nullable=True),
    sa.Column("snippet", sa.Text(), nullable=True),
    sa.Index("ix_audit_events_time", "time"),
    sa.Index("ix_audit_events_policy_id", "policy_id"),
)
"""The schema as the code sees it; `migrations/versions` creates it (keep the two in step)."""


class AuditStoreError(Exception):
    """The audit database cannot be reached or read (for `GET /admin/audit` -> 503, `quell audit` -> exit 3)."""


@dataclass(frozen=True)
class AuditEvent:
    time: datetime  # timezone-aware; stored as UTC
    request_id: str
    tenant: str | None
    policy_ref: str  # "id@version"
    target_id: str
    layer: str
    action: str
    score: float
    text_hash: str | None = None  # sha256 of the text the decision was about (audit_store_text "hash" or "snippet")
    snippet: str | None = None  # the detected span with some context (audit_store_text "snippet" only)

    @property
    def policy_id(self) -> str:
        return self.policy_ref.split("@", 1)[0]

    @classmethod
    def from_decision(cls, decision: Decision, *, request_id: str, tenant: str | None, store_text: StoreText = "none",
                      text: str | None = None, time: datetime | None = None) -> AuditEvent:  # fmt: skip
        """One event per decision. `text` (the response or prompt the decision is about) is only looked at when
        the operator enabled `store_text`; with "none" nothing of it reaches the store."""
        text_hash = snippet = None
        if text is not None and store_text != "none":
            text_hash = hashlib.sha256(text.encode()).hexdigest()
            if store_text == "snippet":
                snippet = _snippet(text, decision.start, decision.end)
        return cls(time or datetime.now(UTC), request_id, tenant, decision.policy_ref, decision.target_id,
                   str(decision.layer), decision.action, float(decision.score), text_hash, snippet)  # fmt: skip

    def as_dict(self) -> dict:
        return {"time": self.time.isoformat(), "request_id": self.request_id, "tenant": self.tenant,
                "policy": self.policy_ref, "policy_id": self.policy_id, "target": self.target_id,
                "layer": self.layer, "action": self.action, "score": self.score,
                "text_hash": self.text_hash, "snippet": self.snippet}  # fmt: skip


def _snippet(text: str, start: int | None, end: int | None) -> str:
    if start is None or end is None or not 0 <= start <= end <= len(text):
        return text[:SNIPPET_MAX]
    return text[max(0, start - SNIPPET_CONTEXT) : end + SNIPPET_CONTEXT][:SNIPPET_MAX]


def _utc(dt: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken as UTC (SQLite gives them back naive)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


_LIMITS = {c.name: c.type.length for c in events_table.columns if isinstance(c.type, sa.String) and c.type.length}


def _row(e: AuditEvent) -> dict:
    row = {"time": _utc(e.time), "request_id": e.request_id, "tenant": e.tenant, "policy_ref": e.policy_ref,
           "policy_id": e.policy_id, "target_id": e.target_id, "layer": e.layer, "action": e.action,
           "score": float(e.score), "text_hash": e.text_hash, "snippet": e.snippet}  # fmt: skip
    for name, limit in _LIMITS.items():  # a too-long id must not make a whole batch fail on PostgreSQL
        if isinstance(row[name], str) and len(row[name]) > limit:
            row[name] = row[name][:limit]
    return row


def _event(row) -> AuditEvent:
    return AuditEvent(_utc(row.time), row.request_id, row.tenant, row.policy_ref, row.target_id, row.layer,
                      row.action, row.score, row.text_hash, row.snippet)  # fmt: skip


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since` / `?since=`: a duration back from now (`90s`, `15m`, `2h`, `7d`, `1w`) or an ISO 8601 time (naive
    means UTC). Raises ValueError naming what was expected."""
    m = _DURATION.match(text)
    if m:
        try:
            return (now or datetime.now(UTC)) - timedelta(**{_UNITS[m[2]]: float(m[1])})
        except OverflowError:  # "99999999999d" reaches before year 1
            raise ValueError(f"duration {text!r} reaches further back than dates go") from None
    try:
        return _utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise ValueError(f"expected a duration like 15m, 2h, 7d or an ISO 8601 time, got {text!r}") from None


def make_engine(url: str) -> Engine:
    """An engine for the audit store. Raises ValueError for a URL SQLAlchemy cannot use (bad syntax, unknown
    dialect, driver not installed): a configuration error, reported at start-up, not at the first write."""
    try:
        parsed = make_url(url)
        kwargs: dict = {"pool_pre_ping": True}  # a connection the database dropped (restart) is replaced, not used
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            else:  # one in-memory database shared by every thread, not one per connection
                kwargs = {"poolclass": sa.pool.StaticPool, "connect_args": {"check_same_thread": False}}
        elif parsed.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 5}  # an unreachable host fails in 5 s, not minutes
        engine = sa.create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ValueError(f"audit store URL {_safe(url)!r} is not usable: {exc}") from exc
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # `quell audit` can read while the gateway writes
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


_MIGRATE_LOCK = threading.Lock()
"""Alembic's `context` is process-global: one migration at a time per process."""


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent). Gateways starting together take turns: under
    an advisory lock on PostgreSQL, under a write lock (BEGIN IMMEDIATE) on SQLite."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _MIGRATE_LOCK, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('quell_audit_migrate'))"))
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # pysqlite would otherwise run the DDL outside a transaction
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def insert_events(engine: Engine, events: list[AuditEvent]) -> None:
    with engine.begin() as conn:
        conn.execute(events_table.insert(), [_row(e) for e in events])


def query_events(engine: Engine, *, since: datetime | None = None, policy: str | None = None,
                 limit: int = 100) -> list[AuditEvent]:  # fmt: skip
    """Newest first. `policy` is an id (every version) or `id@version` (that version only)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    stmt = sa.select(events_table).order_by(events_table.c.time.desc(), events_table.c.id.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(events_table.c.time >= _utc(since))
    if policy:
        column = events_table.c.policy_ref if "@" in policy else events_table.c.policy_id
        stmt = stmt.where(column == policy)
    try:
        with engine.connect() as conn:
            return [_event(row) for row in conn.execute(stmt)]
    except SQLAlchemyError as exc:
        raise AuditStoreError(f"audit store {engine.url.render_as_string(hide_password=True)}: "
                              f"{_first_line(exc)}") from exc  # fmt: skip


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


class AuditLog:
    """The gateway's audit writer (one per process, built in the lifespan). See the module docstring."""

    def __init__(self, url: str, *, queue_size: int = 10_000, batch_size: int = 500, metrics: Metrics | None = None,
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0) -> None:  # fmt: skip
        if queue_size < 1 or batch_size < 1:
            raise ValueError(f"queue_size and batch_size must be at least 1, got {queue_size} and {batch_size}")
        self.url = _safe(url)
        self.engine = make_engine(url)
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.metrics = metrics
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.written = 0
        self.dropped = 0
        self.write_failures = 0
        self.last_error: str | None = None
        self._queue: deque[AuditEvent] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._migrated = False
        self._down = False  # the last write attempt failed and its events are being retried
        self._dropping: set[str] = set()
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Events waiting to be written (including a batch being retried)."""
        return len(self._queue)

    async def start(self) -> None:
        """Migrate the schema and start the writer. A database that is down now is not fatal: the writer migrates
        before its first write, and events wait in the queue meanwhile."""
        try:
            await asyncio.to_thread(migrate, self.engine)
            self._migrated = True
            log.info("audit store ready: %s", self.url)
        except Exception as exc:  # noqa: BLE001 - any failure to open the store: reported, the gateway serves on
            self.last_error = _first_line(exc)
            self._down = True
            log.error("audit store %s unavailable at start-up (events will wait in the queue): %s",
                      self.url, self.last_error)  # fmt: skip
        self._task = asyncio.create_task(self._run(), name="quell-audit-writer")
        self._task.add_done_callback(self._writer_ended)

    def _writer_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug: say so, events now only pile up
            log.error("audit writer crashed; %d event(s) queued", len(self._queue), exc_info=task.exception())

    def record(self, events: Iterable[AuditEvent]) -> int:
        """Queue events for writing; returns how many were accepted. Never blocks, never raises."""
        accepted = 0
        try:
            for event in events:
                if self._closing:
                    self._drop(1, "closed")
                elif len(self._queue) >= self.queue_size:
                    self._drop(1, "queue_full")
                else:
                    self._queue.append(event)
                    accepted += 1
        except Exception:  # a broken iterable or metric must not fail the response being served
            log.exception("audit record failed")
        if accepted:
            self._wake.set()
            try:
                self._gauge()
            except Exception:
                log.exception("audit queue gauge failed")
        return accepted

    async def query(self, *, since: datetime | None = None, policy: str | None = None,
                    limit: int = 100) -> list[AuditEvent]:  # fmt: skip
        """For `GET /admin/audit`: newest first; events still in the queue are not included. Raises ValueError for a
        bad limit and AuditStoreError when the database cannot answer."""
        return await asyncio.to_thread(query_events, self.engine, since=since, policy=policy, limit=limit)

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Stop accepting events, write what is queued (retrying until `timeout_s`), then count what is left as
        dropped (reason "shutdown") and release the connections."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self._queue:
            log.error("audit store %s: %d event(s) not written at shutdown (last error: %s)",
                      self.url, len(self._queue), self.last_error)  # fmt: skip
            self._drop(len(self._queue), "shutdown")
            self._queue.clear()
            self._gauge()
        self._closed = True
        await asyncio.to_thread(self.engine.dispose)

    async def _run(self) -> None:
        delay = self.retry_initial_s
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(islice(self._queue, self.batch_size))
            try:
                await asyncio.to_thread(self._write, batch)
            except (DataError, IntegrityError) as exc:  # the database refused these rows: retrying cannot help
                self._failed(exc, retry_in=None)
                self._pop(len(batch))
                self._drop(len(batch), "rejected")
                continue
            except Exception as exc:  # noqa: BLE001 - down, unreachable, locked, connection cut, schema missing: keep and retry
                self._failed(exc, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            if self._down:
                log.warning("audit store %s reachable again; writing %d queued event(s)", self.url, len(self._queue))
                self._down = False
            self.last_error = None
            delay = self.retry_initial_s
            self._dropping.clear()
            self._pop(len(batch))
            self.written += len(batch)
            if self.metrics is not None:
                self.metrics.audit_written.inc(len(batch))

    def _write(self, batch: list[AuditEvent]) -> None:  # in a worker thread
        if not self._migrated:
            migrate(self.engine)
            self._migrated = True
        insert_events(self.engine, batch)

    def _pop(self, n: int) -> None:
        for _ in range(n):
            self._queue.popleft()
        self._gauge()

    def _failed(self, exc: Exception, retry_in: float | None) -> None:
        self.write_failures += 1
        if self.metrics is not None:
            self.metrics.audit_write_failures.inc()
        message = _first_line(exc)
        if retry_in is None:
            log.error("audit store %s rejected a batch (dropped): %s", self.url, message)
        elif message != self.last_error or not self._down:  # one line per distinct problem, not one per retry
            log.error("audit store %s: write failed, %d event(s) queued, retrying (backoff up to %.0f s): %s",
                      self.url, len(self._queue), self.retry_max_s, message)  # fmt: skip
        self.last_error = message
        self._down = retry_in is not None

    def _drop(self, n: int, reason: str) -> None:
        if reason not in self._dropping:  # one warning per episode (reset by the next successful write)
            self._dropping.add(reason)
            log.warning("audit: dropping event(s) (%s); see quell_audit_dropped_total", reason)
        self.dropped += n
        if self.metrics is not None:
            self.metrics.audit_dropped.labels(reason=reason).inc(n)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.audit_queue_depth.set(len(self._queue))
