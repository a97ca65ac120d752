"""Admin REST: a tenant's upstream MCP servers, their tools' pins, and re-approval after drift.

Writes run on the tenant's own RLS-bound connection, so an upstream id of
another tenant is simply not found. Credentials go in, header names come out.
A write invalidates this process's cache and pool at once; other replicas
(and this one, again) hear of it from the database's change notifications.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from tenantry import tenants as tenant_service
from tenantry.api.deps import AdminDep, ServicesDep
from tenantry.api.openapi import errors
from tenantry.audit.changes import note_change
from tenantry.db.engine import CONTROL
from tenantry.errors import BadRequest, Conflict
from tenantry.federation import openapi, registry
from tenantry.federation.ssrf import check_url
from tenantry.services import Services
from tenantry.tenancy import TenantStatus, parse_tenant_id

router = APIRouter(
    prefix="/api/tenants/{tenant_id}/upstreams", dependencies=[AdminDep], responses=errors(400, 401, 404, 409, 413, 503)
)


class UpstreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=40)
    url: str = Field(max_length=2048)
    transport: str = Field(default="streamable_http", max_length=40)
    headers: dict[str, str] = Field(default_factory=dict, max_length=20)
    costs: dict[str, int] = Field(default_factory=dict, max_length=1000)
    # Kind `openapi` only: the OpenAPI document (an object, or JSON/YAML text; omitted: fetched from
    # `url`), and which operations become tools.
    document: dict[str, Any] | str | None = None
    operations: dict[str, Any] | None = None


class UpstreamPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, max_length=2048)
    transport: str | None = Field(default=None, max_length=40)
    headers: dict[str, str] | None = Field(default=None, max_length=20)
    costs: dict[str, int] | None = Field(default=None, max_length=1000)
    document: dict[str, Any] | str | None = None
    operations: dict[str, Any] | None = None
    # False: the upstream stays registered (credentials, pins) but offers nothing until enabled again.
    enabled: bool | None = None


def _check_kind(transport: str, document: object, operations: object) -> None:
    if transport != "openapi" and (document is not None or operations is not None):
        raise BadRequest(
            "document and operations belong to upstreams of transport 'openapi'", code="invalid_upstream_kind"
        )


async def _tenant_record(services: Services, tenant_id: str) -> tenant_service.Tenant:
    tid = parse_tenant_id(tenant_id)
    async with services.db.system() as conn:
        tenant = await tenant_service.get_tenant(conn, tid)
    if tenant.status == TenantStatus.DEPROVISIONED:
        raise Conflict("a deprovisioned tenant has no upstreams", code="tenant_deprovisioned")
    return tenant


async def _tenant(services: Services, tenant_id: str) -> uuid.UUID:
    return (await _tenant_record(services, tenant_id)).id


async def _check_url(services: Services, url: str) -> None:
    s = services.settings
    await check_url(url, allow_private=s.upstream_allow_private, allow_loopback=s.upstream_allow_loopback)


@router.post("", status_code=201)
async def create_upstream(tenant_id: str, body: UpstreamCreate, services: ServicesDep) -> dict[str, Any]:
    """Register an upstream; past the plan's `max_upstreams`, 409 `upstream_quota_exceeded`."""
    tenant = await _tenant_record(services, tenant_id)
    tid = tenant.id
    limits = services.plans.limits(tenant.plan, tenant.limits)
    registry.check_name(body.name)
    registry.check_transport(body.transport)
    registry.check_headers(body.headers)
    registry.check_costs(body.costs)
    _check_kind(body.transport, body.document, body.operations)
    document, operations = None, None
    if body.transport == "openapi":
        document, operations = await openapi.prepare(
            services.settings, url=body.url, headers=body.headers, document=body.document, filters=body.operations
        )
    else:
        await _check_url(services, body.url)
    async with services.db.tenant(tid, plane=CONTROL) as conn:
        created = await registry.create_upstream(
            conn,
            services.secrets,
            tid,
            name=body.name,
            url=body.url,
            transport=body.transport,
            headers=body.headers,
            costs=body.costs,
            max_upstreams=limits.max_upstreams,
            document=document,
            operations=operations,
        )
    services.discovery.invalidate(tid)
    note_change(tid, "upstream.create", created.id, None, created.public())
    return created.public()


@router.get("")
async def list_upstreams(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    tid = await _tenant(services, tenant_id)
    async with services.db.tenant(tid, plane=CONTROL) as conn:
        found = await registry.list_upstreams(conn)
    return {"upstreams": [u.public() for u in found]}


@router.get("/{upstream_id}")
async def get_upstream(tenant_id: str, upstream_id: uuid.UUID, services: ServicesDep) -> dict[str, Any]:
    tid = await _tenant(services, tenant_id)
    async with services.db.tenant(tid, plane=CONTROL) as conn:
        found = await registry.get_upstream(conn, upstream_id)
    return found.public()


@router.patch("/{upstream_id}")
async def update_upstream(
    tenant_id: str, upstream_id: uuid.UUID, body: UpstreamPatch, services: ServicesDep
) -> dict[str, Any]:
    tid = await _tenant(services, tenant_id)
    if body.transport is not None:
        registry.check_transport(body.transport)
    if body.headers is not None:
        registry.check_headers(body.headers)
    if body.costs is not None:
        registry.check_costs(body.costs)
    async with services.db.tenant(tid, plane=CONTROL) as conn:
        current = await registry.get_upstream(conn, upstream_id)
    if (body.transport or current.transport) != current.transport and "openapi" in (body.transport, current.transport):
        raise BadRequest(
            "an upstream cannot change to or from transport 'openapi'; add a new one", code="invalid_transport"
        )
    _check_kind(current.transport, body.document, body.operations)
    document, operations = None, None
    changes_tools = any(v is not None for v in (body.document, body.url, body.operations, body.headers))
    if current.transport == "openapi" and changes_tools:
        # The new whole (document, URL, filters, credentials) must still make tools, as at creation.
        uploaded = body.document if body.document is not None else current.document
        document, operations = await openapi.prepare(
            services.settings,
            url=body.url or current.url,
            headers=body.headers if body.headers is not None else services.secrets.open(current.credentials),
            document=uploaded,
            filters=body.operations if body.operations is not None else current.operations,
        )
    elif body.url is not None:
        await _check_url(services, body.url)
    async with services.db.tenant(tid, plane=CONTROL) as conn:
        before = (await registry.get_upstream(conn, upstream_id)).public()
        updated = await registry.update_upstream(
            conn,
            services.secrets,
            upstream_id,
            url=body.url,
            transport=body.transport,
            headers=body.headers,
            costs=body.costs,
            document=document if body.document is not None else None,
            operations=operations if body.operations is not None else None,
            enabled=body.enabled,
        )
    await services.discovery.pool.close_tenant_upstream(tid, upstream_id)
    services.discovery.invalidate(tid, upstream_id)
    changed = updated.public()
    if body.headers is not None:  # the credentials are sealed: only that they were replaced is said
        changed = {**changed, "headers": body.headers}
    note_change(tid, "upstream.update", upstream_id, before, changed)
    return updated.public()


@router.delete("/{upstream_id}")
async def delete_upstream(tenant_id: str, upstream_id: uuid.UUID, services: ServicesDep) -> dict[str, Any]:
    tid = await _tenant(services, tenant_id)
    async with services.db.tenant(tid, plane=CONTROL) as conn:
        deleted = await registry.delete_upstream(conn, upstream_id)
    await services.discovery.pool.close_tenant_upstream(tid, upstream_id)
    services.discovery.invalidate(tid, upstream_id)
    note_change(tid, "upstream.delete", upstream_id, deleted.public(), None)
    return deleted.public()


@router.post("/{upstream_id}/refresh")
async def refresh_upstream(tenant_id: str, upstream_id: uuid.UUID, services: ServicesDep) -> dict[str, Any]:
    """Discover this tenant's upstream tools now rather than at the end of the TTL."""
    tid = await _tenant(services, tenant_id)
    status = await services.discovery.status(tid, upstream_id)
    return status.check()


@router.get("/{upstream_id}/tools")
async def review_tools(tenant_id: str, upstream_id: uuid.UUID, services: ServicesDep) -> dict[str, Any]:
    """Every definition the upstream offers, pinned vs current, by pin key: a tool by its name, a prompt as
    `prompt:<name>`, a resource as `resource:<uri>`, a template as `template:<uri template>`."""
    tid = await _tenant(services, tenant_id)
    tools = await services.discovery.review(tid, upstream_id)
    async with services.db.tenant(tid, plane=CONTROL) as conn:
        drift = await registry.drift_log(conn, upstream_id)
    return {"tools": tools, "drift_log": drift}


@router.post("/{upstream_id}/tools/{tool:path}/approve")
async def approve_tool(tenant_id: str, upstream_id: uuid.UUID, tool: str, services: ServicesDep) -> dict[str, Any]:
    """Approve the current definition under pin key `tool` (see the review; a key may hold `/`)."""
    tid = await _tenant(services, tenant_id)
    approved = await services.discovery.approve(tid, upstream_id, tool)
    note_change(tid, "tool.approve", f"{upstream_id}/{tool[:200]}", None, approved)
    return approved
