"""Client API keys (tenants) and the operator token, compared in constant time.

Keys come from a YAML file (QUELL_KEYS_FILE) and/or the environment (QUELL_API_KEYS). A key file looks like:

    tenants:
      acme:
        policies: [spiderman]        # this tenant's defaults (omit: the policies marked `default: true`)
        may_add: [pii-names]         # policies a request may add; ["*"] for any
        see_detections: false        # /v1/moderations spans, scores and thresholds (default: categories only)
    keys:
      - key: sk-acme-1               # or sha256: <hex digest of the key>, to keep keys out of the file
        tenant: acme

With no keys at all the gateway is open, and serves on loopback only (see `check_exposure`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.errors import APIError

OPEN_TENANT = "default"


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policies: list[str] | None = None
    may_add: list[str] = Field(default_factory=list)
    see_detections: bool = False
    """/v1/moderations answers with spans, scores and thresholds only for tenants allowed to see them: for anyone
    else they would be an oracle for evading the policies (categories and flags are all they get)."""


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str | None = Field(None, min_length=8)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    tenant: str = Field(min_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of `key` or `sha256`")
        return self

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.sha256) if self.sha256 else hashlib.sha256(self.key.encode()).digest()  # type: ignore[union-attr]


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    keys: list[KeyEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class Tenant:
    id: str
    policies: tuple[str, ...] | None = None  # None: the policies marked default
    may_add: frozenset[str] = frozenset()
    see_detections: bool = False

    def may_add_policy(self, policy_id: str) -> bool:
        return "*" in self.may_add or policy_id in self.may_add


@dataclass
class KeyRing:
    _entries: list[tuple[bytes, Tenant]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self._entries

    def lookup(self, presented: str | None) -> Tenant | None:
        """The tenant of a presented key. Every entry is compared (constant time), so timing says nothing."""
        digest = hashlib.sha256((presented or "").encode()).digest()
        found: Tenant | None = None
        for known, tenant in self._entries:
            if hmac.compare_digest(digest, known) and presented:
                found = tenant
        return found

    @classmethod
    def load(cls, keys_file: Path | None, env_keys: str | None) -> KeyRing:
        ring = cls()
        if keys_file is not None:
            try:
                raw = yaml.safe_load(keys_file.read_text(encoding="utf-8")) or {}
                parsed = KeysFile.model_validate(raw)
            except (OSError, yaml.YAMLError, ValidationError) as exc:
                raise ValueError(f"QUELL_KEYS_FILE {keys_file}: {exc}") from None
            for entry in parsed.keys:
                cfg = parsed.tenants.get(entry.tenant, TenantConfig())
                tenant = Tenant(entry.tenant, tuple(cfg.policies) if cfg.policies is not None else None,
                                frozenset(cfg.may_add), cfg.see_detections)  # fmt: skip
                ring._entries.append((entry.digest, tenant))
        for item in filter(None, (part.strip() for part in (env_keys or "").split(","))):
            key, _, tenant = item.partition(":")
            if len(key) < 8:
                raise ValueError("QUELL_API_KEYS: every key needs at least 8 characters")
            ring._entries.append((hashlib.sha256(key.encode()).digest(), Tenant(tenant or OPEN_TENANT)))
        return ring


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def check_admin(token: str | None, configured: str | None) -> None:
    expected = hashlib.sha256((configured or "").encode()).digest()
    given = hashlib.sha256((token or "").encode()).digest()
    if not (hmac.compare_digest(expected, given) and configured and token):
        raise APIError(401, "missing or wrong operator token (Authorization: Bearer $QUELL_ADMIN_TOKEN)",
                       type="authentication_error", code="invalid_admin_token",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, ring: KeyRing) -> str | None:
    """Why this gateway must not start: an open (keyless) gateway beyond loopback."""
    if ring.empty and not is_loopback(host):
        return (f"refusing to listen on {host} without client keys: set QUELL_KEYS_FILE or QUELL_API_KEYS, "
                "or listen on 127.0.0.1")  # fmt: skip
    return None
