"""Tenant REST: trade an API key for a short-lived token, and the REST tool bridge."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from tenantry.api.deps import ServicesDep, TenantDep, require_admin
from tenantry.api.fields import Roles, Strict, Subject, ToolScope
from tenantry.api.openapi import errors
from tenantry.auth import api_keys
from tenantry.auth.api_keys import looks_like_api_key
from tenantry.auth.jwt import issue_tenant_token
from tenantry.errors import BadRequest, Forbidden, NotFound, Unauthenticated
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


class TokenRequest(Strict):
    """With a tenant key (`x-api-key`): `roles` and `tools` narrow the key's (never widen them: each tool
    pattern must be one of the key's, when the key has a scope).
    With the admin credential (`Authorization`): mint a token for `subject` with `roles` and `claims`,
    bounded by the tenant's key `key_id` (revoking it stops the token)."""

    roles: Roles | None = None
    tools: ToolScope | None = None
    tenant_id: uuid.UUID | None = None
    key_id: uuid.UUID | None = None
    subject: Subject | None = None
    claims: dict[str, Annotated[str, Field(max_length=500)]] = Field(default_factory=dict, max_length=32)
    ttl_seconds: int | None = Field(None, ge=60, le=86_400)


@router.post("/auth/tenant-token", responses=errors(400, 401, 403, 404))
async def tenant_token(request: Request, services: ServicesDep, body: TokenRequest | None = None) -> dict[str, Any]:
    body = body or TokenRequest()
    key = request.headers.get("x-api-key", "")
    settings = services.settings
    if looks_like_api_key(key):
        if body.tenant_id or body.key_id or body.subject or body.claims or body.ttl_seconds:
            detail = "a key can only narrow itself: only `roles` and `tools` may be sent"
            raise BadRequest(detail, code="invalid_request")
        principal = await services.resolver.resolve(key)
        roles = principal.roles if body.roles is None else frozenset(body.roles)
        if not roles <= principal.roles:
            extra = sorted(roles - principal.roles)
            raise Forbidden(f"the key does not hold the roles {extra}", code="roles_not_held")
        tools = principal.tools if body.tools is None else tuple(body.tools)
        if principal.tools is not None and tools is not None and not set(tools) <= set(principal.tools):
            wider = sorted(set(tools) - set(principal.tools))
            raise Forbidden(f"the key may not call {wider}", code="tools_not_held")
        tenant_id, key_id, subject, claims, ttl = principal.tenant_id, principal.key_id, principal.subject, {}, None
    elif request.headers.get("authorization"):
        require_admin(request, services)
        if body.tenant_id is None or body.key_id is None or body.subject is None:
            raise BadRequest("an admin mints a token with tenant_id, key_id and subject", code="invalid_request")
        tenant_id, key_id, subject, claims, ttl = (
            body.tenant_id,
            body.key_id,
            body.subject,
            body.claims,
            body.ttl_seconds,
        )
        async with services.db.system() as conn:
            keys = {k.id: k for k in await api_keys.list_keys(conn, tenant_id)}
        if key_id not in keys or keys[key_id].revoked_at is not None:
            raise NotFound(f"no live key {key_id} for tenant {tenant_id}", code="key_not_found")
        roles = frozenset(body.roles or ())
        tools = None if body.tools is None else tuple(body.tools)
    else:
        raise Unauthenticated("send a tenant API key in the x-api-key header", code="missing_credentials")
    token = issue_tenant_token(
        settings, tenant_id, key_id, subject=subject, roles=roles, claims=claims, tools=tools, ttl=ttl
    )
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": ttl or settings.tenant_token_ttl_seconds,
        "tenant_id": str(tenant_id),
        "subject": subject,
        "roles": sorted(roles),
        "tools": None if tools is None else list(tools),
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
