"""Isolation tiers: tools/call throughput per tier side by side, and with many tenants (pool churn).

    .venv/bin/python bench/bench_tiers.py [--calls 1500] [--concurrency 8] [--rounds 3]
                                          [--schema-tenants 500] [--database-tenants 30] [--pool-entries 10]

Recreates the `tenantry_bench_tiers` database (and its tenant databases), serves the gateway in its
own process (uvicorn, one worker, as `bench_gateway.py` does), and drives stateless JSON `tools/call`
of `data_get` (one data-plane transaction per call, through the router) over HTTP:

1. one tenant on each tier, `--rounds` interleaved rounds of `--calls` calls each: calls/s, p50, p99,
   the shared tier being the reference measured in the same run;
2. `--schema-tenants` schema-tier tenants called round-robin (every call a different search path on
   the shared pool), next to as many shared-tier tenants called the same way (the reference);
3. `--database-tenants` database-tier tenants round-robin through an LRU of `--pool-entries` engines:
   every call past the first pass opens a pool (evictions shown from /health).

PostgreSQL and Redis must be up. Metering and the ledger stay on (limits raised so nothing is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_gateway as bg  # noqa: E402
from tenantry.db.migrate import migrate  # noqa: E402
from tenantry.settings import Settings  # noqa: E402

DB_NAME = "tenantry_bench_tiers"
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
OPS_KEY = "bench-ops-key-0123456789abcdef"
UNLIMITED = {"calls_per_window": 10**9, "requests_per_minute": 10**9, "max_concurrent": 10_000}


def env_for(pool_entries: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    env.update(
        {
            "TENANTRY_ENVIRONMENT": "test",
            "TENANTRY_DATABASE_URL": f"{bg.PG_SERVER}/{DB_NAME}",
            "TENANTRY_REDIS_URL": bg.REDIS_URL,
            "TENANTRY_ADMIN_API_KEY": ADMIN_KEY,
            "TENANTRY_OPS_API_KEY": OPS_KEY,
            "TENANTRY_JWT_SECRET": "bench-jwt-secret-0123456789abcdef0123456789",
            "TENANTRY_PLAN_TIERS": "{}",
            "TENANTRY_TIER_POOL_ENTRIES": str(pool_entries),
        }
    )
    return env


async def recreate() -> None:
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        for row in await conn.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", DB_NAME):
            await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await conn.close()
    await migrate(f"{bg.PG_SERVER}/{DB_NAME}", app_role=Settings(_env_file=None).db_app_role)  # type: ignore[call-arg]


async def make_tenants(admin: httpx.AsyncClient, tier: str, count: int) -> list[tuple[str, str]]:
    """`count` tenants on `tier`, each with a key and the value the calls read: [(tenant id, key)]."""
    made: list[tuple[str, str]] = []
    for i in range(count):
        r = await admin.post("/api/tenants", json={"name": f"{tier}-{i}", "plan": "pro", "tier": tier})
        r.raise_for_status()
        tenant_id = r.json()["id"]
        (await admin.patch(f"/api/tenants/{tenant_id}", json={"limits": UNLIMITED})).raise_for_status()
        k = await admin.post(f"/api/tenants/{tenant_id}/keys", json={"name": "bench"})
        k.raise_for_status()
        made.append((tenant_id, k.json()["secret"]))
    return made


class PoolsBusy(Exception):
    """Every tenant-database pool was in use: the gateway refused retryably."""


async def call(client: httpx.AsyncClient, tenant: tuple[str, str], tool: str, args: dict[str, Any], n: int) -> float:
    headers = bg.request_headers("legacy", tenant[0], tenant[1])
    body = bg.call_body("legacy", n, tool, args)
    start = time.perf_counter()
    r = await client.post("/mcp", content=body, headers=headers)
    elapsed = time.perf_counter() - start
    result = r.json().get("result") if r.status_code == 200 else None
    if result is not None and (result.get("structuredContent") or {}).get("error") == "database_pools_busy":
        raise PoolsBusy
    if result is None or result.get("isError"):
        raise RuntimeError(f"call failed: {r.status_code} {r.text[:300]}")
    return elapsed


async def seed(client: httpx.AsyncClient, tenants: list[tuple[str, str]]) -> None:
    for i, tenant in enumerate(tenants):
        await call(client, tenant, "data_put", {"key": bg.KEY, "value": bg.VALUE}, i)


async def drive(
    client: httpx.AsyncClient, tenants: list[tuple[str, str]], calls: int, concurrency: int
) -> dict[str, float]:
    """`calls` data_get calls spread round-robin over `tenants`, `concurrency` at a time."""
    latencies: list[float] = []
    counter = iter(range(calls))
    busy = 0

    async def worker() -> None:
        nonlocal busy
        for n in counter:
            while True:
                try:
                    latencies.append(await call(client, tenants[n % len(tenants)], "data_get", {"key": bg.KEY}, n))
                    break
                except PoolsBusy:  # retried at once, as a client honouring the retryable error would
                    busy += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "calls_per_s": calls / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "refused_busy": busy,
    }


def row(name: str, result: dict[str, float], reference: dict[str, float] | None) -> str:
    ratio = f"{result['calls_per_s'] / reference['calls_per_s']:6.2f}x" if reference else "   ref"
    return f"{name:<34} {result['calls_per_s']:>9.0f} {result['p50_ms']:>9.2f} {result['p99_ms']:>9.2f}  {ratio}"


HEADER = f"{'':<34} {'calls/s':>9} {'p50 ms':>9} {'p99 ms':>9}  vs shared"


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


async def bench(args: argparse.Namespace, port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
    async with (
        httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60) as admin,
        httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client,
    ):
        print(
            f"1. one tenant per tier, {args.rounds} interleaved rounds of {args.calls} calls,"
            f" concurrency {args.concurrency}"
        )
        one = {tier: await make_tenants(admin, tier, 1) for tier in ("shared", "schema", "database")}
        for tenants in one.values():
            await seed(client, tenants)
            await drive(client, tenants, 200, args.concurrency)  # warm up
        runs: dict[str, list[dict[str, float]]] = {tier: [] for tier in one}
        for _ in range(args.rounds):
            for tier, tenants in one.items():
                runs[tier].append(await drive(client, tenants, args.calls, args.concurrency))
        print(HEADER)
        shared = median_of(runs["shared"])
        for tier in one:
            print(row(f"{tier} tier", median_of(runs[tier]), None if tier == "shared" else shared))

        reference = shared
        if args.schema_tenants > 0:
            print(f"\n2. {args.schema_tenants} tenants called round-robin ({args.calls * 2} calls per run)")
            many_shared = await make_tenants(admin, "shared", args.schema_tenants)
            provision_start = time.perf_counter()
            many_schema = await make_tenants(admin, "schema", args.schema_tenants)
            provision_s = time.perf_counter() - provision_start
            await seed(client, many_shared)
            await seed(client, many_schema)
            churn: dict[str, list[dict[str, float]]] = {"shared": [], "schema": []}
            for _ in range(args.rounds):
                churn["shared"].append(await drive(client, many_shared, args.calls * 2, args.concurrency))
                churn["schema"].append(await drive(client, many_schema, args.calls * 2, args.concurrency))
            print(HEADER)
            reference = median_of(churn["shared"])
            print(row(f"{args.schema_tenants} shared-tier tenants", reference, None))
            print(row(f"{args.schema_tenants} schema-tier tenants", median_of(churn["schema"]), reference))
            print(f"   creating {args.schema_tenants} schema-tier tenants (schema + tables + RLS): {provision_s:.1f} s")

        print(
            f"\n3. {args.database_tenants} database-tier tenants round-robin through an LRU of "
            f"{args.pool_entries} engines"
        )
        provision_start = time.perf_counter()
        many_db = await make_tenants(admin, "database", args.database_tenants)
        provision_s = time.perf_counter() - provision_start
        await seed(client, many_db)
        ops = {"Authorization": f"Bearer {OPS_KEY}"}
        before = (await client.get("/health", headers=ops)).json()["checks"]["database"]["pool"]["tiers"]
        result = await drive(client, many_db, args.calls, args.concurrency)
        after = (await client.get("/health", headers=ops)).json()["checks"]["database"]["pool"]["tiers"]
        print(HEADER)
        print(row(f"{args.database_tenants} database-tier tenants", result, reference))
        print(
            f"   pools open {after['open_pools']}, connections {after['connections']}, evictions during the run "
            f"{after['evictions'] - before['evictions']},"
            f" calls refused (pools busy, retried) {result['refused_busy']:.0f};"
            f" creating {args.database_tenants} databases: {provision_s:.1f} s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1500, help="calls per run")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration (median kept)")
    parser.add_argument("--schema-tenants", type=int, default=500, help="schema-tier tenants for the churn run")
    parser.add_argument("--database-tenants", type=int, default=30, help="database-tier tenants for the LRU run")
    parser.add_argument("--pool-entries", type=int, default=10, help="TENANTRY_TIER_POOL_ENTRIES for the run")
    args = parser.parse_args(argv)
    asyncio.run(recreate())
    env = env_for(args.pool_entries)
    with tempfile.TemporaryDirectory() as logdir:
        server = bg.start_server("tiers-gateway", ["tenantry.app:create_app", "--factory"], env, Path(logdir))
        try:
            bg.wait_healthy(server)
            asyncio.run(bench(args, server.port))
        except Exception:
            print(server.log_tail(), file=sys.stderr)
            raise
        finally:
            bg.stop_server(server)
    print(json.dumps({"note": "figures from one machine; compare tiers within this run only"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
