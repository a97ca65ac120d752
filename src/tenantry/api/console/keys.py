"""A tenant's API key: what it carries (subject, roles, the tools it may call) and changing its roles and
tool scope after it was made, through the REST API's own handler (`PATCH /api/tenants/{id}/keys/{key_id}`):
the same checks, the same audit record, and the same reach (every replica judges the key's next call by
what it carries now)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tenantry.api import admin
from tenantry.api.console.actions import back, refused, words
from tenantry.api.console.html import esc, field, form, link, messages, page
from tenantry.api.console.sessions import ChangeDep, SessionDep
from tenantry.api.console.tenants import tabs
from tenantry.api.deps import ServicesDep
from tenantry.errors import NotFound, TenantryError
from tenantry.tenancy import parse_tenant_id

router = APIRouter(prefix="/console/tenants/{tenant_id}/keys/{key_id}", include_in_schema=False)


@router.get("")
async def key_page(
    request: Request, tenant_id: str, key_id: uuid.UUID, session: SessionDep, services: ServicesDep
) -> Response:
    tid = parse_tenant_id(tenant_id)
    keys = (await admin.list_keys(tenant_id, services))["keys"]
    key = next((k for k in keys if k["id"] == str(key_id)), None)
    if key is None:
        raise NotFound(f"no key {key_id} for tenant {tid}", code="key_not_found")
    base = f"/console/tenants/{tid}/keys/{key_id}"
    facts = (
        f"<p>Prefix <code>{esc(key['prefix'])}</code> · subject <b>{esc(key['subject'])}</b> · "
        f"made {esc(key['created_at'][:19])}</p>"
    )
    if key["revoked_at"]:
        editor = f'<p class="muted">Revoked {esc(key["revoked_at"][:19])}: it can no longer be changed.</p>'
    else:
        editor = form(
            session,
            f"{base}/update",
            field("roles", "Roles (comma-separated; blank: none)", ", ".join(key["roles"]), size=40)
            + field("tools", "Tools it may call (globs; blank: any)", ", ".join(key["tools"] or []), size=50),
            button="Save roles and tools",
        )
    note = (
        '<p class="muted">A change applies to the key\'s very next call, on every replica; the key and its '
        "secret stay the same.</p>"
    )
    body = (
        messages(request.query_params)
        + tabs(tid)
        + f"<section>{facts}{editor}{note}</section><p>{link(f'/console/tenants/{tid}', 'Back to the tenant')}</p>"
    )
    return page(f"Key {key['name']}", body, session)


@router.post("/update")
async def update_key(tenant_id: str, key_id: uuid.UUID, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}/keys/{key_id}"
    try:
        body = admin.KeyPatch(roles=words(change.get("roles")), tools=words(change.get("tools")) or None)
        updated = await admin.update_key(tenant_id, key_id, body, services)
    except (TenantryError, ValidationError) as exc:
        return refused(change.session, exc, here)
    scope = ", ".join(updated["tools"]) if updated["tools"] else "any tool"
    roles = ", ".join(updated["roles"]) or "no role"
    return back(here, notice=f"Key {updated['name']} now carries {roles} and may call {scope}.")
