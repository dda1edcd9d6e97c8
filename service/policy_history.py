"""Every policy version that was live: its content by version hash, when it went live and who made it live.

Kept in the audit store (table `policy_history`, migration 0002) so the console can show a policy's history and roll
back to an earlier version. Call order: `PolicyHistory()` -> `observe(snapshot)` after every registry reload (the
registry's `on_reload`, under its lock: no database I/O there, the rows are queued) -> `bind(engine)` once the audit
store is migrated (writes what was queued, in a worker thread) -> `expect(...)` before a write whose author is known
(the console, the admin PUT), so the version it makes live is credited to that operator token's id, never the token.

A version that appears through the policy folder (an editor, git, a ConfigMap) is credited to `FOLDER_ACTOR`. A
restart does not repeat rows: a version is written only when it differs from that policy's newest stored row.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from filters.policy_loader import PolicyError, parse_policy
from service.audit import AuditStoreError, metadata
from service.policy_registry import LoadedPolicy, PolicySnapshot

log = logging.getLogger("quell.history")

FOLDER_ACTOR = "policy folder"
"""Who made a version live when no operator action is known for it: a file change seen by the watcher."""

history_table = sa.Table(
    "policy_history",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("policy_id", sa.String(128), nullable=False),
    sa.Column("version", sa.String(12), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("content", sa.Text(), nullable=False),
    sa.Column("live_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Index("ix_policy_history_policy_id", "policy_id", "live_at"),
)
"""As `migrations/versions/0002_policy_history.py` creates it (keep the two in step)."""


def operator_id(token: str) -> str:
    """A stable, non-reversible name for an operator token (what history shows as "by"): never the token."""
    return "operator:" + hashlib.sha256(b"quell-operator-id:" + token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class HistoryEntry:
    policy_id: str
    version: str
    digest: str
    content: str
    live_at: datetime
    actor: str


def _content(loaded: LoadedPolicy) -> str:
    """The YAML that made this version: the file as it is now if it still says the same, else the canonical form
    (which parses to the same version), so a rollback writes back exactly this version."""
    import yaml

    try:
        text = loaded.file.read_text(encoding="utf-8")
        if parse_policy(text, str(loaded.file), loaded.file.parent).digest == loaded.policy.digest:
            return text
    except (OSError, UnicodeDecodeError, PolicyError):
        pass
    return yaml.safe_dump(loaded.policy.model_dump(mode="json", exclude_defaults=True), sort_keys=False,
                          allow_unicode=True)  # fmt: skip


class PolicyHistory:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._pending: list[HistoryEntry] = []
        self._seen: dict[str, str] = {}
        self._expected: dict[tuple[str, str], str] = {}
        self.last_error: str | None = None

    def expect(self, policy_id: str, digest: str, actor: str) -> None:
        """The next time `policy_id` goes live at `digest`, credit it to `actor` (an `operator_id`)."""
        with self._lock:
            self._expected[(policy_id, digest)] = actor

    def observe(self, snapshot: PolicySnapshot) -> None:
        """Queue every policy whose live version changed since the last snapshot seen; never raises."""
        try:
            with self._lock:
                for pid, loaded in snapshot.policies.items():
                    digest = loaded.policy.digest
                    if self._seen.get(pid) == digest:
                        continue
                    self._seen[pid] = digest
                    actor = self._expected.pop((pid, digest), FOLDER_ACTOR)
                    self._pending.append(HistoryEntry(pid, loaded.policy.version, digest, _content(loaded),
                                                      loaded.loaded_at, actor))  # fmt: skip
                # An expected version that is live already (a save that changed nothing) credits nobody later.
                for key in [k for k in self._expected if self._seen.get(k[0]) == k[1]]:
                    del self._expected[key]
                queued = bool(self._pending) and self.engine is not None
        except Exception:  # a history row must never fail a reload
            log.exception("policy history: could not queue the new versions")
            return
        if queued:
            threading.Thread(target=self.flush, name="quell-policy-history", daemon=True).start()

    def bind(self, engine: Engine) -> None:
        """The audit store is migrated: write what was queued (from now on, every change is written at once)."""
        self.engine = engine
        self.flush()

    def flush(self) -> bool:
        """Write queued rows (one writer at a time; a failed write keeps them for the next flush). True if none
        are left."""
        if self.engine is None:
            return False
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, []
            try:
                with self.engine.begin() as conn:
                    for entry in batch:
                        newest = conn.execute(sa.select(history_table.c.digest)
                                              .where(history_table.c.policy_id == entry.policy_id)
                                              .order_by(history_table.c.live_at.desc(), history_table.c.id.desc())
                                              .limit(1)).scalar()  # fmt: skip
                        if newest != entry.digest:
                            conn.execute(history_table.insert(), [_row(entry)])
                self.last_error = None
                return True
            except SQLAlchemyError as exc:
                with self._lock:
                    self._pending = batch + self._pending
                self.last_error = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                log.error("policy history: %d version(s) not written yet: %s", len(batch), self.last_error)
                return False

    def versions(self, policy_id: str, limit: int = 200) -> list[HistoryEntry]:
        """Newest first (each time a version went live is one entry)."""
        stmt = (sa.select(history_table).where(history_table.c.policy_id == policy_id)
                .order_by(history_table.c.live_at.desc(), history_table.c.id.desc()).limit(limit))  # fmt: skip
        return self._query(stmt)

    def get(self, policy_id: str, version: str) -> HistoryEntry | None:
        """The stored content of one version (by its 12-digit version or full digest)."""
        column = history_table.c.digest if len(version) == 64 else history_table.c.version
        stmt = (sa.select(history_table).where(history_table.c.policy_id == policy_id, column == version)
                .order_by(history_table.c.live_at.desc()).limit(1))  # fmt: skip
        found = self._query(stmt)
        return found[0] if found else None

    def _query(self, stmt: sa.Select) -> list[HistoryEntry]:
        if self.engine is None:
            raise AuditStoreError("the audit store is not ready yet")
        self.flush()  # what is queued is part of the answer
        try:
            with self.engine.connect() as conn:
                return [HistoryEntry(r.policy_id, r.version, r.digest, r.content, _utc(r.live_at), r.actor)
                        for r in conn.execute(stmt)]  # fmt: skip
        except SQLAlchemyError as exc:
            raise AuditStoreError(str(getattr(exc, "orig", None) or exc).splitlines()[0]) from exc


def _row(entry: HistoryEntry) -> dict[str, object]:
    return {"policy_id": entry.policy_id, "version": entry.version, "digest": entry.digest, "content": entry.content,
            "live_at": entry.live_at.astimezone(UTC), "actor": entry.actor}  # fmt: skip


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
