"""A tenant's upstream: add one, its health (a fresh discovery), and the drift review: each definition
pinned vs current as a line diff, approved with one button. The REST handlers do the work."""

from __future__ import annotations

import difflib
import uuid
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tenantry.api import upstreams as upstreams_api
from tenantry.api.console.actions import back, json_field, refused
from tenantry.api.console.html import esc, form, link, messages, page, pretty, status, table
from tenantry.api.console.sessions import ChangeDep, Session, SessionDep
from tenantry.api.console.tenants import tabs
from tenantry.api.deps import ServicesDep
from tenantry.errors import TenantryError
from tenantry.tenancy import parse_tenant_id

router = APIRouter(prefix="/console/tenants/{tenant_id}/upstreams", include_in_schema=False)


@router.post("")
async def add_upstream(tenant_id: str, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}"
    try:
        body = upstreams_api.UpstreamCreate(
            name=change.get("name"),
            url=change.get("url"),
            transport=change.get("transport") or "streamable_http",
            headers=json_field(change.get("headers"), "headers", default={}),
            costs=json_field(change.get("costs"), "costs", default={}),
            document=change.get("document", "").strip() or None,
            operations=json_field(change.get("operations", ""), "operations", default=None),
        )
        created = await upstreams_api.create_upstream(tenant_id, body, services)
    except (TenantryError, ValidationError) as exc:
        return refused(change.session, exc, here)
    return back(f"{here}/upstreams/{created['id']}", notice=f"Upstream {created['name']} added.")


def diff(pinned: Any, current: Any) -> str:
    """The definition's change as lines removed and added (unchanged lines as context)."""
    before = pretty(pinned).splitlines() if pinned is not None else []
    after = pretty(current).splitlines() if current is not None else []
    lines = []
    for line in difflib.unified_diff(before, after, "pinned", "current", n=2, lineterm=""):
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            lines.append(f"<del>{esc(line)}</del>")
        elif line.startswith("+"):
            lines.append(f"<ins>{esc(line)}</ins>")
        else:
            lines.append(f"<span>{esc(line)}</span>\n")
    return f'<pre class="diff">{"".join(lines)}</pre>' if lines else '<p class="muted">No change.</p>'


def _review(session: Session, base: str, tools: list[dict[str, Any]]) -> str:
    out = []
    for tool in tools:
        name, state = tool["tool"], tool["status"]
        pinned = (tool.get("pinned") or {}).get("definition")
        current = (tool.get("current") or {}).get("definition")
        findings = "".join(f"<li>{esc(f)}</li>" for f in tool.get("findings") or [])
        approve = ""
        if state in ("changed", "flagged") and current is not None:
            approve = form(
                session, f"{base}/tools/{quote(name, safe='/:')}/approve", "", button=f"Approve {name}", css="inline"
            )
        detail = diff(pinned, current) if state != "approved" else f"<pre>{esc(pretty(current))}</pre>"
        out.append(
            f'<section class="tool" data-tool="{esc(name)}" data-status="{esc(state)}"><h2>{esc(name)} '
            f"{status(state)}</h2>{f'<ul>{findings}</ul>' if findings else ''}{detail}{approve}</section>"
        )
    return "".join(out) or '<p class="muted">The upstream offers nothing yet.</p>'


@router.get("/{upstream_id}")
async def upstream_page(
    request: Request, tenant_id: str, upstream_id: uuid.UUID, session: SessionDep, services: ServicesDep
) -> Response:
    tid = parse_tenant_id(tenant_id)
    upstream = await upstreams_api.get_upstream(tenant_id, upstream_id, services)
    health = await upstreams_api.refresh_upstream(tenant_id, upstream_id, services)
    review = await upstreams_api.review_tools(tenant_id, upstream_id, services)
    base = f"/console/tenants/{tid}/upstreams/{upstream_id}"
    rows = [[esc(k), esc(v if not isinstance(v, (dict, list)) else pretty(v))] for k, v in health.items()]
    drift = [
        [
            esc(d["tool"]),
            esc(d["seen_at"][:19]),
            f"<code>{esc(d['pinned'][:12])}</code> → <code>{esc(d['seen'][:12])}</code>",
        ]
        for d in (review.get("drift_log") or [])[:20]
    ]
    body = (
        messages(request.query_params)
        + tabs(tid)
        + f"<section><p>{esc(upstream['url'])} · {esc(upstream['transport'])} · health {status(health['status'])}</p>"
        + form(session, f"{base}/refresh", "", button="Refresh now", kind="quiet")
        + table(["Check", "Value"], rows)
        + "</section><h2>Definitions: pinned vs current</h2>"
        + _review(session, base, review["tools"])
        + f"<section><h2>Drift log</h2>{table(['Tool', 'Seen', 'Pinned → seen'], drift, empty='None.')}</section>"
        + f"<p>{link(f'/console/tenants/{tid}', 'Back to the tenant')}</p>"
    )
    return page(f"Upstream {upstream['name']}", body, session)


@router.post("/{upstream_id}/refresh")
async def refresh(tenant_id: str, upstream_id: uuid.UUID, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}/upstreams/{upstream_id}"
    try:
        checked = await upstreams_api.refresh_upstream(tenant_id, upstream_id, services)
    except TenantryError as exc:
        return refused(change.session, exc, here)
    return back(here, notice=f"Discovered again: {checked['status']}.")


@router.post("/{upstream_id}/tools/{tool:path}/approve")
async def approve(
    tenant_id: str, upstream_id: uuid.UUID, tool: str, change: ChangeDep, services: ServicesDep
) -> Response:
    here = f"/console/tenants/{tenant_id}/upstreams/{upstream_id}"
    try:
        await upstreams_api.approve_tool(tenant_id, upstream_id, tool, services)
    except TenantryError as exc:
        return refused(change.session, exc, here)
    return back(here, notice=f"Approved the current definition of {tool}.")
