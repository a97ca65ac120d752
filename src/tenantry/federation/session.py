"""One open MCP session to an upstream, over either transport, behind one interface (`Link`).

For streamable HTTP the gateway's own lean client (`link.HttpLink`: raw JSON-RPC on keep-alive
connections, which relays what the upstream sends during a call to the calling agent); for legacy SSE
the SDK's `Client`, which relays progress only. The pool (`pool.py`) owns the sessions; this says what
one can be asked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import mcp_types as types
from mcp import Client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, TypeAdapter

from tenantry.federation.link import HttpLink
from tenantry.tools.base import Relay


class Link(Protocol):
    """One open session to an upstream."""

    @property
    def capabilities(self) -> dict[str, Any]:
        """What the upstream said it offers (its initialize result's `capabilities`, as on the wire)."""
        ...

    async def list_tools(self) -> list[types.Tool]: ...

    async def call_tool(self, tool: str, arguments: dict[str, Any], relay: Relay | None) -> types.CallToolResult: ...

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Any other request (`resources/read`, `prompts/get`, ...): its result as on the wire."""
        ...


async def _all_pages(page: Callable[[str | None], Awaitable[types.ListToolsResult]]) -> list[types.Tool]:
    """Every page of `tools/list` (at most 50: an upstream cannot keep the gateway paging forever)."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(50):
        result = await page(cursor)
        tools.extend(result.tools)
        cursor = result.next_cursor
        if not cursor:
            break
    return tools


class HttpSession:
    """MCP over the lean streamable-HTTP client."""

    def __init__(self, link: HttpLink) -> None:
        self.link = link

    @property
    def capabilities(self) -> dict[str, Any]:
        return self.link.capabilities

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self.link.request(method, params)

    async def list_tools(self) -> list[types.Tool]:
        async def page(cursor: str | None) -> types.ListToolsResult:
            result = await self.link.request("tools/list", {"cursor": cursor} if cursor else None)
            return types.ListToolsResult.model_validate(result)

        return await _all_pages(page)

    async def call_tool(self, tool: str, arguments: dict[str, Any], relay: Relay | None) -> types.CallToolResult:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        token = relay.progress_token if relay is not None else None
        if token is not None:
            params["_meta"] = {"progressToken": token}
        return types.CallToolResult.model_validate(await self.link.request("tools/call", params, relay))


class SdkSession:
    """MCP over the SDK's client (legacy SSE): progress is relayed, server requests are not."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def list_tools(self) -> list[types.Tool]:
        return await _all_pages(lambda cursor: self.client.list_tools(cursor=cursor, cache_mode="bypass"))

    async def call_tool(self, tool: str, arguments: dict[str, Any], relay: Relay | None) -> types.CallToolResult:
        token = relay.progress_token if relay is not None else None
        if relay is None or token is None:
            return await self.client.call_tool(tool, arguments)

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            params = {"progressToken": token, "progress": progress, "total": total, "message": message}
            await relay.notify("notifications/progress", {k: v for k, v in params.items() if v is not None})

        return await self.client.call_tool(tool, arguments, progress_callback=progress)

    @property
    def capabilities(self) -> dict[str, Any]:
        dumped: dict[str, Any] = self.client.server_capabilities.model_dump(by_alias=True, exclude_none=True)
        return dumped

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        client, cursor = self.client, params.get("cursor")
        result: BaseModel
        match method:
            case "resources/list":
                result = await client.list_resources(cursor=cursor, cache_mode="bypass")
            case "resources/templates/list":
                result = await client.list_resource_templates(cursor=cursor, cache_mode="bypass")
            case "prompts/list":
                result = await client.list_prompts(cursor=cursor, cache_mode="bypass")
            case "resources/read":
                result = await client.read_resource(str(params["uri"]), cache_mode="bypass")
            case "prompts/get":
                result = await client.get_prompt(str(params["name"]), params.get("arguments"))
            case "resources/subscribe":
                result = await client.subscribe_resource(str(params["uri"]))
            case "resources/unsubscribe":
                result = await client.unsubscribe_resource(str(params["uri"]))
            case "completion/complete":
                ref = _COMPLETION_REF.validate_python(params["ref"])
                result = await client.complete(ref, params["argument"], params.get("context", {}).get("arguments"))
            case _:
                raise MCPError(types.METHOD_NOT_FOUND, f"{method} is not relayed to legacy SSE upstreams")
        dumped: dict[str, Any] = result.model_dump(by_alias=True, exclude_none=True, mode="json")
        return dumped


_COMPLETION_REF: TypeAdapter[types.PromptReference | types.ResourceTemplateReference] = TypeAdapter(
    types.PromptReference | types.ResourceTemplateReference
)

SDK_NOTICES = (
    types.ToolListChangedNotification,
    types.PromptListChangedNotification,
    types.ResourceListChangedNotification,
    types.ResourceUpdatedNotification,
)
