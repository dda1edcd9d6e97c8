"""Policy pages: list, editor (validate as you type, review the diff, save), try it (live vs draft), history and
rollback. Every write goes through the registry's atomic write with the version the operator edited, like
`PUT /admin/policies/{id}` with If-Match, under the admin routes' write lock."""

from __future__ import annotations

import asyncio
import difflib
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from filters.policy import Policy
from filters.policy_loader import PolicyError, PolicyIssue, parse_policy
from service.audit import AuditStoreError
from service.console import inspect as tryit
from service.console.session import ConsoleSession, SessionDep, WriterDep
from service.console.web import page
from service.deps import GatewayDep
from service.gateway import Gateway
from service.policy_history import HistoryEntry, PolicyHistory
from service.policy_registry import LoadedPolicy, VersionConflict
from service.routes.admin import _write_lock

router = APIRouter()
MAX_YAML_CHARS = 1_000_000
MAX_TRY_CHARS = 200_000


def _history(request: Request) -> PolicyHistory:
    return request.app.state.policy_history


def _loaded(gateway: Gateway, policy_id: str) -> LoadedPolicy | None:
    return gateway.registry.snapshot.policies.get(policy_id)


def _source(gateway: Gateway, policy_id: str) -> str:
    """How errors name the draft: the policy's file name, as a reload would."""
    return gateway.registry.file_for(policy_id).name


def _parse(gateway: Gateway, policy_id: str, text: str) -> tuple[Policy | None, list[PolicyIssue]]:
    if len(text) > MAX_YAML_CHARS:
        return None, [PolicyIssue(_source(gateway, policy_id), None, "", f"over {MAX_YAML_CHARS} characters")]
    try:
        policy = parse_policy(text, _source(gateway, policy_id), gateway.registry.directory)
    except PolicyError as exc:
        return None, list(exc.issues)
    if policy.id != policy_id:
        return None, [PolicyIssue(_source(gateway, policy_id), _id_line(text), "id",
                                  f"the draft says id {policy.id!r}; this page edits {policy_id!r}")]  # fmt: skip
    return policy, []


def _id_line(text: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("id:"):
            return number
    return 1


def _live_text(request: Request, gateway: Gateway, loaded: LoadedPolicy) -> str:
    """The YAML of the live version: its file if it still says that version, else the stored history copy."""
    try:
        text = loaded.file.read_text(encoding="utf-8")
        if parse_policy(text, loaded.file.name, loaded.file.parent).digest == loaded.policy.digest:
            return text
    except (OSError, UnicodeDecodeError, PolicyError):
        pass
    try:
        entry = _history(request).get(loaded.policy.id, loaded.policy.digest)
    except AuditStoreError:
        entry = None
    return entry.content if entry else ""


def _diff(old: str, new: str, old_name: str, new_name: str) -> list[tuple[str, str]]:
    """Unified diff lines with their kind (add, del, hunk, same) for the template."""
    out = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name, lineterm=""):
        kind = ("hunk" if line.startswith("@@") else "head" if line.startswith(("---", "+++")) else
                "add" if line.startswith("+") else "del" if line.startswith("-") else "same")  # fmt: skip
        out.append((kind, line))
    return out


@dataclass
class TryResult:
    label: str
    ref: str
    hits: list[tryit.Hit]
    segments: list[tryit.Segment]


async def _try(gateway: Gateway, label: str, policy: Policy, text: str) -> TryResult:
    found = await tryit.hits(gateway.semantic, policy, text)
    return TryResult(label, policy.ref, found, tryit.segments(text, found))


def _versions(request: Request, policy_id: str) -> tuple[list[HistoryEntry], str | None]:
    try:
        return _history(request).versions(policy_id), None
    except AuditStoreError as exc:
        return [], f"history unavailable: {exc}"


async def _editor(request: Request, gateway: Gateway, session, policy_id: str, *, draft: str | None = None,
                  base_version: str | None = None, status: int = 200, **extra: object) -> HTMLResponse:  # fmt: skip
    loaded = _loaded(gateway, policy_id)
    if loaded is None:
        return page(request, "message.html", 404, session=session, title="Unknown policy",
                    message=f"No live policy {policy_id!r}.")  # fmt: skip
    live_text = _live_text(request, gateway, loaded)
    text = live_text if draft is None else draft
    versions, history_error = _versions(request, policy_id)
    errors = extra.pop("errors", [])
    return page(request, "policy.html", status, session=session, loaded=loaded, policy_id=policy_id, draft=text,
                base_version=base_version or loaded.policy.version, live_text=live_text, versions=versions,
                history_error=history_error, errors=errors, line_count=max(1, text.count("\n") + 1),
                error_lines=_by_line(errors), **extra)  # fmt: skip


def _by_line(errors: list[PolicyIssue]) -> dict[int, str]:
    """Each marked line's reasons, for the gutter's hover text."""
    out: dict[int, str] = {}
    for e in errors:
        if e.line:
            reason = f"{e.field}: {e.message}" if e.field else e.message
            out[e.line] = f"{out[e.line]}\n{reason}" if e.line in out else reason
    return out


@router.get("/policies", response_class=HTMLResponse)
async def list_policies(request: Request, session: SessionDep, gateway: GatewayDep) -> HTMLResponse:
    snap = gateway.registry.snapshot
    stale = {str(path) for path in snap.errors}
    rows = []
    for pid, lp in sorted(snap.policies.items()):
        status = "stale" if str(lp.file) in stale else ("file_missing" if pid in snap.missing else "active")
        rows.append({"id": pid, "version": lp.policy.version, "status": status, "default": lp.policy.default,
                     "loaded_at": lp.loaded_at, "file": lp.file.name, "errors": snap.errors.get(lp.file, ()),
                     "targets": len(lp.policy.targets)})  # fmt: skip
    history = _history(request)
    for row in rows:  # who made each live version live (empty while the store cannot answer)
        try:
            newest = history.versions(str(row["id"]), limit=1)
        except AuditStoreError:
            newest = []
        row["by"] = newest[0].actor if newest and newest[0].version == row["version"] else ""
    live_files = {str(lp.file) for lp in snap.policies.values()}
    rejected = [(path.name, issues) for path, issues in snap.errors.items() if str(path) not in live_files]
    return page(request, "policies.html", session=session, rows=rows, rejected=rejected)


@router.get("/policies/{policy_id}", response_class=HTMLResponse)
async def edit_policy(request: Request, policy_id: str, session: SessionDep, gateway: GatewayDep,
                      saved: str | None = None, rolled_back: bool = False) -> HTMLResponse:  # fmt: skip
    return await _editor(request, gateway, session, policy_id, saved=saved, rolled_back=rolled_back)


@router.post("/api/validate")
async def validate(request: Request, session: WriterDep, gateway: GatewayDep) -> JSONResponse:
    """The editor's validate-as-you-type: {"policy_id", "yaml"} in, the issues with their lines out."""
    body = await request.json()
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("yaml"), str)
        or not isinstance(body.get("policy_id"), str)
    ):
        return JSONResponse({"error": 'expected {"policy_id": str, "yaml": str}'}, status_code=400)
    policy, issues = _parse(gateway, body["policy_id"], body["yaml"])
    return JSONResponse({"valid": policy is not None, "version": policy.version if policy else None,
                         "errors": [{"line": i.line, "field": i.field, "message": i.message, "text": str(i)}
                                    for i in issues]})  # fmt: skip


YamlForm = Annotated[str, Form(alias="yaml")]
BaseForm = Annotated[str, Form()]


@router.post("/policies/{policy_id}/review", response_class=HTMLResponse)
async def review(request: Request, policy_id: str, session: WriterDep, gateway: GatewayDep, yaml: YamlForm,
                 base_version: BaseForm) -> HTMLResponse:  # fmt: skip
    """The draft against the live version: validation errors, or the diff and a Save button."""
    loaded = _loaded(gateway, policy_id)
    policy, issues = _parse(gateway, policy_id, yaml)
    live_text = _live_text(request, gateway, loaded) if loaded else ""
    live_ref = loaded.policy.ref if loaded else f"{policy_id}@none"
    diff = _diff(live_text, yaml, f"live {live_ref}", f"draft {policy.ref if policy else '(invalid)'}")
    return await _editor(request, gateway, session, policy_id, draft=yaml, base_version=base_version,
                         status=200 if policy else 422, errors=issues, diff=diff, reviewed=policy)  # fmt: skip


async def _write(request: Request, gateway: Gateway, session, policy_id: str, text: str, base_version: str,
                 policy: Policy) -> str:  # fmt: skip
    """The atomic write with the version the operator started from; returns the version now live."""
    async with _write_lock:
        _history(request).expect(policy_id, policy.digest, session.operator)
        await asyncio.to_thread(gateway.registry.write, policy_id, text, base_version)
        snapshot = await gateway.reload_policies()
    live = snapshot.policies.get(policy_id)
    return live.policy.version if live else "none"


@router.post("/policies/{policy_id}/save", response_class=HTMLResponse)
async def save(request: Request, policy_id: str, session: WriterDep, gateway: GatewayDep, yaml: YamlForm,
               base_version: BaseForm) -> Response:  # fmt: skip
    policy, issues = _parse(gateway, policy_id, yaml)
    if policy is None:  # the live policy stays; the draft stays in the editor with its errors
        return await _editor(request, gateway, session, policy_id, draft=yaml, base_version=base_version,
                             status=422, errors=issues)  # fmt: skip
    try:
        version = await _write(request, gateway, session, policy_id, yaml, base_version, policy)
    except VersionConflict as exc:
        return await _editor(request, gateway, session, policy_id, draft=yaml, base_version=base_version,
                             status=409, conflict=str(exc), conflict_live=exc.live)  # fmt: skip
    except OSError as exc:
        return await _editor(request, gateway, session, policy_id, draft=yaml, base_version=base_version,
                             status=409, conflict=f"cannot write the policy file: {exc.strerror} (a read-only "
                                                  "mount such as a ConfigMap? edit the source instead)")  # fmt: skip
    return RedirectResponse(f"/console/policies/{policy_id}?saved={version}", status_code=303)


@router.post("/policies/{policy_id}/try", response_class=HTMLResponse)
async def try_policy(request: Request, policy_id: str, session: WriterDep, gateway: GatewayDep, yaml: YamlForm,
                     base_version: BaseForm, try_text: Annotated[str, Form()] = "") -> HTMLResponse:  # fmt: skip
    """The sample text through the live version and through the draft (parsed, never made live)."""
    loaded = _loaded(gateway, policy_id)
    text = try_text[:MAX_TRY_CHARS]
    results = []
    if loaded is not None and text:
        results.append(await _try(gateway, "live", loaded.policy, text))
    draft, issues = _parse(gateway, policy_id, yaml)
    if draft is not None and text:
        results.append(await _try(gateway, "draft", draft, text))
    return await _editor(request, gateway, session, policy_id, draft=yaml, base_version=base_version,
                         errors=issues, try_text=text, results=results)  # fmt: skip


def _stored(request: Request, session: ConsoleSession, policy_id: str, version: str) -> HistoryEntry | Response:
    """A stored version of the policy, or the page that says why there is none."""
    try:
        entry = _history(request).get(policy_id, version)
    except AuditStoreError as exc:
        return page(request, "message.html", 503, session=session, title="History unavailable", message=str(exc))
    if entry is None:
        return page(request, "message.html", 404, session=session, title="Unknown version",
                    message=f"No stored version {version!r} of policy {policy_id!r}.")  # fmt: skip
    return entry


@router.get("/policies/{policy_id}/versions/{version}", response_class=HTMLResponse)
async def show_version(request: Request, policy_id: str, version: str, session: SessionDep,
                       gateway: GatewayDep) -> HTMLResponse:  # fmt: skip
    entry = _stored(request, session, policy_id, version)
    if isinstance(entry, Response):
        return entry
    loaded = _loaded(gateway, policy_id)
    live_text = _live_text(request, gateway, loaded) if loaded else ""
    diff = _diff(live_text, entry.content, f"live {loaded.policy.ref if loaded else 'none'}",
                 f"{policy_id}@{entry.version}")  # fmt: skip
    return page(request, "version.html", session=session, entry=entry, loaded=loaded, diff=diff)


@router.post("/policies/{policy_id}/rollback", response_class=HTMLResponse)
async def rollback(request: Request, policy_id: str, session: WriterDep, gateway: GatewayDep,
                   version: Annotated[str, Form()], base_version: BaseForm) -> Response:  # fmt: skip
    """Make a stored version live again, through the same atomic write (and conflict check) as a save."""
    entry = _stored(request, session, policy_id, version)
    if isinstance(entry, Response):
        return entry
    policy, issues = _parse(gateway, policy_id, entry.content)
    if policy is None:  # e.g. a protected-text source that is gone: the live policy stays
        return await _editor(request, gateway, session, policy_id, draft=entry.content, base_version=base_version,
                             status=422, errors=issues)  # fmt: skip
    try:
        live = await _write(request, gateway, session, policy_id, entry.content, base_version, policy)
    except VersionConflict as exc:
        return await _editor(request, gateway, session, policy_id, base_version=base_version, status=409,
                             conflict=str(exc), conflict_live=exc.live)  # fmt: skip
    except OSError as exc:
        return await _editor(request, gateway, session, policy_id, status=409,
                             conflict=f"cannot write the policy file: {exc.strerror}")  # fmt: skip
    return RedirectResponse(f"/console/policies/{policy_id}?saved={live}&rolled_back=1", status_code=303)
