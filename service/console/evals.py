"""Eval page: the `quell eval` runs found under QUELL_EVAL_DIR (one folder per run, as `--out` wrote it), each
report opened in the console."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from service.console.session import SessionDep
from service.console.web import page
from service.deps import GatewayDep

router = APIRouter()
REPORT_HEADERS = {"Content-Security-Policy": "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                             "frame-ancestors 'self'",
                  "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}  # fmt: skip
"""A report is shown as a document that runs no script and loads nothing (its plots are embedded)."""


def _runs(root: Path) -> list[dict[str, object]]:
    runs = []
    if not root.is_dir():
        return runs
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        summary, report = folder / "summary.json", folder / "report.html"
        if not summary.is_file() and not report.is_file():
            continue
        info: dict[str, object] = {"name": folder.name, "report": report.is_file(), "error": None, "policy": None, "date": None,
                                   "when": datetime.fromtimestamp(folder.stat().st_mtime, UTC)}  # fmt: skip
        if summary.is_file():
            try:
                data = json.loads(summary.read_text(encoding="utf-8"))
                meta = data.get("meta", {}) if isinstance(data, dict) else {}
                info["policy"] = meta.get("policy") if isinstance(meta, dict) else None
                info["date"] = meta.get("date") if isinstance(meta, dict) else None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                info["error"] = f"{summary.name}: {exc}"
        runs.append(info)
    return sorted(runs, key=lambda r: r["when"], reverse=True)  # type: ignore[arg-type,return-value]


@router.get("/evals", response_class=HTMLResponse)
async def evals(request: Request, session: SessionDep, gateway: GatewayDep) -> HTMLResponse:
    root = gateway.settings.eval_dir
    return page(request, "evals.html", session=session, root=root, runs=_runs(root))


def _listed(root: Path, name: str) -> dict[str, object] | None:
    """A run with a report, by the name the listing shows: no path taken from the URL is ever opened."""
    return next((r for r in _runs(root) if r["report"] and r["name"] == name), None)


@router.get("/evals/{name}", response_class=HTMLResponse)
async def report_page(name: str, request: Request, session: SessionDep, gateway: GatewayDep) -> Response:
    """The report inside the console's page (an iframe onto the report itself)."""
    run = _listed(gateway.settings.eval_dir, name)
    if run is None:
        return page(request, "message.html", 404, session=session, title="Unknown eval run",
                    message=f"No report {name!r} under {gateway.settings.eval_dir}.")  # fmt: skip
    return page(request, "eval.html", session=session, run=run)


@router.get("/evals/{name}/report")
async def report(name: str, request: Request, session: SessionDep, gateway: GatewayDep) -> Response:
    run = _listed(gateway.settings.eval_dir, name)
    if run is None:
        return page(request, "message.html", 404, session=session, title="Unknown eval run",
                    message=f"No report {name!r} under {gateway.settings.eval_dir}.")  # fmt: skip
    return FileResponse(gateway.settings.eval_dir / name / "report.html", media_type="text/html",
                        headers=REPORT_HEADERS)  # fmt: skip
