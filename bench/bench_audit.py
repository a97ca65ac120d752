"""The audit trail at volume: storing records, a filtered page at 1,000,000 records, verification, export.

    .venv/bin/python bench/bench_audit.py [--records 1000000] [--batch 500] [--queries 40]

Recreates the database `tenantry_bench_audit` (PostgreSQL must be up), then:

1. stores `--records` records for one tenant the way the drain does (`insert_documents`, one
   statement per `--batch`), spread over the last 30 days (with the monthly partitions a running
   gateway would have made), and reports records/s and PostgreSQL's CPU per record, next to the
   same number of usage events stored the same way (the reference: what the drain already did per
   call before the trail);
2. times the admin API's page query (`audit/store.py`, the code behind `GET /api/tenants/{id}/audit`)
   for several filters, `--queries` times each, and prints p50 and p95;
3. times `audit verify` over the whole chain and a JSON Lines export of a day.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_gateway as bg  # noqa: E402
from tenantry import tenants as tenant_service  # noqa: E402
from tenantry.audit import store  # noqa: E402
from tenantry.audit.records import ADMITTED, REFUSED, ArgumentDigests, AuditRecord  # noqa: E402
from tenantry.db.engine import Database  # noqa: E402
from tenantry.db.migrate import migrate  # noqa: E402
from tenantry.ids import time_ordered_id  # noqa: E402
from tenantry.metering.ledger import UsageEvent, insert_documents  # noqa: E402
from tenantry.settings import Settings  # noqa: E402

DB_NAME = "tenantry_bench_audit"
bg.DB_NAME = DB_NAME  # PostgreSQL's CPU is read from this database's backends
SUBJECTS = [f"agent-{n}" for n in range(50)]
TOOLS = ["data_get", "data_put", "data_list", "data_delete"] + [f"github__tool_{n}" for n in range(16)]
REFUSALS = ["quota_exceeded", "rate_limited", "tool_forbidden", "invalid_arguments", "argument_forbidden"]


def make_record(tenant: uuid.UUID, at: datetime, rnd: random.Random, digests: ArgumentDigests) -> AuditRecord:
    tool = rnd.choice(TOOLS)
    refused = rnd.random() < 0.1
    outcome = rnd.choice(REFUSALS) if refused else ("ok" if rnd.random() < 0.97 else "upstream_error")
    if rnd.random() < 0.001:
        outcome, refused = "killed", True
    return AuditRecord(
        tenant,
        rnd.choice(("streamable_http", "streamable_http", "rest", "sse")),
        "tools/call",
        REFUSED if refused else ADMITTED,
        outcome,
        latency_us=rnd.randint(300, 40_000),
        request_id=uuid.uuid4().hex,
        tool=tool,
        subject=rnd.choice(SUBJECTS),
        key_id=str(uuid.UUID(int=rnd.getrandbits(128))),
        reason=outcome if refused else None,
        event_id=None if refused else time_ordered_id(),
        args_digest=digests.digest(tenant, {"key": f"k{rnd.randint(0, 10_000)}"}),
        at_us=int(at.timestamp() * 1_000_000),
    )


async def prepare(settings: Settings) -> None:
    await bg.recreate_database(DB_NAME)
    await migrate(settings.database_url, app_role=settings.db_app_role)


async def pg_cpu() -> float:
    return sum(bg._postgres_cpu().values())


async def store_records(db: Database, tenant: uuid.UUID, count: int, batch: int) -> tuple[float, float]:
    """Store `count` records; (records/s, PostgreSQL CPU µs per record)."""
    rnd = random.Random(7)
    digests = ArgumentDigests(["bench-key"])
    now = datetime.now(UTC)
    start = now - timedelta(days=30)
    step = (now - start) / count
    elapsed = cpu = 0.0
    for first in range(0, count, batch):
        docs = [
            make_record(tenant, start + step * n, rnd, digests).document()
            for n in range(first, min(first + batch, count))
        ]
        c0, t0 = await pg_cpu(), time.perf_counter()
        await insert_documents(db, {}, {tenant: docs}, fresh=True)  # as the drain stores new entries
        elapsed += time.perf_counter() - t0
        cpu += await pg_cpu() - c0
        if first and first % 100_000 == 0:
            print(f"  {first:>9,} records stored ({first / elapsed:,.0f}/s)", flush=True)
    return count / elapsed, cpu / count * 1e6


async def store_usage(db: Database, tenant: uuid.UUID, count: int, batch: int) -> tuple[float, float]:
    """The reference: `count` usage events stored the same way."""
    elapsed = cpu = 0.0
    now_ms = time.time_ns() // 1_000_000
    for first in range(0, count, batch):
        docs = [
            UsageEvent(uuid.uuid4(), tenant, "data_get", 1, "ok", 1.5, now_ms + n).document()
            for n in range(first, min(first + batch, count))
        ]
        c0, t0 = await pg_cpu(), time.perf_counter()
        await insert_documents(db, {tenant: docs})
        elapsed += time.perf_counter() - t0
        cpu += await pg_cpu() - c0
    return count / elapsed, cpu / count * 1e6


async def timed(queries: int, run: object) -> tuple[float, float, int]:
    """(p50 ms, p95 ms, rows of the last run) of `queries` runs of the coroutine function `run`."""
    times: list[float] = []
    rows = 0
    for _ in range(queries):
        t0 = time.perf_counter()
        rows = await run()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], rows


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=1_000_000, help="records for the one tenant (default 1,000,000)")
    p.add_argument("--batch", type=int, default=500, help="records per statement, as the drain batches (500)")
    p.add_argument("--queries", type=int, default=40, help="runs of each query (default 40)")
    args = p.parse_args()
    settings = Settings(_env_file=None, database_url=f"{bg.PG_SERVER}/{DB_NAME}")  # type: ignore[call-arg]
    await prepare(settings)
    db = Database(settings)
    try:
        async with db.system() as conn:
            tenant = (await tenant_service.create_tenant(conn, "audited", "pro")).id
            reference = (await tenant_service.create_tenant(conn, "usage", "pro")).id
            # The partitions a gateway running for the last month would have made.
            month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            before = (month - timedelta(days=1)).replace(day=1)
            name = f"audit_records_y{before:%Y}m{before:%m}"
            await conn.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF audit_records"
                f" FOR VALUES FROM ('{before.isoformat()}') TO ('{month.isoformat()}')"
            )
        sample = min(args.records, 100_000)
        usage_rate, usage_cpu = await store_usage(db, reference, sample, args.batch)
        print(f"storing {args.records:,} audit records for one tenant, {args.batch} per statement ...", flush=True)
        rate, cpu = await store_records(db, tenant, args.records, args.batch)
        print(f"\nstored: {rate:,.0f} records/s, PostgreSQL {cpu:.1f} µs CPU per record")
        print(f"reference, {sample:,} usage events the same way: {usage_rate:,.0f}/s, {usage_cpu:.1f} µs CPU per event")
        print(f"audit record / usage event CPU: {cpu / usage_cpu:.2f}x\n")
        async with db.system() as conn:
            await conn.exec_driver_sql("ANALYZE audit_records")

        now = datetime.now(UTC)
        day = (now - timedelta(days=10), now - timedelta(days=9))
        cases: list[tuple[str, store.AuditFilter]] = [
            ("newest page, no filter", store.AuditFilter()),
            ("subject = agent-7", store.AuditFilter(subject="agent-7")),
            ("tool = data_put, refused", store.AuditFilter(tool="data_put", decision="refused")),
            ("one day, outcome = rate_limited", store.AuditFilter(since=day[0], until=day[1], outcome="rate_limited")),
            (
                "last 7 days, subject + tool",
                store.AuditFilter(since=now - timedelta(days=7), subject="agent-3", tool="data_get"),
            ),
            ("outcome = killed (0.1%)", store.AuditFilter(outcome="killed")),
        ]
        print(f"page query (100 records, newest first) over {args.records:,} records, {args.queries} runs each:")
        print(f"{'filter':<36} {'p50 ms':>8} {'p95 ms':>8} {'rows':>6}")
        for label, where in cases:

            async def one(where: store.AuditFilter = where) -> int:
                found, _ = await store.page(db, tenant, where, limit=100)
                return len(found)

            await one()  # warm: connections, plans
            p50, p95, rows = await timed(args.queries, one)
            print(f"{label:<36} {p50:>8.2f} {p95:>8.2f} {rows:>6}")

        cursor = None
        deep: list[float] = []
        for _ in range(50):  # the 50th page of the unfiltered trail, following cursors
            t0 = time.perf_counter()
            _, cursor = await store.page(db, tenant, store.AuditFilter(), limit=100, cursor=cursor)
            deep.append((time.perf_counter() - t0) * 1000)
        print(f"{'pages 1-50 by cursor (each)':<36} {statistics.median(deep):>8.2f} {max(deep):>8.2f} {100:>6}")

        t0 = time.perf_counter()
        result = await store.verify(db, tenant)
        took = time.perf_counter() - t0
        rate_v = result.checked / took
        print(f"\nverify: {result.checked:,} records in {took:.1f} s ({rate_v:,.0f}/s), intact={result.intact}")
        t0 = time.perf_counter()
        size = exported = 0
        async for chunk in store.export(db, tenant, store.AuditFilter(since=day[0], until=day[1]), "jsonl"):
            size += len(chunk)
            exported += chunk.count("\n")
        took = time.perf_counter() - t0
        mb = size / 1e6
        rate_e = exported / took
        print(f"export (JSON Lines, one day): {exported:,} records, {mb:.1f} MB in {took:.2f} s ({rate_e:,.0f}/s)")
    finally:
        await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
