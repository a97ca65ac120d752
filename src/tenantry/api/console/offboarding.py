"""Offboarding a tenant from the console: the REST `DELETE /api/tenants/{id}` itself (`api/admin.py`:
revoke every key, report the usage not yet billed and archive it when billing is on, soft-delete), behind
a confirmation page on which the admin types the tenant's name. A wrong or missing name changes nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tenantry import tenants as tenant_service
from tenantry.api import admin
from tenantry.api.console.actions import back, refused
from tenantry.api.console.html import esc, field, form, link, messages, page, status
from tenantry.api.console.sessions import ChangeDep, SessionDep
from tenantry.api.console.tenants import tabs
from tenantry.api.deps import ServicesDep
from tenantry.errors import BadRequest
from tenantry.tenancy import TenantStatus, parse_tenant_id

router = APIRouter(prefix="/console/tenants/{tenant_id}/offboard", include_in_schema=False)


@router.get("")
async def offboard_page(request: Request, tenant_id: str, session: SessionDep, services: ServicesDep) -> Response:
    tid = parse_tenant_id(tenant_id)
    async with services.db.system() as conn:
        tenant = await tenant_service.get_tenant(conn, tid)
    here = f"/console/tenants/{tid}"
    if tenant.status == TenantStatus.DEPROVISIONED:
        done = f"<p>{esc(tenant.name)} is {status(tenant.status)} already: nothing left to do.</p>"
        return page("Offboard", tabs(tid) + f"<section>{done}<p>{link(here, 'Back')}</p></section>", session)
    billing = (
        "report the usage not yet billed to Stripe, archive its usage events, " if services.billing is not None else ""
    )
    confirm = form(
        session,
        f"{here}/offboard",
        field("confirm", f"Type the tenant's name ({tenant.name}) to confirm", required=True, size=40),
        button="Offboard this tenant",
        kind="danger",
    )
    body = (
        messages(request.query_params)
        + tabs(tid)
        + f"<section><p>Offboarding <b>{esc(tenant.name)}</b> will revoke every key at once, {billing}"
        "and mark the tenant deprovisioned: its calls are refused from then on. The tenant's row, usage and "
        "audit trail are kept. This cannot be undone from the console.</p>"
        f"{confirm}<p>{link(here, 'Cancel')}</p></section>"
    )
    return page(f"Offboard {tenant.name}", body, session)


@router.post("")
async def offboard(tenant_id: str, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}"
    try:
        async with services.db.system() as conn:
            tenant = await tenant_service.get_tenant(conn, parse_tenant_id(tenant_id))
        typed = change.get("confirm")
        if not typed:
            raise BadRequest("type the tenant's name to confirm", code="confirmation_required")
        if typed != tenant.name.strip():
            raise BadRequest(
                f"the name typed ({typed[:200]!r}) is not the tenant's ({tenant.name!r})", code="confirmation_mismatch"
            )
        done = await admin.delete_tenant(tenant_id, services)
    except BadRequest as exc:
        return refused(change.session, exc, f"{here}/offboard")
    revoked = done.get("offboarding", {}).get("keys_revoked")
    said = f"{revoked} key(s) revoked, " if revoked is not None else "every key revoked, "
    return back(here, notice=f"Tenant {done['name']} offboarded: {said}status {done['status']}.")
