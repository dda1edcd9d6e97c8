"""The gateway's live policies: loaded from a directory, swapped atomically, last good version kept on error.

A request takes one `PolicySnapshot` at its start and uses it to the end, so a reload never changes the rules under
a request in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cachetools import LRUCache, cached

from filters.atomic_files import write_atomic
from filters.policy import Policy
from filters.policy_loader import PolicyIssue, load_policy_dir
from filters.surface import SurfaceLayer
from service.auth import Tenant
from service.errors import APIError

log = logging.getLogger("quell.policies")


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    file: Path
    loaded_at: datetime


MAX_REQUESTED_POLICIES = 64


def _some(ids: list[str], shown: int = 10) -> str:
    """Ids for an error message: the first few and how many more (a client's list can be long)."""
    text = ", ".join(i[:80] for i in ids[:shown])
    return text + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


@dataclass(frozen=True)
class PolicySnapshot:
    policies: dict[str, LoadedPolicy]
    errors: dict[Path, tuple[PolicyIssue, ...]] = field(default_factory=dict)
    missing: dict[str, float] = field(default_factory=dict)
    """Policies no longer found in the folder that stay live until the removal grace ends: id -> monotonic deadline."""

    def default_ids(self) -> list[str]:
        return [pid for pid, lp in self.policies.items() if lp.policy.default]

    def select(self, ids: Sequence[str]) -> list[Policy]:
        """The named policies, each once, in order; unknown ids raise KeyError naming them all."""
        missing = [i for i in ids if i not in self.policies]
        if missing:
            raise KeyError(", ".join(missing))
        return [self.policies[i].policy for i in dict.fromkeys(ids)]

    def for_tenant(self, tenant: Tenant, requested: Sequence[str]) -> list[Policy]:
        """The tenant's policies (or the defaults) plus the ones a request adds, if the tenant may add them."""
        if len(requested) > MAX_REQUESTED_POLICIES:
            raise APIError(400, f"a request may add at most {MAX_REQUESTED_POLICIES} policies, got {len(requested)}",
                           param="quell.policies", code="too_many_policies")  # fmt: skip
        unknown = [i for i in requested if i not in self.policies]
        if unknown:
            raise APIError(400, f"unknown policy id(s): {_some(unknown)}", param="quell.policies",
                           code="unknown_policy")  # fmt: skip
        refused = [i for i in requested if not tenant.may_add_policy(i)]
        if refused:
            raise APIError(403, f"this API key may not add policy id(s): {_some(refused)}",
                           param="quell.policies", type="permission_error", code="policy_not_allowed")  # fmt: skip
        base = list(tenant.policies) if tenant.policies is not None else self.default_ids()
        try:
            return self.select(base + list(requested))
        except KeyError as exc:  # the operator configured a tenant with a policy that is not loaded: fail closed
            raise APIError(500, f"policy {exc.args[0]} configured for tenant {tenant.id!r} is not loaded",
                           type="server_error", code="policy_not_loaded") from None  # fmt: skip


def _surface_key(policies: Sequence[Policy], direction: str | None = "output") -> tuple:
    return tuple(sorted(p.digest for p in policies)), direction


@cached(LRUCache(maxsize=64), key=_surface_key, lock=threading.Lock())
def surface_layer(policies: Sequence[Policy], direction: str | None = "output") -> SurfaceLayer:
    """Compiled once per distinct set of policy versions (keyed by content digests), LRU-bounded."""
    return SurfaceLayer(policies, direction)


class VersionConflict(Exception):
    """A write was based on a version that is no longer the live one."""

    def __init__(self, policy_id: str, expected: str, live: str | None):
        super().__init__(f"policy {policy_id!r} changed since version {expected}: the live version is "
                         f"{live or 'none (removed)'}; reload it and apply your edit again")  # fmt: skip
        self.live = live


class PolicyRegistry:
    """Live policies of one directory.

    A policy that was live stays live until an operator removes it on purpose: a file that fails validation keeps
    its last good version, and a policy that disappears from the folder stays for `removal_grace_s` (an editor's save
    renames the old file away and writes the new one a moment later; a ConfigMap swap does the same; a reload can
    list the folder in between). Only a policy that stays gone past the grace, or `remove()` (the admin DELETE),
    leaves; so does the old id of a file whose id was edited, after the grace.
    """

    def __init__(self, directory: Path, on_reload: Callable[[PolicySnapshot], None] | None = None,
                 removal_grace_s: float = 10.0):  # fmt: skip
        self.directory = directory
        self.removal_grace_s = removal_grace_s
        self._lock = threading.Lock()
        self._snapshot = PolicySnapshot({})
        self._on_reload = on_reload
        self._missing_since: dict[str, float] = {}

    @property
    def snapshot(self) -> PolicySnapshot:
        return self._snapshot

    def reload(self) -> PolicySnapshot:
        """Load the directory; valid files replace their policy, broken files keep the last good version."""
        with self._lock:
            result = load_policy_dir(self.directory)
            old = self._snapshot.policies
            now = datetime.now(UTC)
            policies: dict[str, LoadedPolicy] = {}
            for pid, policy in result.policies.items():
                prev = old.get(pid)
                unchanged = prev is not None and prev.policy.digest == policy.digest
                policies[pid] = prev if unchanged else LoadedPolicy(policy, result.files[pid], now)
            broken_files = set(result.errors)
            clock = time.monotonic()
            missing: dict[str, float] = {}
            for pid, prev in old.items():
                if pid in policies:
                    continue
                if prev.file in broken_files:
                    policies[pid] = prev  # the file is broken now: keep serving what it said before
                    continue
                # Gone from this pass, whatever the reason (file deleted or renamed away, listed while it was being
                # replaced, its id edited): an editor's save or a ConfigMap swap looks like this for a moment.
                deadline = self._missing_since.setdefault(pid, clock) + self.removal_grace_s
                if clock < deadline:
                    policies[pid] = prev
                    missing[pid] = deadline
                    log.warning("policy %s is no longer in %s; it stays live for %.1f s unless it comes back",
                                prev.policy.ref, prev.file, deadline - clock)  # fmt: skip
            self._missing_since = {pid: since for pid, since in self._missing_since.items() if pid in missing}
            for issues in result.errors.values():
                for issue in issues:
                    log.error("policy rejected, last good version kept: %s", issue)
            for pid in policies.keys() - old.keys():
                log.info("policy loaded: %s from %s", policies[pid].policy.ref, policies[pid].file)
            for pid in old.keys() - policies.keys():
                log.info("policy removed: %s", old[pid].policy.ref)
            self._snapshot = PolicySnapshot(policies, {p: tuple(i) for p, i in result.errors.items()}, missing)
            if self._on_reload is not None:
                self._on_reload(self._snapshot)
            return self._snapshot

    def remove(self, policy_id: str) -> PolicySnapshot:
        """Take a policy out on purpose (admin DELETE): its file is deleted and the policy leaves at once."""
        with self._lock:
            loaded = self._snapshot.policies.get(policy_id)
            if loaded is None:
                raise KeyError(policy_id)
            loaded.file.unlink(missing_ok=True)
            self._missing_since[policy_id] = float("-inf")  # no grace for a removal the operator asked for
        return self.reload()

    def write(self, policy_id: str, text: str, expected_version: str | None = None) -> Path:
        """Write a policy's file atomically (readers see the old file or the new, never half of one); the caller
        validated `text` and reloads after. With `expected_version`, refuse (VersionConflict) unless that version is
        the live one, checked under the same lock as the write, so of two operators editing one version only the
        first one's save lands."""
        with self._lock:
            loaded = self._snapshot.policies.get(policy_id)
            live = loaded.policy.version if loaded is not None else None
            if expected_version is not None and expected_version != live:
                raise VersionConflict(policy_id, expected_version, live)
            path = loaded.file if loaded is not None else self.directory / f"{policy_id}.yaml"
            write_atomic(path, text)
            return path

    def file_for(self, policy_id: str) -> Path:
        """Where a policy lives (or would live if new)."""
        loaded = self._snapshot.policies.get(policy_id)
        return loaded.file if loaded is not None else self.directory / f"{policy_id}.yaml"


async def watch(directory: Path, reload: Callable[[], Awaitable[object]], debounce_ms: int) -> None:
    """Call `reload` whenever the directory changes (also a Kubernetes ConfigMap's atomic `..data` symlink swap)."""
    from watchfiles import awatch

    async for _changes in awatch(directory, debounce=debounce_ms, step=50):
        try:
            await reload()
        except Exception:  # a reload must never kill the watcher
            log.exception("policy reload failed; last good policies stay active")
