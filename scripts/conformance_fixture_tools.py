"""The tools half of the conformance fixture (`conformance_fixture.py` serves them).

Names, arguments and answers are the ones the suite's tools and elicitation scenarios call and
check (the suite's own "everything" server is the reference), plus one tool of our own,
`test_touch_watched_resource`, that makes the fixture announce a resource change: the suite never
triggers one, and the gateway's relaying of `notifications/resources/updated` and `list_changed`
needs something to relay.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext

# 1x1 red PNG and a minimal (empty) WAV
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = base64.b64encode(
    b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00"
    b"\x80\x3e\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
).decode()
WATCHED = "test://watched-resource"

EMPTY: dict[str, Any] = {"type": "object", "properties": {}}
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}
# SEP-1034: a default for every primitive type.
DEFAULTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}


def _choices(titles: list[str]) -> list[dict[str, str]]:
    return [{"const": f"value{i}", "title": title} for i, title in enumerate(titles, 1)]


# SEP-1330: the five enum shapes (untitled/titled single, legacy enumNames, untitled/titled multi).
ENUMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Select one option",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Select one option with titles",
            "oneOf": _choices(["First Option", "Second Option", "Third Option"]),
        },
        "legacyEnum": {
            "type": "string",
            "description": "Select one option (legacy)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Select multiple options",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Select multiple options with titles",
            "minItems": 1,
            "maxItems": 3,
            "items": {"anyOf": _choices(["First Choice", "Second Choice", "Third Choice"])},
        },
    },
    "required": [],
}


def _args(name: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}


TOUCH_ARGS: dict[str, Any] = {
    "type": "object",
    "properties": {"onRequestStream": {"type": "boolean", "description": "send on this call's stream"}},
}

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
        name="test_elicitation_sep1034_defaults",
        description="Asks the client for input with a default for every primitive type (SEP-1034).",
        input_schema=EMPTY,
    ),
    types.Tool(
        name="test_elicitation_sep1330_enums",
        description="Asks the client to choose from the five enum shapes (SEP-1330).",
        input_schema=EMPTY,
    ),
    types.Tool(
        name="json_schema_2020_12_tool",
        description="Tool with JSON Schema 2020-12 features",
        input_schema=SCHEMA_2020_12,
    ),
    types.Tool(
        name="test_touch_watched_resource",
        description=f"Announces that {WATCHED} changed (to its subscribers) and that the resource list changed.",
        input_schema=TOUCH_ARGS,
    ),
]


def _text(text: str, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=error)


def _embedded(uri: str, mime_type: str, text: str) -> types.EmbeddedResource:
    return types.EmbeddedResource(
        type="resource", resource=types.TextResourceContents(uri=uri, mime_type=mime_type, text=text)
    )


async def _elicit(ctx: ServerRequestContext[Any, Any], message: str, schema: dict[str, Any]) -> types.CallToolResult:
    answer = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    return _text(f"Elicitation completed: action={answer.action}, content={json.dumps(answer.content or {})}")


async def _touch(ctx: ServerRequestContext[Any, Any], args: dict[str, Any], subscribed: bool) -> types.CallToolResult:
    # The standalone stream (the session's GET) is where a real change would be announced; the
    # call's own stream is offered too, so a relay can be tested without a GET stream.
    related = ctx.request_id if args.get("onRequestStream") else None
    if subscribed:
        updated = types.ResourceUpdatedNotification(params=types.ResourceUpdatedNotificationParams(uri=WATCHED))
        await ctx.session.send_notification(updated, related_request_id=related)
    await ctx.session.send_notification(types.ResourceListChangedNotification(), related_request_id=related)
    return _text(f"announced: updated={subscribed}, list_changed=True")


async def call_tool(
    ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams, *, subscribed: bool
) -> types.CallToolResult:
    """Answer one tool call; `subscribed` says whether this session watches the watched resource."""
    name, args = params.name, params.arguments or {}
    session, rid = ctx.session, ctx.request_id
    if name == "test_simple_text":
        return _text("This is a simple text response for testing.")
    if name == "test_image_content":
        return types.CallToolResult(content=[types.ImageContent(type="image", data=PNG, mime_type="image/png")])
    if name == "test_audio_content":
        return types.CallToolResult(content=[types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")])
    if name == "test_embedded_resource":
        embedded = _embedded("test://embedded-resource", "text/plain", "This is an embedded resource content.")
        return types.CallToolResult(content=[embedded])
    if name == "test_multiple_content_types":
        embedded = _embedded("test://mixed-content-resource", "application/json", '{"test":"data","value":123}')
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text="Multiple content types test:"),
                types.ImageContent(type="image", data=PNG, mime_type="image/png"),
                embedded,
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
    if name == "test_elicitation_sep1034_defaults":
        return await _elicit(ctx, "Please review and update the form fields with defaults", DEFAULTS_SCHEMA)
    if name == "test_elicitation_sep1330_enums":
        return await _elicit(ctx, "Please select options from the enum fields", ENUMS_SCHEMA)
    if name == "json_schema_2020_12_tool":
        return _text(f"got {args}")
    if name == "test_touch_watched_resource":
        return await _touch(ctx, args, subscribed)
    return _text(f"unknown tool {name}", error=True)
