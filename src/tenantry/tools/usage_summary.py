"""`usage_summary`: a tenant's own usage per tool, what is left of its quota window, and every quota; or
its full report."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from tenantry.db.engine import CONTROL
from tenantry.metering.reports import build_report, report_range
from tenantry.metering.usage import summarize, time_range
from tenantry.plans import Limits
from tenantry.tools.base import Arguments, BuiltinTool, ToolContext


class UsageArgs(Arguments):
    model_config = ConfigDict(strict=False)  # ISO 8601 strings become datetimes

    since: datetime | None = Field(
        default=None, description="Start of the range (ISO 8601). Default: 24 h ago (with `report`: 7 days ago)."
    )
    until: datetime | None = Field(default=None, description="End of the range (ISO 8601). Default: now.")
    report: bool = Field(
        default=False,
        description=(
            "Return the full report instead: per tool, resource and prompt the calls, units, errors by code, "
            "refusals by reason, latency (avg/min/max/p95) and a series for plots, and every quota."
        ),
    )
    bucket: Literal["hour", "day"] = Field(default="day", description="With `report`: the series' step (UTC).")


# The catalog's (exposed, offered) tool count of a tenant: the catalog lives above the tools, so it is handed in.
ToolCounts = Callable[[uuid.UUID, Limits], Awaitable[tuple[int, int]]]


def tool(tool_counts: ToolCounts | None = None) -> BuiltinTool:
    """The tool; with `tool_counts`, its `quotas.max_tools` says how many tools the tenant sees."""

    async def usage_summary(ctx: ToolContext, args: UsageArgs) -> dict[str, Any]:
        limits = ctx.principal.limits
        if args.report:
            start, end = report_range(args.since, args.until, args.bucket)
        else:
            start, end = time_range(args.since, args.until)
        tools = await tool_counts(ctx.tenant_id, limits) if tool_counts is not None else None
        async with ctx.db.tenant(ctx.tenant_id, plane=CONTROL) as conn:
            if args.report:
                return await build_report(
                    conn, ctx.meter, ctx.tenant_id, limits, start, end, args.bucket, db=ctx.db, tool_counts=tools
                )
            return await summarize(conn, ctx.meter, ctx.tenant_id, limits, start, end, db=ctx.db, tool_counts=tools)

    return BuiltinTool(
        name="usage_summary",
        title="Show my usage",
        description=(
            "Show this tenant's tool usage: calls and quota units per tool over a time range (default: the "
            "last 24 hours), the quota window now (its limit, units used, units remaining and when it "
            "resets), and every quota as used/limit: calls and reads per window, requests per minute, "
            "stored bytes and keys, upstreams and tools. Use it before a large batch of calls. With "
            "`report: true`, the tenant's report (default: the last 7 days): per tool, resource and prompt "
            "the calls, units, errors, refusals and latency, bucketed by hour or day."
        ),
        arguments=UsageArgs,
        run=usage_summary,
        read_only=True,
    )


TOOL = tool()
