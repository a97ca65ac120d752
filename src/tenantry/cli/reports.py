"""`tenantry report`: a tenant's report from the command line, as the admin API answers it."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from tenantry import tenants as tenant_service
from tenantry.audit.store import parse_time
from tenantry.cli.common import emit, with_db
from tenantry.db.engine import Database
from tenantry.metering.cluster import ClusterClient
from tenantry.metering.meter import Meter
from tenantry.metering.reports import BUCKETS, SECTIONS, build_report, report_range
from tenantry.plans import PlanBook
from tenantry.settings import Settings
from tenantry.tenancy import parse_tenant_id


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)
    since, until = report_range(parse_time(args.since, "--since"), parse_time(args.until, "--until"), args.bucket)

    async def work(db: Database) -> dict[str, Any]:
        # The meter's windows live in Redis; a short timeout, so an unreachable Redis costs the report
        # only its quotas (`reports.quotas`), not a hang. No catalog here: `max_tools` shows no `used`.
        redis = Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        # On a Redis Cluster the tenant's keys live on the master of their slot: the cluster client finds it.
        cluster = ClusterClient.from_url(settings.redis_url, timeout=2.0) if settings.redis_cluster else None
        try:
            meter = Meter(cluster or redis, key_prefix=settings.redis_key_prefix, timeout_s=2.0)
            async with db.system() as conn:
                tenant = await tenant_service.get_tenant(conn, tenant_id)
                limits = PlanBook(settings).limits(tenant.plan, tenant.limits)
                return await build_report(conn, meter, tenant_id, limits, since, until, args.bucket, db=db)
        finally:
            if cluster is not None:
                await cluster.aclose()
            await redis.aclose()

    report = asyncio.run(with_db(settings, work))
    emit(args, report, _human(report))
    return 0


def _human(report: dict[str, Any]) -> str:
    lines = [f"tenant {report['tenant_id']}  {report['since']} .. {report['until']}"]
    header = (
        f"  {'kind':<9} {'name':<32} {'calls':>8} {'units':>8} {'errors':>7} {'refused':>7} {'avg ms':>9} {'p95 ms':>9}"
    )
    lines.append(header)
    for kind, section in SECTIONS.items():
        for name, item in report[section].items():
            latency = item["latency_ms"]
            avg = "-" if latency["avg"] is None else f"{latency['avg']:.1f}"
            p95 = "-" if latency["p95"] is None else f"{latency['p95']:g}"
            lines.append(
                f"  {kind:<9} {name[:32]:<32} {item['calls']:>8} {item['units']:>8} "
                f"{sum(item['errors'].values()):>7} {sum(item['refusals'].values()):>7} {avg:>9} {p95:>9}"
            )
    if len(lines) == 2:
        lines.append("  (no usage in this range)")
    if report.get("quotas") is None:
        lines.append(f"quotas: unknown ({report.get('quotas_error')})")
    else:
        shown = [
            f"{kind} {'-' if q['used'] is None else q['used']}/{'unlimited' if q['limit'] is None else q['limit']}"
            for kind, q in report["quotas"].items()
        ]
        lines.append("quotas (used/limit now): " + ", ".join(shown))
    return "\n".join(lines)


def add_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        "report",
        "A tenant's report: calls, units, errors, refusals and latency per tool, resource and prompt; quotas now.",
        cmd_report,
    )
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--since", help="ISO 8601 time, inclusive (no zone: UTC; default 7 days before --until)")
    p.add_argument("--until", help="ISO 8601 time, exclusive (default now)")
    p.add_argument("--bucket", choices=BUCKETS, default="day", help="the series' step (UTC; default day)")
