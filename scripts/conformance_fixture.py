"""An 'everything'-shaped fixture upstream for scripts/conformance.sh (not used in CI).

Serves, over streamable HTTP (sessions, SSE responses) on 127.0.0.1:PORT/mcp, the tools the
conformance suite's tools scenarios call, built on the SDK's low-level `Server`:

    .venv/bin/python scripts/conformance_fixture.py 8300
"""

from __future__ import annotations

import base64
import contextlib
import sys
import warnings
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.routing import Route

warnings.simplefilter("ignore")  # logging/sampling are deprecated for 2026-07-28; the suite still tests them

# 1x1 red PNG and a minimal (empty) WAV
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = base64.b64encode(
    b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00"
    b"\x80\x3e\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
).decode()

EMPTY: dict[str, Any] = {"type": "object", "properties": {}}
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


def _args(name: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}


TOOLS = [
    types.Tool(name="test_simple_text", description="Returns simple text.", input_schema=EMPTY),
    types.Tool(name="test_image_content", description="Returns an image.", input_schema=EMPTY),
    types.Tool(name="test_audio_content", description="Returns audio.", input_schema=EMPTY),
    types.Tool(name="test_embedded_resource", description="Returns an embedded resource.", input_schema=EMPTY),
    types.Tool(name="test_multiple_content_types", description="Returns text, image and resource.", input_schema=EMPTY),
    types.Tool(name="test_tool_with_logging", description="Logs three messages.", input_schema=EMPTY),
    types.Tool(name="test_tool_with_progress", description="Reports progress.", input_schema=EMPTY),
    types.Tool(name="test_error_handling", description="Always fails.", input_schema=EMPTY),
    types.Tool(name="test_sampling", description="Asks the client to sample.", input_schema=_args("prompt")),
    types.Tool(name="test_elicitation", description="Asks the client for input.", input_schema=_args("message")),
    types.Tool(
        name="json_schema_2020_12_tool",
        description="Tool with JSON Schema 2020-12 features",
        input_schema=SCHEMA_2020_12,
    ),
]


def _text(text: str, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=error)


async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    name, args = params.name, params.arguments or {}
    session, rid = ctx.session, ctx.request_id
    if name == "test_simple_text":
        return _text("This is a simple text response for testing.")
    if name == "test_image_content":
        return types.CallToolResult(content=[types.ImageContent(type="image", data=PNG, mime_type="image/png")])
    if name == "test_audio_content":
        return types.CallToolResult(content=[types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")])
    if name == "test_embedded_resource":
        resource = types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        )
        return types.CallToolResult(content=[types.EmbeddedResource(type="resource", resource=resource)])
    if name == "test_multiple_content_types":
        resource = types.TextResourceContents(
            uri="test://mixed-content-resource", mime_type="application/json", text='{"test":"data","value":123}'
        )
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text="Multiple content types test:"),
                types.ImageContent(type="image", data=PNG, mime_type="image/png"),
                types.EmbeddedResource(type="resource", resource=resource),
            ]
        )
    if name == "test_tool_with_logging":
        for i, message in enumerate(["Tool execution started", "Tool processing data", "Tool execution completed"]):
            if i:
                await anyio.sleep(0.05)
            await session.send_log_message("info", message, related_request_id=rid)
        return _text("Tool with logging executed successfully")
    if name == "test_tool_with_progress":
        for i, value in enumerate([0, 50, 100]):
            if i:
                await anyio.sleep(0.05)
            await session.report_progress(value, 100)
        return _text("Tool with progress executed successfully")
    if name == "test_error_handling":
        return _text("This tool intentionally returns an error for testing", error=True)
    if name == "test_sampling":
        result = await session.create_message(
            [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=str(args.get("prompt"))))],
            max_tokens=100,
            related_request_id=rid,
        )
        content = result.content
        text = getattr(content, "text", None) or str(content)
        return _text(f"LLM response: {text}")
    if name == "test_elicitation":
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        answer = await session.elicit_form(str(args.get("message")), schema, related_request_id=rid)
        return _text(f"User response: action={answer.action}, content={answer.content}")
    if name == "json_schema_2020_12_tool":
        return _text(f"got {args}")
    return _text(f"unknown tool {name}", error=True)


server: Server[Any] = Server(
    "conformance-fixture", on_list_tools=list_tools, on_call_tool=call_tool, on_set_logging_level=set_level
)
manager = StreamableHTTPSessionManager(app=server)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with manager.run():
        yield


app = Starlette(routes=[Route("/mcp", StreamableHTTPASGIApp(manager))], lifespan=lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8300, log_level="warning")
