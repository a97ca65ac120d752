"""`usage_summary`: a tenant's own usage per tool and what is left of its quota window."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from tenantry.metering.usage import summarize, time_range
from tenantry.tools.base import Arguments, BuiltinTool, ToolContext


class UsageArgs(Arguments):
    model_config = ConfigDict(strict=False)  # ISO 8601 strings become datetimes

    since: datetime | None = Field(default=None, description="Start of the range (ISO 8601). Default: 24 h ago.")
    until: datetime | None = Field(default=None, description="End of the range (ISO 8601). Default: now.")


async def usage_summary(ctx: ToolContext, args: UsageArgs) -> dict[str, Any]:
    since, until = time_range(args.since, args.until)
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return await summarize(conn, ctx.meter, ctx.tenant_id, ctx.principal.limits, since, until)


TOOL = BuiltinTool(
    name="usage_summary",
    title="Show my usage",
    description=(
        "Show this tenant's tool usage: calls and quota units per tool over a time range (default: the "
        "last 24 hours), and the quota window now: its limit, units used, units remaining and when it "
        "resets. Use it before a large batch of calls to see whether the quota allows it."
    ),
    arguments=UsageArgs,
    run=usage_summary,
    read_only=True,
)
