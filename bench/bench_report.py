"""Tenant reports at volume: the 7-day report over 1,000,000 usage events, from roll-ups and by scanning.

    .venv/bin/python bench/bench_report.py [--events 1000000] [--runs 20] [--raw-runs 5] [--drain-events 50000]

Recreates the database `tenantry_bench_report` (PostgreSQL and Redis must be up), then:

1. inserts `--events` usage events for one tenant spread over the last 7 days (30 tools, resources
   and prompts; 3% errors; exponential latencies with a slow tail), with `generate_series` in
   statements of 100,000 rows: the roll-up trigger (migration 0012) keeps the roll-ups exactly as it
   does for the drain's inserts. A neighbour tenant gets a tenth as many, so the tables are shared as
   in production; 20,000 refused audit records go in through `insert_documents`, as the drain stores them;
2. times the report as the admin API builds it (`metering/reports.py`, every quota included, and
   the JSON encoding of the answer), `--runs` times, by day and by hour, and prints the median and p95
   and the CPU per report (this process and PostgreSQL's backends: steadier on a shared machine);
   next to it, in the same run, the same report counted from the raw `usage_events` (`--raw-runs`);
3. what the roll-ups cost the drain: `--drain-events` calls' entries (usage event and audit record; one
   call in ten refused) stored by `insert_documents` in batches of 500 (as the drain does), with the
   roll-up triggers and with them disabled, three times each alternately; PostgreSQL CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from redis.asyncio import Redis  # noqa: E402
from sqlalchemy import text  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

import bench_gateway as bg  # noqa: E402
from tenantry import tenants as tenant_service  # noqa: E402
from tenantry.audit.records import AuditRecord  # noqa: E402
from tenantry.db.engine import Database  # noqa: E402
from tenantry.db.migrate import migrate  # noqa: E402
from tenantry.metering.ledger import UsageEvent, insert_documents  # noqa: E402
from tenantry.metering.meter import Meter  # noqa: E402
from tenantry.metering.reports import build_report, report_range  # noqa: E402
from tenantry.plans import Limits  # noqa: E402
from tenantry.settings import Settings  # noqa: E402

DB_NAME = "tenantry_bench_report"
bg.DB_NAME = DB_NAME  # PostgreSQL's CPU is read from this database's backends
NAMES = (
    [f"github__tool_{n}" for n in range(16)]
    + ["data_get", "data_put", "data_list", "data_delete", "usage_summary", "health_check"]
    + [f"resource:fx+file:///docs/{n}.md" for n in range(4)]
    + [f"prompt:fx__prompt_{n}" for n in range(4)]
)
ERRORS = ["upstream_error", "upstream_timeout", "key_not_found", "invalid_arguments", "cancelled"]
CHUNK = 100_000

# One statement per chunk, as a drain batch is one statement: the roll-up trigger sees its rows at once.
_GENERATE = text(
    """
    INSERT INTO usage_events (tenant_id, event_id, tool, units, outcome, latency_ms, occurred_at, metered)
    SELECT CAST(:tenant AS uuid), gen_random_uuid(),
           (CAST(:names AS text[]))[1 + floor(random() * cardinality(CAST(:names AS text[])))::int],
           1 + (random() < 0.1)::int,
           CASE WHEN random() < 0.03
                THEN (CAST(:errors AS text[]))[1 + floor(random() * cardinality(CAST(:errors AS text[])))::int]
                ELSE 'ok' END,
           round((-ln(1 - random()) * CASE WHEN random() < 0.05 THEN 800 ELSE 25 END)::numeric, 3),
           CAST(:until AS timestamptz) - random() * interval '7 days', true
    FROM generate_series(1, :n)
    """
)


async def fill(db: Database, tenant: uuid.UUID, count: int, until: datetime) -> float:
    """`count` events for `tenant` over the 7 days before `until`; events/s."""
    t0 = time.perf_counter()
    params = {"tenant": str(tenant), "names": NAMES, "errors": ERRORS, "until": until}
    for first in range(0, count, CHUNK):
        async with db.system() as conn:
            await conn.execute(_GENERATE, {**params, "n": min(CHUNK, count - first)})
        print(f"  {first + min(CHUNK, count - first):>9,} events", flush=True)
    return count / (time.perf_counter() - t0)


async def refuse(db: Database, tenant: uuid.UUID, count: int, until: datetime) -> None:
    """`count` refused calls' audit records over the 7 days before `until`, stored as the drain stores them."""
    span = int(timedelta(days=7).total_seconds() * 1_000_000)
    end = int(until.timestamp() * 1_000_000)
    reasons = ["quota_exceeded", "rate_limited", "tool_forbidden"]
    for first in range(0, count, 500):
        docs = [
            AuditRecord(
                tenant,
                "streamable_http",
                "tools/call",
                "refused",
                reasons[n % 3],
                reason=reasons[n % 3],
                tool=NAMES[n % len(NAMES)].split(":", 1)[-1],
                at_us=end - span + span * n // count,
            ).document()
            for n in range(first, min(first + 500, count))
        ]
        await insert_documents(db, {}, {tenant: docs}, fresh=True)


async def timed(runs: int, run: Callable[[], Awaitable[Any]]) -> tuple[float, float, float, Any]:
    """(median ms, p95 ms, CPU ms per run of this process and PostgreSQL, last result) of `runs` runs,
    after one to warm connections and plans. CPU is the steadier figure on a shared machine."""
    result = await run()
    times: list[float] = []
    cpu0, pg0 = time.process_time(), sum(bg._postgres_cpu().values())
    for _ in range(runs):
        t0 = time.perf_counter()
        result = await run()
        times.append((time.perf_counter() - t0) * 1000)
    cpu = (time.process_time() - cpu0 + sum(bg._postgres_cpu().values()) - pg0) / runs * 1000
    times.sort()
    return statistics.median(times), times[max(0, round(len(times) * 0.95) - 1)], cpu, result


async def drain_cost(db: Database, tenant: uuid.UUID, count: int) -> float:
    """PostgreSQL CPU µs per call of `count` calls' usage events and audit records (one refused call in
    ten: a record and no event) stored by `insert_documents`, 500 entries per statement, as the drain does."""
    now_ms = time.time_ns() // 1_000_000
    cpu = 0.0
    for first in range(0, count, 500):
        events: list[str] = []
        records: list[str] = []
        for n in range(first, min(first + 500, count)):
            name = NAMES[n % len(NAMES)]
            refused = n % 10 == 0
            event = UsageEvent(uuid.uuid4(), tenant, name, 1, "ok", 1.5 + n % 40, now_ms + n)
            if not refused:
                events.append(event.document())
            records.append(
                AuditRecord(
                    tenant,
                    "streamable_http",
                    "tools/call",
                    "refused" if refused else "admitted",
                    "quota_exceeded" if refused else "ok",
                    reason="quota_exceeded" if refused else None,
                    tool=name,
                    event_id=None if refused else event.event_id,
                    id=event.event_id,
                    at_us=(now_ms + n) * 1000,
                ).document()
            )
        c0 = sum(bg._postgres_cpu().values())
        await insert_documents(db, {tenant: events}, {tenant: records}, fresh=True)
        cpu += sum(bg._postgres_cpu().values()) - c0
    return cpu / count * 1e6


async def set_triggers(db: Database, enabled: bool) -> None:
    verb = "ENABLE" if enabled else "DISABLE"
    async with db.system() as conn:
        await conn.exec_driver_sql(f"ALTER TABLE usage_events {verb} TRIGGER usage_events_rollup")
        await conn.exec_driver_sql(f"ALTER TABLE audit_records {verb} TRIGGER audit_records_rollup")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=1_000_000, help="usage events of the reported tenant (1,000,000)")
    p.add_argument("--runs", type=int, default=20, help="timed runs of each roll-up report (default 20)")
    p.add_argument("--raw-runs", type=int, default=5, help="timed runs of the raw-scan reference (default 5)")
    p.add_argument("--drain-events", type=int, default=50_000, help="events per drain-cost run (default 50,000)")
    args = p.parse_args()
    settings = Settings(_env_file=None, database_url=f"{bg.PG_SERVER}/{DB_NAME}")  # type: ignore[call-arg]
    await bg.recreate_database(DB_NAME)
    await migrate(settings.database_url, app_role=settings.db_app_role)
    db = Database(settings)
    redis = Redis.from_url(settings.redis_url)
    meter = Meter(redis, key_prefix=f"bench-report-{uuid.uuid4().hex[:6]}")
    try:
        async with db.system() as conn:
            tenant = (await tenant_service.create_tenant(conn, "reported", "pro")).id
            neighbour = (await tenant_service.create_tenant(conn, "neighbour", "pro")).id
            drained = (await tenant_service.create_tenant(conn, "drained", "pro")).id
        now = datetime.now(UTC)
        print(f"inserting {args.events:,} usage events for one tenant over 7 days (roll-ups kept by the trigger) ...")
        rate = await fill(db, tenant, args.events, now)
        print(f"  {rate:,.0f} events/s with roll-ups kept")
        await fill(db, neighbour, args.events // 10, now)
        await refuse(db, tenant, 20_000, now)
        async with db.system_engine.connect() as plain:
            autocommit = await plain.execution_options(isolation_level="AUTOCOMMIT")
            for table in ("usage_events", "usage_rollups", "refusal_rollups", "audit_records"):
                await autocommit.exec_driver_sql(f"VACUUM ANALYZE {table}")
        async with db.system() as conn:
            rows = (
                await conn.execute(text("SELECT count(*) FROM usage_rollups WHERE tenant_id = :t"), {"t": tenant})
            ).scalar_one()
        print(f"  roll-up rows for the tenant: {rows:,}\n")

        limits = Limits(calls_per_window=100_000)
        since, until = report_range(None, None, now=now + timedelta(minutes=1))

        def report(bucket: str, raw: bool = False) -> Callable[[], Awaitable[dict[str, Any]]]:
            async def run() -> dict[str, Any]:
                async with db.system() as conn:  # the admin API's pool and path
                    body = await build_report(
                        conn, None if raw else meter, tenant, limits, since, until, bucket, db=db, recount=raw
                    )
                JSONResponse(body)  # what the API then does with it
                return body

            return run

        print(f"7-day report of one tenant ({since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M} UTC):")
        print(f"{'source':<34} {'bucket':<7} {'runs':>5} {'median ms':>10} {'p95 ms':>9} {'CPU ms':>7} {'events':>10}")
        results: dict[tuple[bool, str], dict[str, Any]] = {}
        for raw, bucket, runs in ((False, "day", args.runs), (False, "hour", args.runs), (True, "day", args.raw_runs)):
            median, p95, cpu, body = await timed(runs, report(bucket, raw))
            results[(raw, bucket)] = body
            label = "raw usage_events scan (reference)" if raw else "roll-ups (what the API answers)"
            calls = body["totals"]["calls"]
            print(f"{label:<34} {bucket:<7} {runs:>5} {median:>10.1f} {p95:>9.1f} {cpu:>7.1f} {calls:>10,}")
        rolled, scanned = results[(False, "day")], results[(True, "day")]
        same = {k: v for k, v in rolled.items() if k != "quotas"} == scanned
        print(f"roll-up report == raw recount: {same}")
        load = f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        print(f"(load average while timing: {load}; other work on the machine inflates these)\n")

        print(f"what the roll-ups cost the drain ({args.drain_events:,} calls' entries, 500 per statement):")
        await drain_cost(db, drained, 2000)  # warm
        costs: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):  # alternated, so drift on the machine hits both alike
            for enabled in (True, False):
                await set_triggers(db, enabled)
                costs[enabled].append(await drain_cost(db, drained, args.drain_events))
        await set_triggers(db, True)
        on, off = statistics.median(costs[True]), statistics.median(costs[False])
        print(f"  PostgreSQL CPU per call (event + audit record): {on:.1f} µs with roll-ups, {off:.1f} µs without")
    finally:
        await redis.aclose()
        await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
