"""Admin REST: a tenant's audit trail, a page at a time, exported, and its chain verified.

`/api/tenants/00000000-0000-0000-0000-000000000000/audit` is the system trail (refused credentials and
requests no tenant could be named for). Reading the trail is itself recorded.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from tenantry.api.deps import AdminDep, ServicesDep
from tenantry.api.openapi import errors
from tenantry.audit import store
from tenantry.errors import NotFound
from tenantry.services import Services
from tenantry.tenancy import parse_tenant_id

router = APIRouter(prefix="/api/tenants/{tenant_id}/audit", dependencies=[AdminDep], responses=errors(400, 401, 404))

# Stored text holds no control characters (PostgreSQL cannot even be asked about a NUL): neither may a filter.
_Text = Annotated[str | None, Query(min_length=1, max_length=300, pattern=r"^[^\x00-\x1f\x7f]+$")]


async def trail_of(services: Services, tenant_id: str) -> uuid.UUID:
    """The id of a trail there is to read (400 for a malformed id, 404 for none): the console's check too."""
    tid = parse_tenant_id(tenant_id)
    if not await store.known(services.db, tid):
        raise NotFound(f"no tenant {tid} and no audit trail of one", code="tenant_not_found")
    return tid


def _filter(
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    subject: _Text = None,
    tool: _Text = None,
    decision: Annotated[Literal["admitted", "refused"] | None, Query()] = None,
    outcome: _Text = None,
    method: _Text = None,
    request_id: _Text = None,
) -> store.AuditFilter:
    return store.AuditFilter(since, until, subject, tool, decision, outcome, method, request_id)


AuditQuery = Annotated[store.AuditFilter, Depends(_filter)]


@router.get("")
async def audit_page(
    tenant_id: str,
    services: ServicesDep,
    where: AuditQuery,
    limit: Annotated[int, Query(ge=1, le=store.PAGE_MAX)] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the page before")] = None,
) -> dict[str, Any]:
    """Records newest first; `next_cursor` (null on the last page) gets the next page."""
    tid = await trail_of(services, tenant_id)
    found, next_cursor = await store.page(services.db, tid, where, limit=limit, cursor=cursor)
    return {"tenant_id": str(tid), "records": found, "next_cursor": next_cursor}


@router.get("/export")
async def audit_export(
    tenant_id: str,
    services: ServicesDep,
    where: AuditQuery,
    format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",
) -> StreamingResponse:
    """Every matching record, oldest first, streamed as JSON Lines or CSV."""
    tid = await trail_of(services, tenant_id)
    media = "application/x-ndjson" if format == "jsonl" else "text/csv; charset=utf-8"
    name = f"audit-{tid}.{format}"
    return StreamingResponse(
        store.export(services.db, tid, where, format),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/verify")
async def audit_verify(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    """Walk the tenant's hash chain; `broken` names the first broken link (null: intact)."""
    tid = await trail_of(services, tenant_id)
    return (await store.verify(services.db, tid)).public()
