"""The tools, prompts and resources a tenant may see and use.

Built-in tools and the data store's resources, plus each of the tenant's healthy upstreams' tools
and prompts named `<upstream>__<name>` and resources `<upstream>+<uri>` (see
`federation.offerings`), so every path (MCP, REST bridge) asks one place. A lookup returns an entry
that knows its cost and how to run itself (the pipeline runs a tool call, a resource read and a
prompt get alike); a built-in tool lookup never touches the database or network.

The plan's `max_tools` caps the tools exposed to a tenant, here and only here: the built-ins always
(they count first), then the upstream tools in the view's stable order (upstreams by name, each
one's tools as it lists them) while room is left. A tool past the cap is listed nowhere, and a call
of it gets an entry that refuses with `tool_quota_exceeded` (a clear 403 that names the limit, not
`unknown_tool`): the entry is `withheld`, which the pipeline (`gateway/calls.py`) neither meters nor
counts as admitted, as for a drifted definition. The cap counts what the tenant is offered; a
subject's policy may then hide some of it. Prompts and resources are not tools: they do not count.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import mcp_types as types
from pydantic import BaseModel

from tenantry.errors import Forbidden
from tenantry.federation.discovery import Discovery
from tenantry.federation.offerings import PROMPT, RESOURCE, TenantView
from tenantry.federation.pool import UpstreamPool
from tenantry.federation.registry import SEPARATOR
from tenantry.plans import Limits
from tenantry.settings import Settings
from tenantry.tenancy import Principal
from tenantry.tools import data_resources, usage_summary
from tenantry.tools.base import BuiltinTool, ToolContext

# What the pipeline runs, by the MCP method that asks for it.
TOOL_CALL, RESOURCE_READ, PROMPT_GET = "tools/call", "resources/read", "prompts/get"
# Tenants whose upstream tools' positions are remembered at once (past it, the oldest is forgotten: a
# tenant beyond the 10,000th no longer empties the whole map, which made every tenant rebuild its own).
_MAX_POSITIONS = 10_000


class CatalogEntry(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def cost(self) -> int: ...
    @property
    def arguments(self) -> type[BaseModel]: ...

    def precheck(self, args: Any) -> None: ...

    async def execute(self, ctx: ToolContext, args: Any) -> dict[str, Any] | types.CallToolResult: ...


@dataclass(frozen=True, slots=True)
class OverToolQuota:
    """An upstream tool past the plan's `max_tools`: refused by its own `execute`, never run."""

    name: str
    cost: int
    arguments: type[BaseModel]
    used: int
    limit: int
    withheld: bool = True  # the pipeline neither meters it nor counts it as admitted

    def precheck(self, args: Any) -> None:
        """Nothing: the refusal is the same whatever the arguments."""

    async def execute(self, ctx: ToolContext, args: Any) -> dict[str, Any]:
        raise Forbidden(
            f"tool {self.name!r} is past this plan's limit of {self.limit} tools ({self.used} exposed);"
            " raise max_tools or remove an upstream",
            code="tool_quota_exceeded",
            extra={"quota": "max_tools", "used": self.used, "limit": self.limit},
        )


class Catalog:
    def __init__(
        self, builtins: Iterable[BuiltinTool], upstreams: Discovery | None = None, *, read_cost: int = 1
    ) -> None:
        self._read_cost = read_cost
        self._builtins = {tool.name: tool for tool in builtins}
        self._definitions = [tool.definition for tool in self._builtins.values()]
        self._upstreams = upstreams
        # Per tenant: the view last seen and each exposed upstream tool's position in it.
        self._positions: OrderedDict[uuid.UUID, tuple[TenantView, dict[str, int]]] = OrderedDict()

    @classmethod
    def built(cls, settings: Settings, upstreams: Discovery | None = None, *, read_cost: int = 1) -> Catalog:
        """The built-in tools and `upstreams`' offerings, `usage_summary` counting tools through this catalog."""
        catalog = cls((), upstreams, read_cost=read_cost)
        catalog._builtins = {tool.name: tool for tool in builtin_tools(settings, catalog.tool_counts)}
        catalog._definitions = [tool.definition for tool in catalog._builtins.values()]
        return catalog

    def _room(self, limits: Limits) -> int | None:
        """How many upstream tools the plan exposes (None: all)."""
        return None if limits.max_tools is None else max(0, limits.max_tools - len(self._builtins))

    async def list_tools(self, principal: Principal) -> list[types.Tool]:
        if self._upstreams is None:
            return self._definitions
        view = await self._upstreams.view(principal.tenant_id)
        if not view.definitions:
            return self._definitions
        room = self._room(principal.limits)
        return [*self._definitions, *(view.definitions if room is None else view.definitions[:room])]

    async def tool_counts(self, tenant_id: uuid.UUID, limits: Limits) -> tuple[int, int]:
        """(exposed, offered): the tools the tenant sees now within its `max_tools`, and all it could."""
        offered = len(self._definitions)
        if self._upstreams is not None:
            offered += len((await self._upstreams.view(tenant_id)).definitions)
        room = self._room(limits)
        exposed = offered if room is None else min(offered, len(self._definitions) + room)
        return exposed, offered

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
        entry = view.tools.get(name)
        limits = principal.limits
        room = self._room(limits)
        if entry is None or room is None or entry.withheld or self._position(principal.tenant_id, view, name) < room:
            return entry
        return OverToolQuota(
            entry.name, entry.cost, entry.arguments, len(self._definitions) + room, limits.max_tools or 0
        )

    def _position(self, tenant_id: uuid.UUID, view: TenantView, name: str) -> int:
        """Where `name` stands among the view's exposed upstream tools (the order listings show)."""
        cached = self._positions.get(tenant_id)
        if cached is None or cached[0] is not view:
            cached = (view, {tool.name: i for i, tool in enumerate(view.definitions)})
            self._positions[tenant_id] = cached
            self._positions.move_to_end(tenant_id)
            if len(self._positions) > _MAX_POSITIONS:
                self._positions.popitem(last=False)
        return cached[1].get(name, len(view.definitions))

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


def builtin_tools(settings: Settings, tool_counts: usage_summary.ToolCounts | None = None) -> list[BuiltinTool]:
    """The built-in tools; `tool_counts` lets `usage_summary` report the tools exposed (`Catalog.built`)."""
    from tenantry.tools import data_store, health_check

    return [*data_store.tools(settings), health_check.TOOL, usage_summary.tool(tool_counts)]
