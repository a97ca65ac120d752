"""A tenant's audit trail in the console: filtered pages of 100 records with "newer" and "older" links,
and the filtered trail exported (JSON Lines or CSV, streamed); its hash chain is verified from here too
(`chain.py`).

Everything reads through the REST API's own functions (`api/audit.py`, `audit/store.py`): the same
filter, the same keyset pages on (at, seq) — so the thousandth page costs what the first does —, the
same export stream. Filters ride along in every link, so paging and exporting act on what the admin
is looking at.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from tenantry.api import audit as audit_api
from tenantry.api.console.html import choice, esc, field, form, link, messages, page, pretty, status, table
from tenantry.api.console.sessions import SessionDep
from tenantry.api.console.tenants import tabs
from tenantry.api.deps import ServicesDep
from tenantry.audit import store
from tenantry.errors import BadRequest
from tenantry.services import Services

router = APIRouter(prefix="/console/tenants/{tenant_id}/audit", include_in_schema=False)

PAGE_SIZE: Final = 100
_COLUMNS: Final = ["At", "Seq", "Subject", "Method", "Tool", "Decision", "Outcome", "Detail"]

# As the REST filters (no control characters), but blank means "any": a GET form sends every field.
_Text = Annotated[str, Query(max_length=300, pattern=r"^[^\x00-\x1f\x7f]*$")]
_Time = Annotated[str, Query(max_length=40, pattern=r"^[^\x00-\x1f\x7f]*$", description="ISO 8601; no zone: UTC")]
_Cursor = Annotated[str, Query(max_length=200)]


def _shown(
    subject: _Text = "",
    tool: _Text = "",
    method: _Text = "",
    decision: Annotated[Literal["", "admitted", "refused"], Query()] = "",
    outcome: _Text = "",
    since: _Time = "",
    until: _Time = "",
) -> dict[str, str]:
    """The filter fields as the admin filled them in (kept in every link)."""
    return {
        "subject": subject,
        "tool": tool,
        "method": method,
        "decision": decision,
        "outcome": outcome,
        "since": since,
        "until": until,
    }


Shown = Annotated[dict[str, str], Depends(_shown)]


def _where(shown: dict[str, str]) -> store.AuditFilter:
    """The REST API's filter from the console's fields (blank: any); a bad time or range is a 400."""
    decision = shown["decision"]
    return store.AuditFilter(
        since=store.parse_time(shown["since"] or None, "since"),
        until=store.parse_time(shown["until"] or None, "until"),
        subject=shown["subject"] or None,
        tool=shown["tool"] or None,
        decision="admitted" if decision == "admitted" else "refused" if decision == "refused" else None,
        outcome=shown["outcome"] or None,
        method=shown["method"] or None,
    )


def _href(base: str, shown: dict[str, str], **more: str) -> str:
    kept = {name: value for name, value in {**shown, **more}.items() if value}
    return f"{base}?{urlencode(kept)}" if kept else base


def _rows(found: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            esc(r["at"][:23]),
            esc(r["seq"]),
            esc(r["subject"]),
            esc(r["method"]),
            esc(r["tool"]),
            status(r["decision"]),
            esc(r["outcome"] or r["reason"]),
            f"<code>{esc(pretty(r['detail']) if r.get('detail') else '')}</code>",
        ]
        for r in found
    ]


async def _records(
    services: Services, tid: uuid.UUID, where: store.AuditFilter, older: str, newer: str
) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """(records newest first, cursor of the newer page, cursor of the older page); None: no such page."""
    if older and newer:
        raise BadRequest("ask for older or newer records, not both", code="invalid_cursor")
    if newer:
        found, newer_still = await store.page(services.db, tid, where, limit=PAGE_SIZE, cursor=newer, newer=True)
        if newer_still is not None:
            return found, newer_still, store.cursor_of(found[-1]) if found else newer
        # Nothing newer than these: the latest page, full, as the first page shows it.
    found, older_still = await store.page(services.db, tid, where, limit=PAGE_SIZE, cursor=older or None)
    newer_page = (store.cursor_of(found[0]) if found else older) if older else None
    return found, newer_page, older_still


@router.get("")
async def audit_trail_page(
    request: Request,
    tenant_id: str,
    session: SessionDep,
    services: ServicesDep,
    shown: Shown,
    older: _Cursor = "",
    newer: _Cursor = "",
) -> Response:
    where = _where(shown)
    tid = await audit_api.trail_of(services, tenant_id)
    found, newer_page, older_page = await _records(services, tid, where, older, newer)
    base = f"/console/tenants/{tid}/audit"
    filters = (
        f'<form method="get" action="{base}" class="row">'
        + field("subject", "Subject", shown["subject"])
        + field("tool", "Tool", shown["tool"])
        + field("method", "Method", shown["method"])
        + choice("decision", "Decision", ["admitted", "refused"], shown["decision"], blank="any")
        + field("outcome", "Outcome", shown["outcome"])
        + field("since", "Since (UTC, ISO 8601)", shown["since"], size=19)
        + field("until", "Until (UTC, exclusive)", shown["until"], size=19)
        + '<button type="submit" class="quiet">Filter</button></form>'
    )
    paging = [link(_href(base, shown), "Latest")] if (older or newer) else []
    if newer_page is not None:
        paging.append(f'<a href="{esc(_href(base, shown, newer=newer_page))}" rel="prev">← Newer</a>')
    if older_page is not None:
        paging.append(f'<a href="{esc(_href(base, shown, older=older_page))}" rel="next">Older →</a>')
    exports = " · ".join(
        link(_href(f"{base}/export", shown, format=kind), f"Export {label}")
        for kind, label in (("jsonl", "JSON Lines"), ("csv", "CSV"))
    )
    verify = form(session, f"{base}/verify", "", button="Verify the chain", kind="quiet", css="inline")
    body = (
        messages(request.query_params)
        + tabs(tid)
        + f"<section>{filters}<p class='muted'>{len(found)} matching record(s) shown, newest first, "
        f"{PAGE_SIZE} a page. {exports} (every matching record, oldest first).</p>"
        f'<nav class="paging">{" · ".join(paging)}</nav>'
        + table(_COLUMNS, _rows(found), empty="No records match.")
        + f'<nav class="paging">{" · ".join(paging)}</nav></section>'
        f"<section><h2>Tamper check</h2><p>Walks the tenant's hash chain from its first kept record to its head"
        f" and names the first broken link ({link(f'{base}/verify', 'the last verdict')}).</p>{verify}</section>"
    )
    return page("Audit trail", body, session)


@router.get("/export")
async def export_trail(
    tenant_id: str,
    session: SessionDep,
    services: ServicesDep,
    shown: Shown,
    format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",
) -> StreamingResponse:
    """The REST export itself (`GET /api/tenants/{id}/audit/export`) of the records the page filters."""
    response = await audit_api.audit_export(tenant_id, services, _where(shown), format)
    response.headers["Cache-Control"] = "no-store"
    return response
