"""What a built-in tool is: a definition built once, an argument model, a coroutine.

A tool's coroutine gets a `ToolContext` and its validated arguments and
returns a JSON object (the structured result). It reports a tool-level
failure by raising a `TenantryError`; the gateway turns that into an MCP
tool result with `isError: true` and the error's code, or an HTTP status on
the REST bridge.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import mcp_types as types
from pydantic import BaseModel, ConfigDict

from tenantry.db.engine import Database
from tenantry.metering.meter import Meter
from tenantry.settings import Settings
from tenantry.tenancy import Principal


class Relay(Protocol):
    """Where a request's upstream traffic goes: the agent that made the call."""

    @property
    def progress_token(self) -> str | int | None:
        """The agent's progress token for this call, or None when it asked for no progress."""
        ...

    async def notify(self, method: str, params: dict[str, Any] | None) -> None: ...

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        """The agent's result, or raise MCPError with the agent's (or the relay's own) error."""
        ...


class Arguments(BaseModel):
    """Base for tool arguments: unknown fields and silent type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True, slots=True)
class ToolContext:
    principal: Principal
    db: Database
    settings: Settings
    meter: Meter
    # The calling agent's channel (MCP only): what an upstream sends during the call goes there.
    relay: Relay | None = None

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.principal.tenant_id


ToolFn = Callable[[ToolContext, Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class BuiltinTool:
    name: str
    title: str
    description: str
    arguments: type[Arguments]
    run: ToolFn
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = True
    cost: int = 1
    # Checks of valid arguments that need the settings (sizes), run before the call is metered.
    check: Callable[[Any], None] | None = None
    definition: types.Tool = field(init=False)

    def __post_init__(self) -> None:
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        definition = types.Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=schema,
            annotations=types.ToolAnnotations(
                title=self.title,
                read_only_hint=self.read_only,
                destructive_hint=self.destructive,
                idempotent_hint=self.idempotent,
                open_world_hint=False,
            ),
        )
        object.__setattr__(self, "definition", definition)

    def precheck(self, args: Any) -> None:
        """Raise the `TenantryError` that refuses `args` before they cost anything."""
        if self.check is not None:
            self.check(args)

    async def execute(self, ctx: ToolContext, args: Any) -> dict[str, Any]:
        return await self.run(ctx, args)
