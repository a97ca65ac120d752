"""A tenant's policy (view, edit), audit trail (recent records, filtered) and kill switch (kill, lift),
through the REST API's own handlers."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tenantry.api import governance as governance_api
from tenantry.api.audit import audit_page
from tenantry.api.console.actions import back, json_field, refused
from tenantry.api.console.html import choice, esc, field, form, messages, page, pretty, status, table
from tenantry.api.console.sessions import ChangeDep, SessionDep
from tenantry.api.console.tenants import tabs
from tenantry.api.deps import ServicesDep
from tenantry.audit.store import AuditFilter
from tenantry.errors import NotFound, TenantryError
from tenantry.tenancy import parse_tenant_id

router = APIRouter(prefix="/console/tenants/{tenant_id}", include_in_schema=False)

_Filter = Annotated[str, Query(max_length=300, pattern=r"^[^\x00-\x1f\x7f]*$")]


@router.get("/policy")
async def policy_page(request: Request, tenant_id: str, session: SessionDep, services: ServicesDep) -> Response:
    tid = parse_tenant_id(tenant_id)
    try:
        stored = await governance_api.get_policy(tenant_id, services)
    except NotFound as exc:
        if exc.code != "policy_not_found":
            raise
        stored = {"version": 0, "document": None}
    shown = pretty(stored["document"]) if stored["document"] is not None else ""
    editor = form(
        session,
        f"/console/tenants/{tid}/policy",
        f'<input type="hidden" name="expected_version" value="{esc(stored["version"])}">'
        f'<label>Policy document (JSON; see the README, "Governance")<textarea name="document" rows="16">'
        f"{esc(shown)}</textarea></label>",
        button="Save policy",
        css="",
    )
    note = (
        f"Version {esc(stored['version'])}."
        if stored["document"] is not None
        else "No policy: every tool may be called with any arguments."
    )
    body = messages(request.query_params) + tabs(tid) + f"<section><p>{note}</p>{editor}</section>"
    return page("Policy", body, session)


@router.post("/policy")
async def save_policy(tenant_id: str, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}/policy"
    try:
        document = json_field(change.form.get("document", ""), "document")
        version = change.get("expected_version")
        body = governance_api.PolicyPut(document=document, expected_version=int(version) if version.isdigit() else None)
        stored = await governance_api.put_policy(tenant_id, body, services)
    except (TenantryError, ValidationError) as exc:
        return refused(change.session, exc, here)
    return back(here, notice=f"Policy saved: version {stored['version']}.")


@router.get("/audit")
async def audit_trail_page(
    tenant_id: str,
    session: SessionDep,
    services: ServicesDep,
    subject: _Filter = "",
    tool: _Filter = "",
    decision: Annotated[str, Query(max_length=10)] = "",
    method: _Filter = "",
) -> Response:
    tid = parse_tenant_id(tenant_id)
    chosen = cast(Literal["admitted", "refused"] | None, decision if decision in ("admitted", "refused") else None)
    where = AuditFilter(subject=subject or None, tool=tool or None, decision=chosen, method=method or None)
    found = await audit_page(tenant_id, services, where, limit=100, cursor=None)
    rows = [
        [
            esc(r["at"][:23]),
            esc(r["subject"]),
            esc(r["method"]),
            esc(r["tool"]),
            status(r["decision"]),
            esc(r["outcome"] or r["reason"]),
            f"<code>{esc(pretty(r['detail']) if r.get('detail') else '')}</code>",
        ]
        for r in found["records"]
    ]
    filters = (
        f'<form method="get" action="/console/tenants/{tid}/audit" class="row">'
        + field("subject", "Subject", subject)
        + field("tool", "Tool", tool)
        + field("method", "Method", method)
        + choice("decision", "Decision", ["admitted", "refused"], decision, blank="any")
        + '<button type="submit" class="quiet">Filter</button></form>'
    )
    body = (
        tabs(tid) + f"<section>{filters}<p class='muted'>The latest 100 matching records, newest first; "
        f"<code>GET /api/tenants/{esc(tid)}/audit/export</code> has them all.</p>"
        + table(["At", "Subject", "Method", "Tool", "Decision", "Outcome", "Detail"], rows, empty="No records match.")
        + "</section>"
    )
    return page("Audit trail", body, session)


@router.post("/kills")
async def kill(tenant_id: str, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}"
    try:
        body = governance_api.KillCreate(
            scope=change.get("scope"),  # checked by the model
            tenant_id=parse_tenant_id(tenant_id),
            target=change.get("target") or None,
            reason=change.get("reason"),
        )
        made = await governance_api.create_kill(body, services)
    except (TenantryError, ValidationError) as exc:
        return refused(change.session, exc, here)
    return back(here, notice=f"Stopped: {made['scope']} {made['target']}.")


@router.post("/kills/{kill_id}/lift")
async def lift(tenant_id: str, kill_id: uuid.UUID, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}"
    try:
        lifted = await governance_api.lift_kill(kill_id, services)
    except TenantryError as exc:
        return refused(change.session, exc, here)
    return back(here, notice=f"Lifted: {lifted['scope']} {lifted['target']}.")
