"""A tenant's policy (view, edit) and kill switch (kill, lift), through the REST API's own handlers
(its audit trail: `audit.py`; the policy's dry-run: `dry_run.py`)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tenantry.api import governance as governance_api
from tenantry.api.console.actions import back, json_field, refused
from tenantry.api.console.html import esc, form, link, messages, page, pretty
from tenantry.api.console.sessions import ChangeDep, SessionDep
from tenantry.api.console.tenants import tabs
from tenantry.api.deps import ServicesDep
from tenantry.errors import NotFound, TenantryError
from tenantry.tenancy import parse_tenant_id

router = APIRouter(prefix="/console/tenants/{tenant_id}", include_in_schema=False)


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
    trial = link(f"/console/tenants/{tid}/policy/dry-run", "Try it (dry run)")
    body = messages(request.query_params) + tabs(tid) + f"<section><p>{note} {trial}</p>{editor}</section>"
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
