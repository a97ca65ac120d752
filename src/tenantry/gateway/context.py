"""What every MCP handler starts from: the caller of this message, and how a refusal is said in JSON-RPC."""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from tenantry.auth.middleware import principal_from_scope
from tenantry.errors import TenantryError
from tenantry.observability import adopt_request
from tenantry.tenancy import Principal

UNAUTHENTICATED = -32001
# Too many requests (request rate, in-flight cap): refused as a JSON-RPC error, like HTTP 429,
# since they say nothing about the tool. Quota refusals are tool results (`quota_exceeded`).
LIMIT_EXCEEDED = -32029
REQUEST_LEVEL_REFUSALS = frozenset({"rate_limited", "concurrency_limited"})


def jsonrpc_error(exc: TenantryError) -> MCPError:
    code = LIMIT_EXCEEDED if exc.code in REQUEST_LEVEL_REFUSALS else types.INTERNAL_ERROR
    return MCPError(code, f"{exc.code}: {exc.detail}", data=exc.body())


def principal_of(ctx: ServerRequestContext[Any, Any]) -> Principal:
    request = ctx.request
    if isinstance(request, Request):
        adopt_request(request.scope)  # this message's request record, not the one that opened the session
    principal = principal_from_scope(request.scope) if isinstance(request, Request) else None
    if principal is None:
        raise MCPError(UNAUTHENTICATED, "unauthenticated: this message carried no tenant credential")
    return principal
