"""The tools a tenant may see and call.

Today that is the built-in tools; upstream federation adds each tenant's
own upstream tools here, so every path (MCP, REST bridge) asks one place.
"""

from __future__ import annotations

from collections.abc import Iterable

import mcp_types as types

from tenantry.tenancy import Principal
from tenantry.tools.base import BuiltinTool


class Catalog:
    def __init__(self, builtins: Iterable[BuiltinTool]) -> None:
        self._builtins = {tool.name: tool for tool in builtins}
        self._definitions = [tool.definition for tool in self._builtins.values()]

    def list_tools(self, principal: Principal) -> list[types.Tool]:
        return self._definitions

    def lookup(self, principal: Principal, name: str) -> BuiltinTool | None:
        return self._builtins.get(name)


def builtin_tools() -> list[BuiltinTool]:
    from tenantry.tools import data_store, health_check, usage_summary

    return [*data_store.TOOLS, health_check.TOOL, usage_summary.TOOL]
