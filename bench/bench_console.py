"""Console pages at volume: every page of a tenant with 1,000,000 usage events, as the browser gets it.

    .venv/bin/python bench/bench_console.py [--events 1000000] [--audit-records 20000] [--runs 20]
        [--database NAME] [--reuse]

Recreates the database `tenantry_bench_console` (PostgreSQL and Redis must be up), fills one tenant's
usage over the last 7 days exactly as bench/bench_report.py does (`fill`: generated usage events, the
roll-up trigger keeping the hourly roll-ups; `--audit-records` refused calls' audit records), then signs
in to the console and times each page through the whole app (the observer, its audit record, the session
check, the page's queries and the HTML), `--runs` times after one warm-up, printing the median and p95.
The issue's bar: every page under 200 ms. The reference, timed in the same run: the full hourly report
of 7 days (what the 7-day page would cost if its plots read it) next to the plots' own query. Then what
is not a page: the chain verification's walk of the whole chain (the console's button answers at once and
runs it in the background; in-process, httpx's ASGI transport waits for that background task, so the
POST's time here is the walk's), the export (a download of every record) and a policy dry-run's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import httpx  # noqa: E402
from sqlalchemy import text  # noqa: E402

import bench_gateway as bg  # noqa: E402
import bench_report as br  # noqa: E402
from tenantry import tenants as tenant_service  # noqa: E402
from tenantry.api.reports import report_of  # noqa: E402
from tenantry.app import create_app  # noqa: E402
from tenantry.audit.store import encode_cursor  # noqa: E402
from tenantry.db.engine import Database  # noqa: E402
from tenantry.db.migrate import migrate  # noqa: E402
from tenantry.metering.reports import hourly_series, report_range  # noqa: E402
from tenantry.settings import Settings  # noqa: E402

DB_NAME = "tenantry_bench_console"
BUDGET_MS = 200


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=1_000_000, help="usage events of the tenant (default 1,000,000)")
    p.add_argument("--runs", type=int, default=20, help="timed loads of each page (default 20)")
    p.add_argument(
        "--audit-records", type=int, default=20_000, help="refused calls' audit records of the tenant (default 20,000)"
    )
    p.add_argument("--database", default=DB_NAME, help=f"the database to fill (default {DB_NAME})")
    p.add_argument("--reuse", action="store_true", help="time the pages of the tenant a previous run filled")
    args = p.parse_args()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"{bg.PG_SERVER}/{args.database}",
        redis_key_prefix=f"bench-console-{uuid.uuid4().hex[:6]}",
    )
    if args.reuse:
        db = Database(settings)
        try:
            async with db.system() as conn:
                tenant = next(t.id for t in await tenant_service.list_tenants(conn) if t.name == "busy")
        finally:
            await db.dispose()
    else:
        tenant = await _fill(settings, args.database, args.events, args.audit_records)

    await _pages(settings, tenant, args.events, args.runs)


async def _fill(settings: Settings, database: str, events: int, audit_records: int) -> uuid.UUID:
    await bg.recreate_database(database)
    await migrate(settings.database_url, app_role=settings.db_app_role)
    db = Database(settings)
    try:
        async with db.system() as conn:
            tenant = (await tenant_service.create_tenant(conn, "busy", "pro")).id
            neighbour = (await tenant_service.create_tenant(conn, "neighbour", "pro")).id
        now = datetime.now(UTC)
        print(f"inserting {events:,} usage events for one tenant over 7 days ...")
        await br.fill(db, tenant, events, now)
        await br.fill(db, neighbour, events // 10, now)
        print(f"inserting {audit_records:,} audit records ...")
        await br.refuse(db, tenant, audit_records, now)
        async with db.system_engine.connect() as plain:
            autocommit = await plain.execution_options(isolation_level="AUTOCOMMIT")
            for table in ("usage_events", "usage_rollups", "refusal_rollups", "audit_records"):
                await autocommit.exec_driver_sql(f"VACUUM ANALYZE {table}")
    finally:
        await db.dispose()
    return tenant


async def _timed(runs: int, run: Callable[[], Awaitable[int]]) -> tuple[float, float, float, int]:
    """(median, p95, max) ms of `runs` runs after one warm-up, and what the warm-up returned (bytes)."""
    size = await run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await run()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, round(len(times) * 0.95) - 1)], times[-1], size


async def _pages(settings: Settings, tenant: uuid.UUID, events: int, runs: int) -> None:
    app = create_app(settings)
    services = app.state.services
    transport = httpx.ASGITransport(app=app)
    base = f"/console/tenants/{tenant}"
    async with services.db.system() as conn:  # a record half-way down the trail: where "older"/"newer" pages start
        middle = (
            await conn.execute(
                text(
                    "SELECT (extract(epoch FROM at) * 1000000)::bigint AS at_us, seq FROM audit_records"
                    " WHERE tenant_id = :t ORDER BY seq OFFSET"
                    " (SELECT count(*) / 2 FROM audit_records WHERE tenant_id = :t) LIMIT 1"
                ),
                {"t": tenant},
            )
        ).one()
    cursor = encode_cursor(middle.at_us, middle.seq)
    pages = {
        "tenants list": "/console/tenants",
        "tenant page": base,
        "usage, 24 hours": f"{base}/usage?hours=24",
        "usage, 3 days": f"{base}/usage?hours=72",
        "usage, 7 days (hourly)": f"{base}/usage?hours=168",
        "usage, 30 days": f"{base}/usage?hours=720",
        "health": f"{base}/health",
        "policy": f"{base}/policy",
        "audit trail": f"{base}/audit",
        "audit, older page": f"{base}/audit?older={cursor}",
        "audit, newer page": f"{base}/audit?newer={cursor}",
        "audit, by tool": f"{base}/audit?tool={br.NAMES[0].split(':', 1)[-1]}",
        "audit, refused": f"{base}/audit?decision=refused&outcome=rate_limited",
        "audit, admitted": f"{base}/audit?decision=admitted",  # only the console's own reads: rare
        "policy dry run": f"{base}/policy/dry-run",
        "offboard": f"{base}/offboard",
        "chain verdict": f"{base}/audit/verify",
    }
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://console.bench") as http:
            signed = await http.post("/console/sign-in", data={"credential": settings.admin_api_key})
            assert signed.status_code == 303, signed.text
            print(f"\nconsole pages of a tenant with {events:,} usage events ({runs} loads each):")
            print(f"{'page':<34} {'median ms':>10} {'p95 ms':>9} {'max ms':>8} {'bytes':>8}  under {BUDGET_MS} ms")

            def show(name: str, figures: tuple[float, float, float, int], budget: bool = True) -> None:
                median, p95, most, size = figures
                ok = ("yes" if p95 < BUDGET_MS else "NO") if budget else "(reference)"
                print(f"{name:<34} {median:>10.1f} {p95:>9.1f} {most:>8.1f} {size:>8,}  {ok}")

            for name, path in pages.items():

                async def load(path: str = path) -> int:
                    r = await http.get(path)
                    assert r.status_code == 200, (path, r.status_code, r.text[:300])
                    return len(r.content)

                show(name, await _timed(runs, load))
            until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            start, end = report_range(until - timedelta(days=7), until, "hour")

            async def full_report() -> int:
                return len(json.dumps(await report_of(services, tenant, start, end, "hour")))

            async def plot_query() -> int:
                async with services.db.system() as conn:
                    return len(json.dumps(await hourly_series(conn, tenant, start, end)))

            show("7-day hourly report alone", await _timed(runs, full_report), budget=False)
            show("7-day hourly plot query alone", await _timed(runs, plot_query), budget=False)
            await actions(http, base, runs)
    finally:
        await services.aclose_redis()
        await services.db.dispose()


async def actions(http: httpx.AsyncClient, base: str, runs: int) -> None:
    """The chain verification's walk (POST, with the session's CSRF token), the CSV export of the whole
    trail, and a policy dry-run: median and max of `runs` (at least 3) after one warm-up."""
    found = re.search(r'name="csrf" value="([^"]+)"', (await http.get(f"{base}/audit")).text)
    assert found is not None
    csrf = found.group(1)
    dry = {"csrf": csrf, "subject": "bot", "roles": "reader", "tool": "search", "arguments": '{"q": "x"}'}
    todo = {
        "verify (the walk)": lambda: http.post(f"{base}/audit/verify", data={"csrf": csrf}),
        "export, CSV": lambda: http.get(f"{base}/audit/export?format=csv"),
        "dry run (POST)": lambda: http.post(f"{base}/policy/dry-run", data=dry),
    }
    print(f"\n{'action':<18} {'median ms':>10} {'max ms':>9} {'bytes':>12}")
    for name, act in todo.items():
        first = await act()
        assert first.status_code in (200, 303), (name, first.status_code, first.text[:300])
        times = []
        for _ in range(max(3, runs // 4)):
            t0 = time.perf_counter()
            assert (await act()).status_code == first.status_code
            times.append((time.perf_counter() - t0) * 1000)
        print(f"{name:<18} {statistics.median(times):>10.1f} {max(times):>9.1f} {len(first.content):>12,}")


if __name__ == "__main__":
    asyncio.run(main())
