"""A tenant's usage as plots (calls and units per hour per tool, refusals by reason) over a chosen range,
the quota window now, and its health: the report (`api/reports.report_of`, from hourly roll-ups, so the
page stays fast at a million events) and the checks of `/health?tenant=` (`api/health.run_checks`)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from tenantry import tenants as tenant_service
from tenantry.api.console.html import choice, esc, messages, page, pretty, status, table
from tenantry.api.console.plots import counts_chart, meter, series_chart
from tenantry.api.console.sessions import SessionDep
from tenantry.api.console.tenants import tabs
from tenantry.api.deps import ServicesDep
from tenantry.api.health import run_checks
from tenantry.api.reports import report_of
from tenantry.metering.reports import hourly_series, hours_of, report_range
from tenantry.tenancy import parse_tenant_id

router = APIRouter(prefix="/console/tenants/{tenant_id}", include_in_schema=False)

# The ranges offered, in hours. Up to 7 days a bar is an hour, beyond a UTC day. The table, totals and
# refusals come from the daily report; hourly bars from the plots' own query (`hourly_series`: calls and
# units per hour per item, nothing else): the full hourly report of 7 days at 1M events took 150-250 ms
# of the page (bench/bench_console.py), over its 200 ms budget.
RANGES: Final = {
    "24": "last 24 hours (hourly)",
    "72": "last 3 days (hourly)",
    "168": "last 7 days (hourly)",
    "720": "last 30 days (daily)",
}
_HOURLY_UP_TO = 168
_MOST_PLOTTED = 8  # tools plotted one by one, most called first; every one is in the table

# `<section>:<name>` -> measure -> one count per period plotted
_Points = dict[str, dict[str, list[int]]]


def _daily_points(report: dict[str, Any], starts: list[str]) -> _Points:
    points: _Points = {}
    for section in ("tools", "resources", "prompts"):
        for name, item in report[section].items():
            by_start = {point["start"]: point for point in item["series"]}
            points[f"{section}:{name}"] = {
                measure: [int(by_start.get(start, {}).get(measure, 0)) for start in starts]
                for measure in ("calls", "units")
            }
    return points


def _plots(report: dict[str, Any], points: _Points, starts: list[str], unit: str) -> str:
    """Bars of the most called items (by the report's totals), one plot per item and measure."""
    items = [
        (name, item["calls"], f"{section}:{name}")
        for section in ("tools", "resources", "prompts")
        for name, item in report[section].items()
    ]
    items.sort(key=lambda entry: (-entry[1], entry[0]))
    out = []
    none = [0] * len(starts)
    for name, _, key in items[:_MOST_PLOTTED]:
        for measure in ("calls", "units"):
            counts = points.get(key, {}).get(measure, none)
            caption = f"<figcaption>{esc(name)}: {measure} per {unit} ({sum(counts)})</figcaption>"
            chart = series_chart(name, measure, list(zip(starts, counts, strict=True)), unit=unit)
            out.append(f"<figure>{caption}{chart}</figure>")
    return f'<div class="plots">{"".join(out)}</div>' if out else '<p class="muted">No calls in this range.</p>'


@router.get("/usage")
async def usage_page(
    request: Request,
    tenant_id: str,
    session: SessionDep,
    services: ServicesDep,
    hours: Annotated[str, Query(max_length=4)] = "24",
) -> Response:
    tid = parse_tenant_id(tenant_id)
    if hours not in RANGES:
        hours = "24"
    until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    unit = "hour" if int(hours) <= _HOURLY_UP_TO else "day"
    since = until - timedelta(hours=int(hours))
    if unit == "hour":
        start, end = report_range(since, until, "hour")

        async def plotted() -> _Points:
            async with services.db.system() as conn:
                return await hourly_series(conn, tid, start, end, most=_MOST_PLOTTED)

        # The two read the same roll-ups on two connections: the database answers both at once.
        report, points = await asyncio.gather(
            report_of(services, tid, since, until, "day", item_series=False), plotted()
        )
        starts = hours_of(start, end)
    else:
        report = await report_of(services, tid, since, until, "day")
        starts = [point["start"] for point in report["series"]]
        points = _daily_points(report, starts)
    refusals: Counter[str] = Counter(report["totals"]["refusals"])
    totals = report["totals"]
    picker = (
        f'<form method="get" action="/console/tenants/{tid}/usage" class="row">'
        + choice("hours", "Range", RANGES, hours)
        + '<button type="submit" class="quiet">Show</button></form>'
    )
    rows = [
        [
            esc(name),
            str(item["calls"]),
            str(item["units"]),
            str(item["ok"]),
            esc(sum(item["refusals"].values())),
            esc(item["latency_ms"]["p95"]),
        ]
        for section in ("tools", "resources", "prompts")
        for name, item in sorted(report[section].items())
    ]
    quota_rows = [[esc(kind), meter(q.get("used"), q.get("limit"))] for kind, q in (report.get("quotas") or {}).items()]
    body = (
        messages(request.query_params)
        + tabs(tid)
        + f"<section>{picker}<p>{esc(report['since'][:16])} to {esc(report['until'][:16])} UTC: "
        f'<b id="total-calls">{totals["calls"]}</b> calls, <b>{totals["units"]}</b> units, '
        f"{sum(refusals.values())} refused.</p></section>"
        f"<section><h2>Calls and units per {unit}, per tool</h2>{_plots(report, points, starts, unit)}</section>"
        f"<section><h2>Refusals by reason</h2>{counts_chart('refusals by reason', refusals)}</section>"
        f"<section><h2>Quota window now</h2>{table(['Quota', 'Used now'], quota_rows, empty='Meter unreachable.')}"
        f"</section><section><h2>Per tool</h2>{table(['Tool', 'Calls', 'Units', 'OK', 'Refused', 'p95 ms'], rows)}"
        "</section>"
    )
    return page("Usage", body, session)


@router.get("/health")
async def health_page(tenant_id: str, session: SessionDep, services: ServicesDep) -> Response:
    tid = parse_tenant_id(tenant_id)
    async with services.db.system() as conn:
        tenant = await tenant_service.get_tenant(conn, tid)
    healthy, _, checks = await run_checks(services, tid)
    rows = [
        [
            esc(name),
            status(check["status"]),
            f"<pre>{esc(pretty({k: v for k, v in check.items() if k != 'status'}))}</pre>",
        ]
        for name, check in checks.items()
    ]
    body = (
        tabs(tid) + f"<section><p>{esc(tenant.name)}: {status('ok' if healthy else 'fail')} "
        "(the checks of <code>/health?tenant=</code>)</p>" + table(["Check", "Status", "Detail"], rows) + "</section>"
    )
    return page("Health", body, session)
