"""A tenant's upstream: add one, its health (a fresh discovery), the drift review (each definition
pinned vs current as a line diff, approved with one button), editing it (URL, credentials, costs,
enabled, an openapi upstream's document and operation filters) and deleting it after a confirmation
page. The REST handlers do the work (`api/upstreams.py`); credentials go in and are never shown back."""

from __future__ import annotations

import difflib
import json
import uuid
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tenantry.api import upstreams as upstreams_api
from tenantry.api.console.actions import back, json_field, refused
from tenantry.api.console.html import choice, esc, field, form, link, messages, page, pretty, status, table
from tenantry.api.console.sessions import ChangeDep, Session, SessionDep
from tenantry.api.console.tenants import tabs
from tenantry.api.deps import ServicesDep
from tenantry.errors import BadRequest, TenantryError
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
        + f"<section><p>{esc(upstream['url'])} · {esc(upstream['transport'])} · "
        f"{status('enabled' if upstream['enabled'] else 'disabled')} · health {status(health['status'])}</p>"
        + form(session, f"{base}/refresh", "", button="Refresh now", kind="quiet")
        + table(["Check", "Value"], rows)
        + "</section><h2>Definitions: pinned vs current</h2>"
        + _review(session, base, review["tools"])
        + f"<section><h2>Drift log</h2>{table(['Tool', 'Seen', 'Pinned → seen'], drift, empty='None.')}</section>"
        + f"<section><h2>Edit</h2>{_editor(session, base, upstream)}</section>"
        + f"<p>{link(f'/console/tenants/{tid}', 'Back to the tenant')} · {link(f'{base}/delete', 'Delete…')}</p>"
    )
    return page(f"Upstream {upstream['name']}", body, session)


def _editor(session: Session, base: str, upstream: dict[str, Any]) -> str:
    """The edit form, filled with what the upstream has now; credentials only by header name."""
    names = ", ".join(upstream["header_names"]) or "none"
    inner = (
        field("url", "URL", upstream["url"], required=True, size=50)
        + choice("enabled", "State", {"true": "enabled", "false": "disabled"}, str(upstream["enabled"]).lower())
        + field("headers", f"Headers (JSON, sealed; blank: keep the current ones: {names})", size=40)
        + field("costs", "Costs (JSON)", json.dumps(upstream["costs"], sort_keys=True), size=30)
    )
    if upstream["transport"] == "openapi":
        inner += field("operations", "Operations (JSON)", json.dumps(upstream["operations"], sort_keys=True), size=40)
        inner += (
            "<label>A new document (JSON or YAML; blank: keep the "
            f"{'uploaded one' if upstream['document'] == 'uploaded' else 'one fetched from the URL'})"
            '<textarea name="document" rows="4"></textarea></label>'
        )
    return form(session, f"{base}/update", inner, button="Save upstream")


@router.post("/{upstream_id}/update")
async def update(tenant_id: str, upstream_id: uuid.UUID, change: ChangeDep, services: ServicesDep) -> Response:
    """Sends the REST PATCH only what differs from the upstream now (blank credentials: kept)."""
    here = f"/console/tenants/{tenant_id}/upstreams/{upstream_id}"
    try:
        now = await upstreams_api.get_upstream(tenant_id, upstream_id, services)
        asked: dict[str, Any] = {
            "url": change.get("url") or now["url"],
            "costs": json_field(change.get("costs"), "costs", default={}),
            "enabled": _state(change.get("enabled", str(now["enabled"]).lower())),
        }
        if "operations" in change.form:
            asked["operations"] = json_field(change.get("operations"), "operations", default={})
        patch = {name: value for name, value in asked.items() if value != now.get(name)}
        if change.get("headers"):
            patch["headers"] = json_field(change.get("headers"), "headers")
        if change.get("document"):
            patch["document"] = change.get("document")
        updated = await upstreams_api.update_upstream(
            tenant_id, upstream_id, upstreams_api.UpstreamPatch(**patch), services
        )
    except (TenantryError, ValidationError) as exc:
        return refused(change.session, exc, here)
    said = ", ".join(sorted(patch)) or "nothing changed"
    return back(here, notice=f"Upstream {updated['name']} saved ({said}).")


def _state(raw: str) -> bool:
    if raw not in ("true", "false"):
        raise BadRequest("enabled is 'true' or 'false'", code="invalid_request")
    return raw == "true"


@router.get("/{upstream_id}/delete")
async def confirm_delete(
    tenant_id: str, upstream_id: uuid.UUID, session: SessionDep, services: ServicesDep
) -> Response:
    tid = parse_tenant_id(tenant_id)
    upstream = await upstreams_api.get_upstream(tenant_id, upstream_id, services)
    base = f"/console/tenants/{tid}/upstreams/{upstream_id}"
    body = (
        tabs(tid) + f"<section><p>Delete upstream <b>{esc(upstream['name'])}</b> ({esc(upstream['url'])})? Its tools "
        "leave this tenant's catalog at once, its sessions close, and its credentials and pins are deleted. "
        "This cannot be undone.</p>"
        + form(
            session,
            f"{base}/delete",
            field("confirm", "Type the upstream's name to confirm", required=True),
            button=f"Delete {upstream['name']}",
            kind="danger",
        )
        + f"<p>{link(base, 'Cancel')}</p></section>"
    )
    return page(f"Delete upstream {upstream['name']}?", body, session)


@router.post("/{upstream_id}/delete")
async def delete(tenant_id: str, upstream_id: uuid.UUID, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}/upstreams/{upstream_id}/delete"
    try:
        upstream = await upstreams_api.get_upstream(tenant_id, upstream_id, services)
        if change.get("confirm") != upstream["name"]:
            raise BadRequest(
                f"type the upstream's name ({upstream['name']}) to confirm its deletion", code="not_confirmed"
            )
        await upstreams_api.delete_upstream(tenant_id, upstream_id, services)
    except TenantryError as exc:
        return refused(change.session, exc, here)
    return back(f"/console/tenants/{tenant_id}", notice=f"Upstream {upstream['name']} deleted.")


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
