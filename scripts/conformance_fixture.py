"""An 'everything'-shaped fixture upstream for the MCP conformance suite (scripts/conformance.sh).

Serves, over streamable HTTP (sessions, SSE responses) on 127.0.0.1:PORT/mcp, what the suite's
server scenarios ask for, by the names and URIs they use (the suite's own "everything" server is
the reference): the tools (in `conformance_fixture_tools.py`), resources, a resource template,
subscriptions, prompts and completion, built on the SDK's low-level `Server`. It refuses a Host or
Origin that is not loopback (the DNS-rebinding scenario), as a local server must.

Unknown names and URIs are JSON-RPC errors, not empty answers, so a gateway that rewrites a name
or URI wrongly fails the scenario instead of passing it by accident.

    .venv/bin/python scripts/conformance_fixture.py 8300
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import warnings
from collections.abc import AsyncIterator
from typing import Any

import mcp_types as types
import uvicorn
from conformance_fixture_tools import PNG, TOOLS, WATCHED, call_tool
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.routing import Route

warnings.simplefilter("ignore")  # logging/sampling are deprecated for 2026-07-28; the suite still tests them

Context = ServerRequestContext[Any, Any]
TEMPLATE = "test://template/{id}/data"
TEMPLATE_URI = re.compile(r"test://template/([^/]+)/data")
PROMPT_ARGS = "test_prompt_with_arguments"

RESOURCES = [
    types.Resource(
        name="static-text",
        title="Static Text Resource",
        uri="test://static-text",
        description="A static text resource for testing",
        mime_type="text/plain",
    ),
    types.Resource(
        name="static-binary",
        title="Static Binary Resource",
        uri="test://static-binary",
        description="A static binary resource (image) for testing",
        mime_type="image/png",
    ),
    types.Resource(
        name="watched-resource",
        title="Watched Resource",
        uri=WATCHED,
        description="A resource whose changes are announced to subscribers",
        mime_type="text/plain",
    ),
]
TEMPLATES = [
    types.ResourceTemplate(
        name="template",
        title="Resource Template",
        uri_template=TEMPLATE,
        description="A resource template with parameter substitution",
        mime_type="application/json",
    )
]


def _argument(name: str, description: str) -> types.PromptArgument:
    return types.PromptArgument(name=name, description=description, required=True)


PROMPTS = [
    types.Prompt(
        name="test_simple_prompt", title="Simple Test Prompt", description="A simple prompt without arguments"
    ),
    types.Prompt(
        name=PROMPT_ARGS,
        title="Prompt With Arguments",
        description="A prompt with required arguments",
        arguments=[_argument("arg1", "First test argument"), _argument("arg2", "Second test argument")],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        title="Prompt With Embedded Resource",
        description="A prompt that includes an embedded resource",
        arguments=[_argument("resourceUri", "URI of the resource to embed")],
    ),
    types.Prompt(
        name="test_prompt_with_image", title="Prompt With Image", description="A prompt that includes image content"
    ),
]
# What completion offers, per (reference, argument); answers are the candidates starting with the value.
COMPLETIONS: dict[tuple[str, str], list[str]] = {
    (f"ref/prompt:{PROMPT_ARGS}", "arg1"): ["paris", "park", "party"],
    (f"ref/prompt:{PROMPT_ARGS}", "arg2"): ["hello", "help", "world"],
    (f"ref/resource:{TEMPLATE}", "id"): ["1", "12", "123"],
}

# URIs each MCP session subscribed to (by Mcp-Session-Id: the SDK builds a new session object per request).
subscriptions: dict[str, set[str]] = {}


def _session_key(ctx: Context) -> str:
    request = ctx.request
    return str(request.headers.get("mcp-session-id", "")) if request is not None else ""


def _not_found(what: str) -> MCPError:
    return MCPError(types.INVALID_PARAMS, f"{what} not found")


async def list_tools(ctx: Context, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def on_call_tool(ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
    return await call_tool(ctx, params, subscribed=WATCHED in subscriptions.get(_session_key(ctx), set()))


async def set_level(ctx: Context, params: types.SetLevelRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


async def list_resources(ctx: Context, params: Any) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=RESOURCES)


async def list_templates(ctx: Context, params: Any) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(resource_templates=TEMPLATES)


async def read_resource(ctx: Context, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    contents: types.TextResourceContents | types.BlobResourceContents
    if uri == "test://static-text":
        text = "This is the content of the static text resource."
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text=text)
    elif uri == "test://static-binary":
        contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)
    elif uri == WATCHED:
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content")
    elif match := TEMPLATE_URI.fullmatch(uri):
        rid = match.group(1)
        text = json.dumps({"id": rid, "templateTest": True, "data": f"Data for ID: {rid}"})
        contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=text)
    else:
        raise _not_found(f"resource {uri}")
    return types.ReadResourceResult(contents=[contents])


async def subscribe(ctx: Context, params: types.SubscribeRequestParams) -> types.EmptyResult:
    subscriptions.setdefault(_session_key(ctx), set()).add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: Context, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    subscriptions.get(_session_key(ctx), set()).discard(str(params.uri))
    return types.EmptyResult()


async def list_prompts(ctx: Context, params: Any) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=PROMPTS)


def _user(content: types.ContentBlock) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


async def get_prompt(ctx: Context, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    args = params.arguments or {}
    prompt = next((p for p in PROMPTS if p.name == params.name), None)
    if prompt is None:
        raise _not_found(f"prompt {params.name}")
    missing = [a.name for a in prompt.arguments or [] if a.required and a.name not in args]
    if missing:
        raise MCPError(types.INVALID_PARAMS, f"missing arguments: {', '.join(missing)}")
    if prompt.name == "test_simple_prompt":
        messages = [_user(_text("This is a simple prompt for testing."))]
    elif prompt.name == PROMPT_ARGS:
        messages = [_user(_text(f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"))]
    elif prompt.name == "test_prompt_with_embedded_resource":
        resource = types.TextResourceContents(
            uri=args["resourceUri"], mime_type="text/plain", text="Embedded resource content for testing."
        )
        messages = [
            _user(types.EmbeddedResource(type="resource", resource=resource)),
            _user(_text("Please process the embedded resource above.")),
        ]
    else:
        image = types.ImageContent(type="image", data=PNG, mime_type="image/png")
        messages = [_user(image), _user(_text("Please analyze the image above."))]
    return types.GetPromptResult(description=prompt.description, messages=messages)


async def complete(ctx: Context, params: types.CompleteRequestParams) -> types.CompleteResult:
    ref = params.ref
    key = f"ref/prompt:{ref.name}" if isinstance(ref, types.PromptReference) else f"ref/resource:{ref.uri}"
    if not any(known == key for known, _ in COMPLETIONS):
        raise _not_found(key)
    candidates = COMPLETIONS.get((key, params.argument.name), [])
    values = [v for v in candidates if v.startswith(params.argument.value)]
    return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


class FixtureServer(Server[Any]):
    """A `Server` that announces list changes (the SDK's session manager asks for defaults)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        changes = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        return super().create_initialization_options(
            notification_options or changes, experimental_capabilities, extensions
        )


server = FixtureServer(
    "conformance-fixture",
    on_list_tools=list_tools,
    on_call_tool=on_call_tool,
    on_set_logging_level=set_level,
    on_list_resources=list_resources,
    on_list_resource_templates=list_templates,
    on_read_resource=read_resource,
    on_subscribe_resource=subscribe,
    on_unsubscribe_resource=unsubscribe,
    on_list_prompts=list_prompts,
    on_get_prompt=get_prompt,
    on_completion=complete,
)
LOOPBACK = ["127.0.0.1", "localhost", "[::1]"]
security = TransportSecuritySettings(
    allowed_hosts=LOOPBACK + [f"{host}:*" for host in LOOPBACK],
    allowed_origins=[f"http://{host}{port}" for host in LOOPBACK for port in ("", ":*")],
)
manager = StreamableHTTPSessionManager(app=server, security_settings=security)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with manager.run():
        yield


app = Starlette(routes=[Route("/mcp", StreamableHTTPASGIApp(manager))], lifespan=lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8300, log_level="warning")
