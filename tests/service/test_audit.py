"""Audit store on SQLite and on a real PostgreSQL (`make pg-start`; URL in QUELL_TEST_PG_URL), with real faults:
a closed port, and a TCP relay to PostgreSQL that is cut and restored (connection refused, open connections reset).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from filters.decision import Decision, Layer
from service.audit import VERSION_TABLE, AuditEvent, AuditLog, AuditStoreError, make_engine, parse_since
from service.cli_audit import EXIT_BAD_INPUT, EXIT_NO_MATCH, EXIT_UNAVAILABLE, audit
from service.metrics import Metrics
from tests.procs import ROOT, free_port

PG_URL = os.environ.get("QUELL_TEST_PG_URL")
FAST_RETRY = {"retry_initial_s": 0.02, "retry_max_s": 0.1}

# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    if not PG_URL:
        pytest.skip("QUELL_TEST_PG_URL unset: run `make pg-start` (or `make test`, which starts PostgreSQL)")
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"QUELL_TEST_PG_URL={PG_URL} does not answer ({exc.orig}); run `make pg-start`")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin: sa.Engine) -> Iterator[str]:
    """A fresh, empty PostgreSQL database per test (so every test migrates from nothing)."""
    name = f"quell_audit_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield pg_admin.url.set(database=name).render_as_string(hide_password=False)
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/sub/audit.db"  # the folder does not exist yet: the store creates it


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")


def closed_port_url() -> str:
    return f"postgresql+psycopg://quell@127.0.0.1:{free_port()}/nothing"  # nothing listens there


# --- helpers ----------------------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def event(i: int = 0, *, policy: str = "spiderman@v1", at: datetime | None = None, **kw) -> AuditEvent:
    fields = {"time": at or T0 + timedelta(seconds=i), "request_id": f"req-{i}", "tenant": "acme",
              "policy_ref": policy, "target_id": "spider-man", "layer": "surface", "action": "redact",
              "score": 1.0, **kw}  # fmt: skip
    return AuditEvent(**fields)


async def until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Wait for a condition of the background writer (a deadline, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"still waiting after {timeout_s} s for: {what}")
        await asyncio.sleep(0.02)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())


async def read_all(url: str, **query) -> list[AuditEvent]:
    reader = AuditLog(url)
    try:
        return await reader.query(limit=100_000, **query)
    finally:
        await reader.aclose()


class Relay:
    """A TCP relay to PostgreSQL on its own loopback port; `down()` closes the port and resets open connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


# --- schema -----------------------------------------------------------------------------------------------------


def test_start_migrates_an_empty_database_and_again_is_a_no_op(store_url: str) -> None:
    async def go() -> None:
        for _ in range(2):
            log = AuditLog(store_url)
            await log.start()
            await log.aclose()
        engine = make_engine(store_url)
        try:
            inspector = sa.inspect(engine)
            assert {"audit_events", "policy_history", VERSION_TABLE} <= set(inspector.get_table_names())
            indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("audit_events")}
            assert indexes == {"ix_audit_events_time": ["time"], "ix_audit_events_policy_id": ["policy_id"]}
            with engine.connect() as conn:
                assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == ["0002"]
        finally:
            engine.dispose()

    run(go)


def test_gateways_starting_together_migrate_once(store_url: str) -> None:
    """Replicas start at the same time: separate processes, each migrating the same empty database."""
    code = ("import asyncio, sys; from service.audit import AuditLog\n"
            "async def go():\n    log = AuditLog(sys.argv[1]); await log.start(); await log.aclose()\n"
            "    sys.exit(0 if log.last_error is None else log.last_error)\n"
            "asyncio.run(go())")  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", code, store_url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]  # fmt: skip
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors

    async def again() -> None:
        log = AuditLog(store_url)
        await log.start()
        await log.aclose()
        assert log.last_error is None

    run(again)


@pytest.mark.parametrize("url", ["nosuchdialect://x/y", "postgresql+nosuchdriver://h/db", "not a url"])
def test_unusable_url_is_a_configuration_error_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match="audit store URL"):
        AuditLog(url)


# --- writes and queries -----------------------------------------------------------------------------------------


def test_events_round_trip_and_query_filters(store_url: str) -> None:
    async def go() -> None:
        log = AuditLog(store_url, batch_size=3)
        await log.start()
        events = [event(i) for i in range(5)] + [
            event(10, policy="spiderman@v2", layer="decode_mask", action="mask", score=0.5, tenant=None),
            event(11, policy="batman@v9", text_hash="ab" * 32, snippet="… the Bat …"),
            event(12, at=datetime(2026, 11, 1, 13, 59, tzinfo=timezone(timedelta(hours=2)))),  # 11:59 UTC: the oldest
        ]
        assert log.record(events) == len(events)
        await log.aclose()
        assert (log.written, log.dropped, log.depth) == (len(events), 0, 0)

        everything = await read_all(store_url)
        assert [e.request_id for e in everything] == [f"req-{i}" for i in (11, 10, 4, 3, 2, 1, 0, 12)]
        assert everything[1] == events[5]  # every field survives, times come back aware in UTC
        assert everything[0] == events[6]
        assert everything[-1].time == events[7].time and everything[-1].time.tzinfo == UTC
        assert {e.request_id for e in await read_all(store_url, policy="spiderman")} == {
            *(f"req-{i}" for i in range(5)), "req-10", "req-12"}  # fmt: skip
        assert [e.request_id for e in await read_all(store_url, policy="spiderman@v2")] == ["req-10"]
        assert [e.request_id for e in await read_all(store_url, since=T0 + timedelta(seconds=4))] == \
            ["req-11", "req-10", "req-4"]  # fmt: skip
        reader = AuditLog(store_url)
        assert [e.request_id for e in await reader.query(limit=2)] == ["req-11", "req-10"]
        with pytest.raises(ValueError, match="limit must be at least 1"):
            await reader.query(limit=0)
        await reader.aclose()

    run(go)


def test_aclose_flushes_everything_queued(store_url: str) -> None:
    async def go() -> None:
        log = AuditLog(store_url, batch_size=100)
        await log.start()
        log.record(event(i) for i in range(1_000))
        assert log.depth > 0  # nothing was written on the caller's path
        await log.aclose()
        assert (log.written, log.depth) == (1_000, 0)
        assert len(await read_all(store_url)) == 1_000

    run(go)


def test_overlong_values_are_truncated_not_rejected(store_url: str) -> None:
    async def go() -> None:
        log = AuditLog(store_url)
        await log.start()
        log.record([event(0, target_id="t" * 500, request_id="r" * 500)])
        await log.aclose()
        assert (log.written, log.dropped) == (1, 0)
        (stored,) = await read_all(store_url)
        assert (len(stored.target_id), len(stored.request_id)) == (128, 64)

    run(go)


def test_record_after_close_is_dropped_and_counted(sqlite_url: str) -> None:
    async def go() -> None:
        metrics = Metrics(process=False)
        log = AuditLog(sqlite_url, metrics=metrics)
        await log.start()
        await log.aclose()
        assert log.record([event(1), event(2)]) == 0
        assert log.dropped == 2
        assert metrics.registry.get_sample_value("quell_audit_dropped_total", {"reason": "closed"}) == 2

    run(go)


def test_record_swallows_a_broken_iterable(sqlite_url: str) -> None:
    def broken():
        yield event(1)
        raise RuntimeError("bug in the caller")

    async def go() -> None:
        log = AuditLog(sqlite_url)
        await log.start()
        assert log.record(broken()) == 1  # what came before the error is kept; nothing is raised
        await log.aclose()
        assert log.written == 1

    run(go)


# --- faults -----------------------------------------------------------------------------------------------------


def test_database_down_events_wait_in_the_queue_and_full_queue_drops_are_counted() -> None:
    async def go() -> None:
        metrics = Metrics(process=False)
        log = AuditLog(closed_port_url(), queue_size=5, batch_size=2, metrics=metrics, **FAST_RETRY)
        await log.start()  # the database is down: start-up goes on
        assert log.record([event(i) for i in range(3)]) == 3
        await until(lambda: log.write_failures >= 3, "repeated failed writes")
        assert (log.depth, log.written, log.dropped) == (3, 0, 0)  # the retried batch is still counted as queued
        assert log.record([event(i) for i in range(3, 8)]) == 2  # room for two more, three dropped
        assert (log.depth, log.dropped) == (5, 3)
        sample = metrics.registry.get_sample_value
        assert sample("quell_audit_queue_depth") == 5
        assert sample("quell_audit_dropped_total", {"reason": "queue_full"}) == 3
        assert sample("quell_audit_write_failures_total") == log.write_failures >= 3
        assert "Connection refused" in (log.last_error or "")

        await log.aclose(timeout_s=0.3)  # still down at shutdown: what is left is counted, not hidden
        assert (log.depth, log.dropped) == (0, 8)
        assert sample("quell_audit_dropped_total", {"reason": "shutdown"}) == 5
        assert sample("quell_audit_queue_depth") == 0
        with pytest.raises(AuditStoreError, match="Connection refused"):
            await log.query()

    run(go)


def test_postgres_down_then_back_writes_the_waiting_events(pg_url: str) -> None:
    target = sa.engine.make_url(pg_url)

    async def go() -> None:
        relay = Relay(target.host, target.port)
        url = target.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
        metrics = Metrics(process=False)
        log = AuditLog(url, batch_size=10, metrics=metrics, **FAST_RETRY)

        await log.start()  # down from the start: not even migrated
        log.record(event(i) for i in range(25))
        await until(lambda: log.write_failures >= 2, "failed writes while down")
        assert (log.depth, log.written) == (25, 0)
        await relay.up()
        await until(lambda: log.depth == 0, "queue drained after the database came back")
        assert log.written == 25

        await relay.down()  # now cut a working store: pooled connections are reset, new ones refused
        log.record(event(i) for i in range(100, 140))
        failures = log.write_failures
        await until(lambda: log.write_failures > failures, "failed writes after the cut")
        assert log.depth == 40
        await relay.up()
        await log.aclose()
        await relay.down()
        assert (log.written, log.dropped, log.depth) == (65, 0, 0)
        assert metrics.registry.get_sample_value("quell_audit_written_total") == 65

    run(go)
    assert len(asyncio.run(read_all(pg_url))) == 65  # straight to PostgreSQL, no relay


# --- text storage -----------------------------------------------------------------------------------------------

TEXT = "Here is the story of Peter Parker, who lives in Queens. " * 3
DECISION = Decision("spiderman@abc123", "spider-man", Layer.SURFACE, "redact", 1.0, start=21, end=33)


@pytest.mark.parametrize(
    ("mode", "has_hash", "snippet"),
    [("none", False, None), ("hash", True, None),
     ("snippet", True, "Here is the story of Peter Parker, who lives in Queens. Here is the story")],  # span +- 40
)  # fmt: skip
def test_text_is_stored_only_as_the_operator_chose(mode: str, has_hash: bool, snippet: str | None) -> None:
    assert TEXT[DECISION.start : DECISION.end] == "Peter Parker"
    e = AuditEvent.from_decision(DECISION, request_id="r", tenant="acme", store_text=mode, text=TEXT)
    assert (e.text_hash is not None, e.snippet) == (has_hash, snippet)
    assert (e.policy_ref, e.policy_id, e.target_id, e.layer, e.action) == \
        ("spiderman@abc123", "spiderman", "spider-man", "surface", "redact")  # fmt: skip
    assert e.time.tzinfo is not None


def test_snippet_without_a_usable_span_is_the_start_of_the_text() -> None:
    d = Decision("p@v", "t", Layer.EMBEDDING, "refuse", 0.8)
    e = AuditEvent.from_decision(d, request_id="r", tenant=None, store_text="snippet", text="x" * 1000)
    assert e.snippet == "x" * 200


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", T0 - timedelta(seconds=90)), ("15m", T0 - timedelta(minutes=15)), ("2h", T0 - timedelta(hours=2)),
     ("7d", T0 - timedelta(days=7)), ("1w", T0 - timedelta(weeks=1)), ("2026-10-31T08:00", datetime(2026, 10, 31, 8, tzinfo=UTC)),
     ("2026-10-31T10:00+02:00", datetime(2026, 10, 31, 8, tzinfo=UTC))],
)  # fmt: skip
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, now=T0) == expected


@pytest.mark.parametrize("text", ["yesterday", "15 minutes", "-5m", ""])
def test_parse_since_rejects_with_what_it_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration like 15m"):
        parse_since(text, now=T0)


# --- quell audit ------------------------------------------------------------------------------------------------


def cli(*args: str):
    app = typer.Typer()
    app.command()(audit)
    return CliRunner(env={"COLUMNS": "160"}).invoke(app, list(args))


def test_cli_shows_a_table_filters_and_exits_meaningfully(store_url: str) -> None:
    async def fill() -> None:
        log = AuditLog(store_url)
        await log.start()
        now = datetime.now(UTC)
        log.record([event(1, at=now - timedelta(hours=3)), event(2, at=now, policy="batman@v9")])
        await log.aclose()

    run(fill)
    result = cli("--url", store_url)
    assert result.exit_code == 0, result.output
    assert "2 audit event(s)" in result.output and "batman@v9" in result.output and "spiderman@v1" in result.output

    result = cli("--url", store_url, "--since", "1h", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["request_id"], r["policy"]) for r in rows] == [("req-2", "batman@v9")]

    result = cli("--url", store_url, "--policy", "nobody")
    assert result.exit_code == EXIT_NO_MATCH
    assert "no audit events matched" in result.output


def test_cli_exit_codes_for_bad_input_and_unreadable_stores(tmp_path, sqlite_url: str) -> None:
    assert cli("--url", sqlite_url, "--since", "yesterday").exit_code == EXIT_BAD_INPUT
    assert cli("--url", sqlite_url, "--limit", "0").exit_code == 2  # typer's own usage error
    missing = cli("--url", f"sqlite:///{tmp_path}/none.db")
    assert missing.exit_code == EXIT_UNAVAILABLE and "no audit database" in missing.output
    assert not (tmp_path / "none.db").exists()  # reading never creates a database
    sa.create_engine(f"sqlite:///{tmp_path}/other.db").connect().close()  # exists, but not ours
    assert "has no audit_events table" in cli("--url", f"sqlite:///{tmp_path}/other.db").output
    down = cli("--url", closed_port_url())
    assert down.exit_code == EXIT_UNAVAILABLE and "Connection refused" in down.output
    assert cli("--url", "nosuchdialect://x").exit_code == EXIT_UNAVAILABLE
