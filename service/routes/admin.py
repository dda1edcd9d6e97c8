"""Operator routes (Bearer $QUELL_ADMIN_TOKEN): inspect, validate, test, write and reload policies."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from filters.policy import Policy
from filters.policy_loader import PolicyError, PolicyIssue, parse_policy
from service.audit import AuditStoreError, parse_since
from service.auth import bearer
from service.deps import GatewayDep, OperatorDep
from service.errors import APIError
from service.inspect import concept_notes, inspect_text, protected_runs
from service.policy_history import operator_id
from service.policy_registry import VersionConflict

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[OperatorDep])
_write_lock = asyncio.Lock()
MAX_AUDIT_PAGE = 10_000
"""Most audit events one request returns: a larger page is a memory problem for the gateway, not a query."""

YamlBody = Annotated[str, Body(media_type="application/yaml", description="one policy as YAML")]


class TestRequest(BaseModel):
    text: str = Field(min_length=1, max_length=200_000)


def _issues(issues: list[PolicyIssue] | tuple[PolicyIssue, ...]) -> list[dict]:
    return [{"file": i.file, "line": i.line, "field": i.field, "message": i.message} for i in issues]


def _invalid(issues: list[PolicyIssue] | tuple[PolicyIssue, ...]) -> JSONResponse:
    """422 with every issue, plus the first as an OpenAI-style error object like every other 4xx."""
    first = issues[0] if issues else PolicyIssue("<request>", 1, "", "invalid policy")
    where = f"{first.field}: " if first.field else ""
    error = APIError(422, f"{where}{first.message} (line {first.line})", param=first.field or "body",
                     code="invalid_policy")  # fmt: skip
    return JSONResponse({**error.body(), "valid": False, "errors": _issues(issues)}, status_code=422)


def _summary(policy: Policy) -> dict:
    return {
        "id": policy.id, "version": policy.version, "digest": policy.digest, "default": policy.default,
        "applies_to": policy.applies_to,
        "targets": [{"id": t.id, "terms": len(t.terms), "concept": t.concept is not None,
                     "on_surface": t.on_surface.value, "on_concept": t.on_concept.value,
                     "protected_text": t.protected_text.corpus.digest[:12] if t.protected_text else None,
                     "on_protected": t.on_protected.value} for t in policy.targets],
    }  # fmt: skip


async def _yaml_text(request: Request) -> str:
    raw = await request.body()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "policy body must be UTF-8 YAML", param="body") from None


@router.get("/policies")
async def list_policies(gateway: GatewayDep) -> dict:
    snap = gateway.registry.snapshot
    stale = {str(path) for path in snap.errors}
    items = [
        {"id": pid, "version": lp.policy.version, "loaded_at": lp.loaded_at.isoformat(), "file": str(lp.file),
         "status": "stale" if str(lp.file) in stale else ("file_missing" if pid in snap.missing else "active"),
         "errors": _issues(snap.errors.get(lp.file, ()))}
        for pid, lp in snap.policies.items()
    ]  # fmt: skip
    broken = [{"file": str(path), "status": "rejected", "errors": _issues(issues)}
              for path, issues in snap.errors.items() if not any(str(lp.file) == str(path)
                                                                  for lp in snap.policies.values())]  # fmt: skip
    return {"data": items, "rejected": broken}


@router.get("/policies/{policy_id}")
async def get_policy(policy_id: str, gateway: GatewayDep) -> dict:
    loaded = gateway.registry.snapshot.policies.get(policy_id)
    if loaded is None:
        raise APIError(404, f"no policy {policy_id!r}", param="policy_id", code="unknown_policy")
    return {**_summary(loaded.policy), "file": str(loaded.file), "loaded_at": loaded.loaded_at.isoformat(),
            "policy": loaded.policy.model_dump(mode="json")}  # fmt: skip


@router.post("/policies:validate")
async def validate_policy(request: Request, gateway: GatewayDep, _body: YamlBody = "") -> JSONResponse:
    try:  # protected-text sources resolve against the policies folder, where a PUT would write the file
        policy = parse_policy(await _yaml_text(request), "<request>", gateway.registry.directory)
    except PolicyError as exc:
        return _invalid(exc.issues)
    return JSONResponse({"valid": True, "policy": _summary(policy)})


@router.post("/policies/{policy_id}:test")
async def test_policy(policy_id: str, body: TestRequest, gateway: GatewayDep) -> dict:
    loaded = gateway.registry.snapshot.policies.get(policy_id)
    if loaded is None:
        raise APIError(404, f"no policy {policy_id!r}", param="policy_id", code="unknown_policy")
    decisions = await inspect_text(gateway.semantic, [loaded.policy], body.text, gateway.judges)
    runs = [r.as_dict() for r in protected_runs([loaded.policy], body.text)]
    return {"policy": loaded.policy.ref, "fired": bool(decisions), "detections": [d.as_dict() for d in decisions],
            "protected_runs": runs, "concepts": await concept_notes(gateway.semantic, [loaded.policy])}  # fmt: skip


@router.put("/policies/{policy_id}")
async def put_policy(policy_id: str, request: Request, gateway: GatewayDep, _body: YamlBody = "",
                     if_match: Annotated[str | None, Header(description="the version this edit started from; "
                                                            "409 if another save landed since")] = None) -> JSONResponse:  # fmt: skip
    text = await _yaml_text(request)
    try:
        policy = parse_policy(text, f"PUT /admin/policies/{policy_id}", gateway.registry.directory)
    except PolicyError as exc:
        return _invalid(exc.issues)
    if policy.id != policy_id:
        issue = PolicyIssue("<request>", 1, "id", f"the body says id {policy.id!r} but the URL says {policy_id!r}")
        return _invalid([issue])
    async with _write_lock:  # one writer at a time in this process; rename is atomic across processes anyway
        path = gateway.registry.file_for(policy_id)  # named in the error if the write fails
        request.app.state.policy_history.expect(
            policy_id,
            policy.digest,  # history: who made it live
            operator_id(bearer(request.headers.get("authorization")) or ""),
        )
        try:
            path = await asyncio.to_thread(gateway.registry.write, policy_id, text, _version(if_match))
        except VersionConflict as exc:
            raise APIError(409, str(exc), param="If-Match", code="version_conflict",
                           extra={"live_version": exc.live}) from None  # fmt: skip
        except OSError as exc:
            raise APIError(409, f"cannot write {path}: {exc.strerror} (a read-only mount such as a ConfigMap? "
                                "edit the source instead)", code="policies_read_only") from None  # fmt: skip
        snapshot = await gateway.reload_policies()
    live = snapshot.policies.get(policy_id)
    return JSONResponse({"valid": True, "policy": _summary(policy), "file": str(path),
                         "active_version": live.policy.version if live else None})  # fmt: skip


def _version(if_match: str | None) -> str | None:
    """An If-Match value as a policy version (quotes and a weak-tag prefix allowed, as HTTP clients send them)."""
    if if_match is None:
        return None
    return if_match.strip().removeprefix("W/").strip('"') or None


@router.delete("/policies/{policy_id}")
async def delete_policy(policy_id: str, gateway: GatewayDep) -> dict:
    """Take a policy out on purpose: its file is deleted and it stops applying at once (a file that merely
    disappears keeps its policy live for QUELL_POLICY_REMOVAL_GRACE_S)."""
    async with _write_lock:
        try:
            snapshot = await asyncio.to_thread(gateway.registry.remove, policy_id)
        except KeyError:
            raise APIError(404, f"no policy {policy_id!r}", param="policy_id", code="unknown_policy") from None
        except OSError as exc:
            raise APIError(409, f"cannot delete the file of {policy_id!r}: {exc.strerror} (a read-only mount such "
                                "as a ConfigMap? edit the source instead)", code="policies_read_only") from None  # fmt: skip
    return {"deleted": policy_id, "policies": [lp.policy.ref for lp in snapshot.policies.values()]}


@router.get("/audit")
async def audit_events(gateway: GatewayDep, since: str | None = None, policy: str | None = None,
                       limit: int = Query(100, ge=1, le=MAX_AUDIT_PAGE)) -> dict:  # fmt: skip
    """Suppression decisions, newest first. `since`: 15m, 2h, 7d or an ISO time; `policy`: id or id@version."""
    try:
        start = parse_since(since) if since else None
    except ValueError as exc:
        raise APIError(400, str(exc), param="since") from None
    try:
        events = await gateway.audit.query(since=start, policy=policy, limit=limit)
    except ValueError as exc:
        raise APIError(400, str(exc), param="limit") from None
    except AuditStoreError as exc:
        raise APIError(503, f"audit store unavailable: {exc}", type="service_unavailable",
                       code="audit_unavailable") from None  # fmt: skip
    return {"data": [e.as_dict() for e in events], "queued": gateway.audit.depth}


@router.post("/reload")
async def reload_policies(gateway: GatewayDep) -> dict:
    snapshot = await gateway.reload_policies()
    return {"policies": [lp.policy.ref for lp in snapshot.policies.values()],
            "errors": [e for issues in snapshot.errors.values() for e in _issues(issues)]}  # fmt: skip
