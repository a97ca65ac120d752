"""Ops: `/health` (and `?tenant=`) and `/metrics`.

Each check answers on its own, within a timeout, and is named in the body;
any failing check makes the answer 503. The RLS canary runs as the
application role, the way tool calls do, and proves both halves of
isolation: the bound tenant sees exactly its own rows, and nothing of
anyone else's (nor anything at all when no tenant is bound).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from tenantry import tenants as tenant_service
from tenantry.api.deps import ServicesDep
from tenantry.services import Services
from tenantry.tenancy import parse_tenant_id

router = APIRouter()

CHECK_TIMEOUT_SECONDS = 2.0
Check = dict[str, Any]

_ROLE = text(
    """
    SELECT r.rolsuper, r.rolbypassrls,
           (SELECT count(*) FROM tenant_data) AS rows_visible_unbound,
           (SELECT count(*) FROM tenants) AS tenants_visible_unbound
    FROM pg_roles r WHERE r.rolname = current_user
    """
)
_TENANT_VIEW = text(
    """
    SELECT (SELECT count(*) FROM tenant_data) AS own_rows,
           (SELECT count(*) FROM tenant_data WHERE tenant_id <> :tenant_id) AS foreign_rows,
           (SELECT count(*) FROM tenants) AS tenants_visible
    """
)
_SYSTEM_COUNT = text("SELECT count(*) FROM tenant_data WHERE tenant_id = :tenant_id")


async def _run(check: Callable[[], Awaitable[Check]]) -> Check:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            return await check()
    except TimeoutError:
        return {"status": "fail", "detail": f"no answer within {CHECK_TIMEOUT_SECONDS}s"}
    except Exception as exc:  # a health check reports every failure; it never raises
        return {"status": "fail", "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}


async def _database(s: Services) -> Check:
    async with s.db.system() as conn:
        await conn.execute(text("SELECT 1"))
    return {"status": "ok", "pool": s.db.pool_status()}


async def _redis(s: Services) -> Check:
    await s.redis.ping()
    return {"status": "ok"}


async def _app_role(s: Services) -> Check:
    async with s.db.unbound() as conn:
        row = (await conn.execute(_ROLE)).one()
    ok = (
        not row.rolsuper and not row.rolbypassrls and row.rows_visible_unbound == 0 and row.tenants_visible_unbound == 0
    )
    return {
        "status": "ok" if ok else "fail",
        "role": s.db.app_role,
        "superuser": row.rolsuper,
        "bypass_rls": row.rolbypassrls,
        "rows_visible_without_tenant": row.rows_visible_unbound + row.tenants_visible_unbound,
    }


async def _rls_canary(s: Services, tenant_id: uuid.UUID) -> Check:
    async with s.db.tenant(tenant_id) as conn:
        view = (await conn.execute(_TENANT_VIEW, {"tenant_id": tenant_id})).one()
    async with s.db.system() as conn:
        expected = (await conn.execute(_SYSTEM_COUNT, {"tenant_id": tenant_id})).scalar_one()
    ok = view.own_rows == expected and view.foreign_rows == 0 and view.tenants_visible == 1
    return {
        "status": "ok" if ok else "fail",
        "own_rows": view.own_rows,
        "expected_rows": expected,
        "foreign_rows_visible": view.foreign_rows,
    }


async def _upstreams(s: Services, tenant_id: uuid.UUID) -> dict[str, Check]:
    """One check per upstream of the tenant, discovered live (bounded by the upstream timeouts)."""
    try:
        view = await s.upstreams.view(tenant_id, fresh=True)
    except Exception as exc:  # a health check reports every failure; it never raises
        return {"upstreams": {"status": "fail", "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}}
    return {f"upstream:{st.upstream.name}": st.check() for st in view.statuses.values()}


@router.get("/health", response_model=None)
async def health(services: ServicesDep, tenant: Annotated[str | None, Query()] = None) -> JSONResponse:
    checks: dict[str, Check] = {}
    body: dict[str, Any] = {}
    tenant_id = parse_tenant_id(tenant) if tenant is not None else None
    if tenant_id is not None:
        async with services.db.system() as conn:
            found = await tenant_service.get_tenant(conn, tenant_id)
        body["tenant"] = {"id": str(found.id), "status": found.status, "plan": found.plan}
    names = ["database", "redis", "app_role"]
    jobs = [
        _run(lambda: _database(services)),
        _run(lambda: _redis(services)),
        _run(lambda: _app_role(services)),
    ]
    if tenant_id is not None:
        names.append("rls_canary")
        jobs.append(_run(lambda: _rls_canary(services, tenant_id)))
    for name, result in zip(names, await asyncio.gather(*jobs), strict=True):
        checks[name] = result
    if tenant_id is not None:
        checks.update(await _upstreams(services, tenant_id))
    healthy = all(c["status"] == "ok" for c in checks.values())
    body = {"status": "ok" if healthy else "degraded", **body, "checks": checks}
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
