"""Download of the audit trail by an admin (``GET /admin/audit/export``).

The query takes ``since`` and ``until`` (ISO 8601 dates or date-times, UTC when no offset;
either may be left out) and ``format`` (``csv`` or ``jsonl``). The export itself is
audited before the file is streamed, so it appears in the exports that follow.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from node.audit_export import (
    AuditExportError,
    AuditFormat,
    check_range,
    iter_events,
    parse_time_bound,
    render_lines,
)
from node.db.types import utcnow
from node.logs import log_event
from node.web.deps import AdminDep, audit, get_context

logger = logging.getLogger(__name__)
router = APIRouter()


@router.get("/admin/audit/export")
def export_audit(request: Request, viewer: AdminDep, since: str = "", until: str = "",
                 format: str = "csv") -> Response:
    """Stream the audit events of a time range as a CSV or JSON Lines attachment."""
    try:
        fmt = AuditFormat(format)
    except ValueError as exc:
        raise HTTPException(400, "format must be csv or jsonl") from exc
    try:
        start = parse_time_bound(since, name="since") if since.strip() else None
        end = parse_time_bound(until, name="until") if until.strip() else None
        check_range(start, end)
    except AuditExportError as exc:
        raise HTTPException(400, str(exc).replace("--", "")) from exc
    ctx = get_context(request)
    now = utcnow()
    with ctx.database.sessions.begin() as session:
        audit(session, viewer, "audit_exported", "audit", now=now, details={
            "since": start.isoformat() if start else None,
            "until": end.isoformat() if end else None, "format": fmt.value, "via": "web"})
    log_event(logger, logging.INFO, "audit_exported", user_id=viewer.id, format=fmt.value)
    filename = f"radnode-audit-{now:%Y%m%dT%H%M%SZ}.{fmt.value}"
    return StreamingResponse(
        render_lines(iter_events(ctx.database.sessions, start, end), fmt),
        media_type=f"{fmt.media_type}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"',
                 "Cache-Control": "no-store"},
    )


__all__ = ["router"]
