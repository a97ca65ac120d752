"""`usage_summary`: a tenant's own usage per tool and what is left of its quota window, or its full report."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from tenantry.metering.reports import build_report, report_range
from tenantry.metering.usage import summarize, time_range
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
            "refusals by reason, latency (avg/min/max/p95) and a series for plots, and quota utilisation."
        ),
    )
    bucket: Literal["hour", "day"] = Field(default="day", description="With `report`: the series' step (UTC).")


async def usage_summary(ctx: ToolContext, args: UsageArgs) -> dict[str, Any]:
    if args.report:
        start, end = report_range(args.since, args.until, args.bucket)
        async with ctx.db.tenant(ctx.tenant_id) as conn:
            return await build_report(conn, ctx.meter, ctx.tenant_id, ctx.principal.limits, start, end, args.bucket)
    since, until = time_range(args.since, args.until)
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return await summarize(conn, ctx.meter, ctx.tenant_id, ctx.principal.limits, since, until)


TOOL = BuiltinTool(
    name="usage_summary",
    title="Show my usage",
    description=(
        "Show this tenant's tool usage: calls and quota units per tool over a time range (default: the "
        "last 24 hours), and the quota window now: its limit, units used, units remaining and when it "
        "resets. Use it before a large batch of calls to see whether the quota allows it. With "
        "`report: true`, the tenant's report (default: the last 7 days): per tool, resource and prompt "
        "the calls, units, errors, refusals and latency, bucketed by hour or day."
    ),
    arguments=UsageArgs,
    run=usage_summary,
    read_only=True,
)
