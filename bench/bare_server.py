"""The reference point for `bench_gateway.py`: the MCP SDK low-level server with no tenancy at all.

It exposes one tool, `data_get`, that answers a fixed value shaped like the
gateway's `data_get` result, served the way the gateway serves `/mcp`:
stateless, JSON responses, `StreamableHTTPSessionManager` behind a Starlette
`Route`, with the SDK's (no-op) OpenTelemetry middleware dropped as the
gateway drops it. No auth, no database, no metrics: whatever the gateway
costs beyond this is the price of tenancy (and of FastAPI around it).

Run it like the gateway:

    python -m uvicorn bare_server:app --app-dir bench --port 8001 --no-access-log --log-level warning
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# What the gateway's data_get returns for the value the benchmark stores (same keys, same sizes).
VALUE: dict[str, Any] = {"hello": "world", "n": 42, "tags": ["a", "b", "c"]}
RESULT: dict[str, Any] = {
    "key": "bench/value",
    "value": VALUE,
    "size_bytes": len(json.dumps(VALUE, separators=(",", ":")).encode()),
    "updated_at": "2025-01-01T00:00:00.000000+00:00",
}

TOOL = types.Tool(
    name="data_get",
    title="Read a stored JSON value",
    description="Read the JSON value stored under a key (a fixed value here).",
    input_schema={
        "type": "object",
        "properties": {"key": {"type": "string", "minLength": 1, "maxLength": 1024}},
        "required": ["key"],
        "additionalProperties": False,
    },
)


async def list_tools(
    ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[TOOL])


async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name != "data_get":
        raise MCPError(types.INVALID_PARAMS, f"unknown tool: {params.name[:100]}")
    key = (params.arguments or {}).get("key")
    result = {**RESULT, "key": key}
    text = json.dumps(result, ensure_ascii=False, separators=(",", ":"))
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=result)


# One resource, for bench_resources.py: the same value, read as a resource.
RESOURCE_URI = "bench://value"
RESOURCE_TEXT = json.dumps(VALUE, separators=(",", ":"))


async def list_resources(
    ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListResourcesResult:
    resource = types.Resource(uri=RESOURCE_URI, name="value", mime_type="application/json")
    return types.ListResourcesResult(resources=[resource])


async def read_resource(
    ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
) -> types.ReadResourceResult:
    if str(params.uri) != RESOURCE_URI:
        raise MCPError(-32002, f"no resource {str(params.uri)[:100]}")
    contents = types.TextResourceContents(uri=RESOURCE_URI, mime_type="application/json", text=RESOURCE_TEXT)
    return types.ReadResourceResult(contents=[contents])


server: Server[Any] = Server(
    "bare",
    version="0.0.0",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_resources=list_resources,
    on_read_resource=read_resource,
)
# As the gateway does: the OpenTelemetry middleware is a no-op without an exporter.
server.middleware = []
manager = StreamableHTTPSessionManager(app=server, stateless=True, json_response=True)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with manager.run():
        yield


# The same value as a REST API described by its own OpenAPI document (`bench_upstream.py --openapi`).
REST_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "bare REST", "version": "1"},
    "servers": [{"url": "/rest"}],
    "paths": {
        "/data/{key}": {
            "get": {
                "operationId": "data_get",
                "summary": "Read a stored JSON value",
                "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the value"}},
            }
        }
    },
}


async def rest_document(request: Request) -> JSONResponse:
    return JSONResponse(REST_DOCUMENT)


async def rest_data_get(request: Request) -> JSONResponse:
    if request.path_params["key"] != RESULT["key"]:
        return JSONResponse({"detail": "no such key"}, status_code=404)
    return JSONResponse(RESULT)


app = Starlette(
    routes=[
        Route("/mcp", endpoint=StreamableHTTPASGIApp(manager), methods=["GET", "POST", "DELETE"]),
        Route("/health", endpoint=health, methods=["GET"]),
        Route("/rest/openapi.json", endpoint=rest_document, methods=["GET"]),
        Route("/rest/data/{key:path}", endpoint=rest_data_get, methods=["GET"]),
    ],
    lifespan=lifespan,
)
