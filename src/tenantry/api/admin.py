"""Admin REST: tenants and their API keys (admin API key or admin JWT)."""

from __future__ import annotations

import hmac
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from tenantry import tenants as tenant_service
from tenantry import tiers
from tenantry.api.deps import AdminDep, ServicesDep
from tenantry.api.fields import Name, Roles, Strict, Subject, ToolScope
from tenantry.api.openapi import errors
from tenantry.audit.changes import note_change
from tenantry.auth import api_keys
from tenantry.auth.jwt import issue_admin_token
from tenantry.db.provision import check_database_url, check_reachable
from tenantry.errors import BadRequest, Conflict, Unauthenticated
from tenantry.metering.usage import summarize, time_range
from tenantry.plans import validate_overrides
from tenantry.tenancy import TenantStatus, parse_tenant_id

router = APIRouter(prefix="/api", responses=errors(400, 401, 404, 409, 413))


class AdminTokenRequest(Strict):
    key: str = Field(min_length=1, max_length=512)


Tier = Literal["shared", "schema", "database"]
DatabaseUrl = Annotated[str, Field(min_length=1, max_length=2000)]


class TenantCreate(Strict):
    name: Name
    plan: str | None = None
    tier: Tier | None = Field(None, description="Isolation tier (default: the plan's).")
    database_url: DatabaseUrl | None = Field(
        None, description="Database tier only: the tenant's database on another server (its password is sealed)."
    )


class TenantPatch(Strict):
    name: Name | None = None
    plan: str | None = None
    status: Literal["active", "suspended"] | None = None
    # Overrides of the plan's limits for this tenant ({} clears them), e.g. {"calls_per_window": 5000}.
    limits: dict[str, Any] | None = None
    # The tier this tenant should be on; `POST /api/tenants/{id}/move` moves it there.
    tier: Tier | None = None


class KeyCreate(Strict):
    name: Name = "default"
    subject: Subject | None = Field(None, description="Who the key speaks for (default: its name).")
    roles: Roles = Field(default_factory=list, description="Role names policies grant tools to.")
    tools: ToolScope | None = Field(None, description="The only tools the key may call (globs); omit: any.")


class KeyPatch(Strict):
    roles: Roles | None = Field(None, description="The key's roles from now on (omit: unchanged).")
    tools: ToolScope | None = Field(
        None, description="The only tools the key may call from now on (globs); null: any; omit: unchanged."
    )


def _tenant_id(value: str) -> uuid.UUID:
    return parse_tenant_id(value)


def _check_plan(services: ServicesDep, plan: str | None) -> None:
    if plan is not None and plan not in services.settings.plans:
        raise BadRequest(f"unknown plan {plan!r}; plans are {services.settings.plans}", code="invalid_plan")


@router.post("/auth/token")
async def admin_token(body: AdminTokenRequest, services: ServicesDep) -> dict[str, Any]:
    if not hmac.compare_digest(body.key.encode(), services.settings.admin_api_key.encode()):
        raise Unauthenticated("invalid admin key", code="invalid_credentials")
    return {
        "access_token": issue_admin_token(services.settings),
        "token_type": "bearer",
        "expires_in": services.settings.admin_token_ttl_seconds,
    }


@router.post("/tenants", status_code=201, dependencies=[AdminDep])
async def create_tenant(body: TenantCreate, services: ServicesDep) -> dict[str, Any]:
    _check_plan(services, body.plan)
    plan = body.plan or services.settings.default_plan
    tier = tiers.desired_tier(services.settings, plan, body.tier)
    check_database_url(tier, body.database_url)
    await check_reachable(body.database_url)
    async with services.db.system() as conn:
        tenant = await tenant_service.create_tenant(conn, body.name, plan, tier=body.tier)
    note_change(tenant.id, "tenant.create", tenant.id, None, tenant.public())
    if tier != "shared":  # provisioned now, before the tenant has a key to call with
        await tiers.move_tenant(services.db, services.settings, tenant.id, tier, database_url=body.database_url)
        async with services.db.system() as conn:
            tenant = await tenant_service.get_tenant(conn, tenant.id)
    return tenant.public()


@router.get("/tenants", dependencies=[AdminDep])
async def list_tenants(
    services: ServicesDep,
    status: Annotated[Literal["provisioning", "active", "suspended", "deprovisioned"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> dict[str, Any]:
    async with services.db.system() as conn:
        found = await tenant_service.list_tenants(conn, status=status, limit=limit, offset=offset)
    return {"tenants": [t.public() for t in found], "limit": limit, "offset": offset}


@router.get("/tenants/{tenant_id}", dependencies=[AdminDep])
async def get_tenant(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    async with services.db.system() as conn:
        tenant = await tenant_service.get_tenant(conn, _tenant_id(tenant_id))
    return tenant.public()


@router.patch("/tenants/{tenant_id}", dependencies=[AdminDep])
async def update_tenant(tenant_id: str, body: TenantPatch, services: ServicesDep) -> dict[str, Any]:
    _check_plan(services, body.plan)
    tid = _tenant_id(tenant_id)
    async with services.db.system() as conn:
        before = (await tenant_service.get_tenant(conn, tid)).public()
        tenant = await tenant_service.update_tenant(
            conn,
            tid,
            name=body.name,
            plan=body.plan,
            status=TenantStatus(body.status) if body.status else None,
            limits=validate_overrides(body.limits) if body.limits is not None else None,
            tier=body.tier,
        )
    note_change(tid, "tenant.update", tid, before, tenant.public())
    return tenant.public()


@router.delete("/tenants/{tenant_id}", dependencies=[AdminDep])
async def delete_tenant(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    tid = _tenant_id(tenant_id)
    async with services.db.system() as conn:
        before = (await tenant_service.get_tenant(conn, tid)).public()
    if services.billing is not None:  # revoke keys, report remaining usage, archive it, soft-delete
        result = await services.billing.onboarding.offboard(tid)
        after = result.pop("tenant")
        note_change(tid, "tenant.offboard", tid, before, after)
        return {**after, "offboarding": result}
    async with services.db.system() as conn:
        tenant = await tenant_service.deprovision_tenant(conn, tid)
    note_change(tid, "tenant.deprovision", tid, before, tenant.public())
    # Its schema or database: archived into the shared tables, then dropped.
    await tiers.offboard_tier(services.db, services.settings, tid)
    return tenant.public()


@router.get("/tenants/{tenant_id}/usage", dependencies=[AdminDep])
async def tenant_usage(
    tenant_id: str,
    services: ServicesDep,
    since: Annotated[datetime | None, Query(description="ISO 8601; default 24 h before `until`")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; default now")] = None,
) -> dict[str, Any]:
    """Calls and units per tool in [since, until), the tenant's quota window now, and every kind of quota
    as used/limit (`quotas`)."""
    tid = _tenant_id(tenant_id)
    start, end = time_range(since, until)
    async with services.db.system() as conn:
        tenant = await tenant_service.get_tenant(conn, tid)
    limits = services.plans.limits(tenant.plan, tenant.limits)
    tools = await services.tool_counts(tid, limits)
    async with services.db.system() as conn:
        return await summarize(conn, services.meter, tid, limits, start, end, db=services.db, tool_counts=tools)


@router.post("/tenants/{tenant_id}/keys", status_code=201, dependencies=[AdminDep])
async def create_key(tenant_id: str, services: ServicesDep, body: KeyCreate | None = None) -> dict[str, Any]:
    tid = _tenant_id(tenant_id)
    async with services.db.system() as conn:
        tenant = await tenant_service.get_tenant(conn, tid)
        if tenant.status == TenantStatus.DEPROVISIONED:
            raise Conflict("a deprovisioned tenant cannot get new keys", code="tenant_deprovisioned")
        body = body or KeyCreate()
        info, secret = await api_keys.create_key(
            conn, tid, body.name, subject=body.subject, roles=body.roles, tools=body.tools
        )
    note_change(tid, "key.create", info.id, None, info.public())
    return {**info.public(), "secret": secret, "note": "The secret is shown only now; store it safely."}


@router.get("/tenants/{tenant_id}/keys", dependencies=[AdminDep])
async def list_keys(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    tid = _tenant_id(tenant_id)
    async with services.db.system() as conn:
        await tenant_service.get_tenant(conn, tid)
        keys = await api_keys.list_keys(conn, tid)
    return {"keys": [k.public() for k in keys]}


@router.patch("/tenants/{tenant_id}/keys/{key_id}", dependencies=[AdminDep])
async def update_key(tenant_id: str, key_id: uuid.UUID, body: KeyPatch, services: ServicesDep) -> dict[str, Any]:
    """Change a key's roles or tool scope; every replica applies it to the key's next call. A revoked
    key: 409 `key_revoked`."""
    tid = _tenant_id(tenant_id)
    async with services.db.system() as conn:
        await tenant_service.get_tenant(conn, tid)
        before = next((k.public() for k in await api_keys.list_keys(conn, tid) if k.id == key_id), None)
        tools = body.tools if "tools" in body.model_fields_set else api_keys.UNCHANGED
        info = await api_keys.update_key(conn, tid, key_id, roles=body.roles, tools=tools)
    note_change(tid, "key.update", key_id, before, info.public())
    return info.public()


@router.delete("/tenants/{tenant_id}/keys/{key_id}", dependencies=[AdminDep])
async def revoke_key(tenant_id: str, key_id: uuid.UUID, services: ServicesDep) -> dict[str, Any]:
    tid = _tenant_id(tenant_id)
    async with services.db.system() as conn:
        before = next((k.public() for k in await api_keys.list_keys(conn, tid) if k.id == key_id), None)
        info = await api_keys.revoke_key(conn, tid, key_id)
    note_change(tid, "key.revoke", key_id, before, info.public())
    return info.public()
