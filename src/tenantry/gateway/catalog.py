"""The tools a tenant may see and call.

Built-in tools, plus each of the tenant's healthy upstreams' tools named
`<upstream>__<tool>` (see `federation.discovery`), so every path (MCP, REST
bridge) asks one place. A lookup returns an entry that knows its cost and
how to run itself; a built-in lookup never touches the database or network.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import mcp_types as types
from pydantic import BaseModel

from tenantry.federation.discovery import Discovery
from tenantry.federation.registry import SEPARATOR
from tenantry.settings import Settings
from tenantry.tenancy import Principal
from tenantry.tools.base import BuiltinTool, ToolContext


class CatalogEntry(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def cost(self) -> int: ...
    @property
    def arguments(self) -> type[BaseModel]: ...
    @property
    def definition(self) -> types.Tool: ...

    def precheck(self, args: Any) -> None: ...

    async def execute(self, ctx: ToolContext, args: Any) -> dict[str, Any] | types.CallToolResult: ...


class Catalog:
    def __init__(self, builtins: Iterable[BuiltinTool], upstreams: Discovery | None = None) -> None:
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
        return "_upstream" if SEPARATOR in name else "_unknown"

    async def lookup(self, principal: Principal, name: str) -> CatalogEntry | None:
        builtin = self._builtins.get(name)
        if builtin is not None or self._upstreams is None or SEPARATOR not in name:
            return builtin
        view = await self._upstreams.view(principal.tenant_id)
        return view.tools.get(name)


def builtin_tools(settings: Settings) -> list[BuiltinTool]:
    from tenantry.tools import data_store, health_check, usage_summary

    return [*data_store.tools(settings), health_check.TOOL, usage_summary.TOOL]
