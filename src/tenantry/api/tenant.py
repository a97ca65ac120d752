"""Tenant REST: trade an API key for a short-lived token, and the REST tool bridge."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from tenantry.api.deps import ServicesDep, TenantDep
from tenantry.api.openapi import errors
from tenantry.auth.api_keys import looks_like_api_key
from tenantry.auth.jwt import issue_tenant_token
from tenantry.errors import Forbidden, Unauthenticated
from tenantry.tenancy import bind_principal, parse_tenant_id

router = APIRouter(prefix="/api")

# What the bridge lists tools for: its own name, and MCP's (no tool can be called either: no "/" in names).
LIST_TOOLS = frozenset({"listTools", "tools/list"})


class ToolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str = Field(
        min_length=1, max_length=200, description="'listTools' (or 'tools/list'), or the name of a tool to call."
    )
    params: dict[str, Any] | None = None


@router.post("/auth/tenant-token", responses=errors(401, 403))
async def tenant_token(request: Request, services: ServicesDep) -> dict[str, Any]:
    key = request.headers.get("x-api-key", "")
    if not looks_like_api_key(key):
        raise Unauthenticated("send a tenant API key in the x-api-key header", code="missing_credentials")
    principal = await services.resolver.resolve(key)
    return {
        "access_token": issue_tenant_token(services.settings, principal.tenant_id, principal.key_id),
        "token_type": "bearer",
        "expires_in": services.settings.tenant_token_ttl_seconds,
        "tenant_id": str(principal.tenant_id),
    }


@router.post("/tenant/{tenant_id}/tool", responses=errors(400, 401, 403, 404, 409, 413, 429, 500, 503))
async def tool_bridge(tenant_id: str, body: ToolRequest, principal: TenantDep, services: ServicesDep) -> Any:
    if parse_tenant_id(tenant_id) != principal.tenant_id:
        raise Forbidden("the URL names another tenant than the credential", code="tenant_mismatch")
    with bind_principal(principal):
        if body.method in LIST_TOOLS:
            tools = await services.calls.list_tools(principal)
            return {"tools": [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in tools]}
        outcome = await services.calls.call(principal, body.method, body.params)
    if outcome.error is not None:
        raise outcome.error
    return outcome.to_mcp().model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"result_type"})
