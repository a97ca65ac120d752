"""The tools, prompts and resources a tenant may see and use.

Built-in tools and the data store's resources, plus each of the tenant's healthy upstreams' tools
and prompts named `<upstream>__<name>` and resources `<upstream>+<uri>` (see
`federation.offerings`), so every path (MCP, REST bridge) asks one place. A lookup returns an entry
that knows its cost and how to run itself (the pipeline runs a tool call, a resource read and a
prompt get alike); a built-in tool lookup never touches the database or network.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import mcp_types as types
from pydantic import BaseModel

from tenantry.federation.discovery import Discovery
from tenantry.federation.offerings import PROMPT, RESOURCE, TenantView
from tenantry.federation.pool import UpstreamPool
from tenantry.federation.registry import SEPARATOR
from tenantry.settings import Settings
from tenantry.tenancy import Principal
from tenantry.tools import data_resources
from tenantry.tools.base import BuiltinTool, ToolContext

# What the pipeline runs, by the MCP method that asks for it.
TOOL_CALL, RESOURCE_READ, PROMPT_GET = "tools/call", "resources/read", "prompts/get"


class CatalogEntry(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def cost(self) -> int: ...
    @property
    def arguments(self) -> type[BaseModel]: ...

    def precheck(self, args: Any) -> None: ...

    async def execute(self, ctx: ToolContext, args: Any) -> dict[str, Any] | types.CallToolResult: ...


class Catalog:
    def __init__(
        self, builtins: Iterable[BuiltinTool], upstreams: Discovery | None = None, *, read_cost: int = 1
    ) -> None:
        self._read_cost = read_cost
        self._builtins = {tool.name: tool for tool in builtins}
        self._definitions = [tool.definition for tool in self._builtins.values()]
        self._upstreams = upstreams

    async def list_tools(self, principal: Principal) -> list[types.Tool]:
        if self._upstreams is None:
            return self._definitions
        view = await self._upstreams.view(principal.tenant_id)
        return [*self._definitions, *view.definitions] if view.definitions else self._definitions

    def label(self, name: str) -> str:
        """The tool's label in metrics, from a bounded set: a built-in's name, `_upstream` or `_unknown`."""
        if name in self._builtins:
            return name
        if name.startswith(RESOURCE):
            return "_resource"
        if name.startswith(PROMPT):
            return "_prompt"
        return "_upstream" if SEPARATOR in name else "_unknown"

    async def lookup(self, principal: Principal, name: str) -> CatalogEntry | None:
        builtin = self._builtins.get(name)
        if builtin is not None or self._upstreams is None or SEPARATOR not in name:
            return builtin
        view = await self._upstreams.view(principal.tenant_id)
        return view.tools.get(name)

    async def find(self, principal: Principal, method: str, name: str) -> CatalogEntry | None:
        """What `method` runs under pipeline name `name` (a tool's own name, `resource:<uri>`,
        `prompt:<name>`); None when the tenant has no such thing. A tool call never finds a resource
        or a prompt: each method looks only among its own kind."""
        if method == TOOL_CALL:
            return await self.lookup(principal, name)
        if method == RESOURCE_READ and name.startswith(RESOURCE):
            uri = name.removeprefix(RESOURCE)
            key = data_resources.key_of(uri)
            if key is not None:
                return data_resources.DataResource(name, key, uri, self._read_cost)
            view = await self.view(principal)
            return view.resource(uri, self._upstreams.pool, self._read_cost) if self._upstreams is not None else None
        if method == PROMPT_GET and name.startswith(PROMPT):
            return (await self.view(principal)).prompts.get(name.removeprefix(PROMPT))
        return None

    @property
    def pool(self) -> UpstreamPool | None:
        return self._upstreams.pool if self._upstreams is not None else None

    async def view(self, principal: Principal) -> TenantView:
        """The tenant's upstream offerings (an empty view when federation is off)."""
        if self._upstreams is None:
            return _NO_UPSTREAMS
        return await self._upstreams.view(principal.tenant_id)


_NO_UPSTREAMS = TenantView(expires_at=float("inf"))


def builtin_tools(settings: Settings) -> list[BuiltinTool]:
    from tenantry.tools import data_store, health_check, usage_summary

    return [*data_store.tools(settings), health_check.TOOL, usage_summary.TOOL]
