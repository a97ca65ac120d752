"""`usage_summary`: a tenant's own usage per tool, what is left of its quota window, and every quota."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from tenantry.metering.usage import summarize, time_range
from tenantry.plans import Limits
from tenantry.tools.base import Arguments, BuiltinTool, ToolContext


class UsageArgs(Arguments):
    model_config = ConfigDict(strict=False)  # ISO 8601 strings become datetimes

    since: datetime | None = Field(default=None, description="Start of the range (ISO 8601). Default: 24 h ago.")
    until: datetime | None = Field(default=None, description="End of the range (ISO 8601). Default: now.")


# The catalog's (exposed, offered) tool count of a tenant: the catalog lives above the tools, so it is handed in.
ToolCounts = Callable[[uuid.UUID, Limits], Awaitable[tuple[int, int]]]


def tool(tool_counts: ToolCounts | None = None) -> BuiltinTool:
    """The tool; with `tool_counts`, its `quotas.max_tools` says how many tools the tenant sees."""

    async def usage_summary(ctx: ToolContext, args: UsageArgs) -> dict[str, Any]:
        since, until = time_range(args.since, args.until)
        limits = ctx.principal.limits
        tools = await tool_counts(ctx.tenant_id, limits) if tool_counts is not None else None
        async with ctx.db.tenant(ctx.tenant_id) as conn:
            return await summarize(conn, ctx.meter, ctx.tenant_id, limits, since, until, tool_counts=tools)

    return BuiltinTool(
        name="usage_summary",
        title="Show my usage",
        description=(
            "Show this tenant's tool usage: calls and quota units per tool over a time range (default: the "
            "last 24 hours), the quota window now (its limit, units used, units remaining and when it "
            "resets), and every quota as used/limit: calls and reads per window, requests per minute, "
            "stored bytes and keys, upstreams and tools. Use it before a large batch of calls."
        ),
        arguments=UsageArgs,
        run=usage_summary,
        read_only=True,
    )


TOOL = tool()
