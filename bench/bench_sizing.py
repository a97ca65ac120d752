"""What one gateway replica asks of PostgreSQL and Redis: the figures behind the README's "Running at scale".

    .venv/bin/python bench/bench_sizing.py [--tenants 200] [--calls 20] [--concurrency 1,16,64] [--duration 4]

What it does, in one run:
1. recreates the database `tenantry_bench_sizing`, migrates it, creates `--tenants` tenants on the `pro`
   plan (its quota kinds all counting) with an API key each;
2. starts one gateway (uvicorn, one worker, as `bench_gateway.py` does) with a Redis key prefix of its own;
3. **Redis per active tenant**: every tenant stores one value and makes `--calls` tools/call `data_get`;
   once the drain has moved every usage event into PostgreSQL, it counts the prefix's keys per tenant (the
   `{tenant id}` hash tag in the key) and sums `MEMORY USAGE` over them; keys without a tenant (the usage
   ledger's stream) are shown apart, since they do not grow with the tenant count; and what the ledger's
   stream holds per call while nothing drains it (PostgreSQL down);
4. **PostgreSQL connections per replica**: the backends connected to the database (`pg_stat_activity`,
   by role), idle and at the peak of a `--duration`-second drive at each concurrency (sampled every 20 ms),
   next to the pool settings that bound them; then the replica's resident memory. Prints tables; exits 1
   if a call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import (  # the bench directory, put on the path just above
    PG_SERVER,
    REDIS_URL,
    RawHttpConnection,
    call_body,
    recreate_database,
    request_headers,
    server_env,
    start_server,
    stop_server,
    wait_healthy,
)

DB_NAME = "tenantry_bench_sizing"
NAME = "sizing"
PREFIX = f"bench-{NAME}"  # the Redis key prefix start_server gives it


async def prepare(env: dict[str, str], tenants: int) -> list[tuple[str, str]]:
    """Recreate and migrate the database; return (tenant id, API key) for each new tenant."""
    from tenantry import tenants as tenant_service
    from tenantry.auth import api_keys
    from tenantry.db.engine import Database
    from tenantry.db.migrate import migrate
    from tenantry.settings import Settings

    await recreate_database(DB_NAME)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{k.removeprefix("TENANTRY_").lower(): v for k, v in env.items() if k.startswith("TENANTRY_")},
    )
    await migrate(settings.database_url, app_role=settings.db_app_role)
    db = Database(settings)
    made: list[tuple[str, str]] = []
    try:
        async with db.system() as conn:
            for n in range(tenants):
                tenant = await tenant_service.create_tenant(conn, f"sizing-{n}", "pro")
                _, secret = await api_keys.create_key(conn, tenant.id, "bench")
                made.append((str(tenant.id), secret))
    finally:
        await db.dispose()
    return made


async def call(conn: RawHttpConnection, request_id: int, tool: str, arguments: dict[str, Any]) -> None:
    status, payload = await conn.post(call_body("legacy", request_id, tool, arguments))
    message = json.loads(payload) if status == 200 else {}
    if status != 200 or "result" not in message or message["result"].get("isError"):
        raise RuntimeError(f"{tool}: HTTP {status}: {payload[:300]!r}")


async def tenant_calls(port: int, tenant_id: str, key: str, calls: int) -> None:
    conn = RawHttpConnection("127.0.0.1", port, "/mcp", request_headers("legacy", tenant_id, key))
    try:
        await call(conn, 0, "data_put", {"key": "k", "value": {"n": 1}})
        for i in range(calls):
            await call(conn, i + 1, "data_get", {"key": "k"})
    finally:
        await conn.close()


async def redis_per_tenant(port: int, tenants: list[tuple[str, str]], calls: int) -> None:
    queue = list(tenants)

    async def worker() -> None:
        while queue:
            tenant_id, key = queue.pop()
            await tenant_calls(port, tenant_id, key, calls)

    await asyncio.gather(*(worker() for _ in range(16)))
    r = aioredis.from_url(REDIS_URL)
    try:
        stream = f"{PREFIX}:{{ledger}}"
        for _ in range(300):  # at most a minute: the drain deletes what it stored
            if not await r.xlen(stream):
                break
            await asyncio.sleep(0.2)
        per_tenant: dict[str, list[int]] = {t: [0, 0] for t, _ in tenants}
        shared: dict[str, int] = {}
        kinds: dict[str, list[int]] = {}
        async for raw in r.scan_iter(match=f"{PREFIX}:*", count=1000):
            name = raw.decode()
            size = await r.memory_usage(name, samples=0) or 0
            tag = name[name.find("{") + 1 : name.find("}")] if "{" in name else ""
            if tag in per_tenant:
                per_tenant[tag][0] += 1
                per_tenant[tag][1] += size
                kind = name.split("}", 1)[1].split(":")[1]  # q (quota window), r (rate minute), inflight, ab, ...
                found = kinds.setdefault(kind, [0, 0])
                found[0] += 1
                found[1] += size
            else:
                shared[name] = size
    finally:
        await r.aclose()
    counts = [k for k, _ in per_tenant.values()]
    sizes = [b for _, b in per_tenant.values()]
    print(f"\nRedis after {calls + 1} calls from each of {len(tenants)} tenants (drained):")
    print(f"  keys per active tenant:  median {statistics.median(counts):.0f}  (min {min(counts)}, max {max(counts)})")
    low, high = min(sizes), max(sizes)
    print(f"  bytes per active tenant: median {statistics.median(sizes):,.0f}  (min {low:,}, max {high:,})")
    print(f"  so 10,000 active tenants: about {statistics.median(sizes) * 10_000 / 1e6:,.1f} MB of per-tenant keys")
    for kind, (count, size) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        n = len(tenants)
        print(f"    :{kind:<10} {count / n:>5.2f} keys, {size / n:>6,.0f} B per tenant ({size / count:,.0f} B per key)")
    for name, size in shared.items():
        print(f"  shared: {name} {size:,} B")


async def ledger_backlog(entries: int = 2_000) -> None:
    """Bytes per call in the usage ledger's stream while nothing drains it (PostgreSQL down): the entries a
    `data_get` call writes (its usage event and audit record, built by the gateway's own classes), appended
    to a scratch stream and weighed with MEMORY USAGE."""
    from tenantry.audit.records import ArgumentDigests, AuditRecord
    from tenantry.metering.ledger import UsageEvent

    digests = ArgumentDigests(["Zm9yLWJlbmNobWFya3Mtb25seS0wMTIzNDU2Nzg5YWI="])
    stream = f"{PREFIX}:{{backlog}}"
    r = aioredis.from_url(REDIS_URL)
    try:
        await r.delete(stream)
        async with r.pipeline(transaction=False) as pipe:
            for _ in range(entries):
                tenant, event_id = uuid.uuid4(), uuid.uuid4()
                now_ms = int(time.time() * 1000)
                event = UsageEvent(event_id, tenant, "data_get", 1, "ok", 1.234, now_ms)
                audit = AuditRecord(
                    tenant_id=tenant,
                    transport="streamable_http",
                    method="tools/call",
                    decision="admitted",
                    outcome="ok",
                    latency_us=1234,
                    request_id=uuid.uuid4().hex,
                    tool="data_get",
                    subject=str(uuid.uuid4()),
                    key_id=str(uuid.uuid4()),
                    status=200,
                    event_id=event_id,
                    args_digest=digests.digest(tenant, {"key": "k"}),
                )
                pipe.execute_command(*event.xadd(stream, audit.document()))
            await pipe.execute()
        size = await r.memory_usage(stream, samples=0) or 0
    finally:
        await r.delete(stream)
        await r.aclose()
    print(f"  ledger backlog (nothing draining): {size / entries:,.0f} B per call (usage event + audit record)")


async def backends(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT usename, count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
        " GROUP BY usename",
        DB_NAME,
    )
    return {row["usename"]: row["n"] for row in rows}


async def connections(port: int, tenants: list[tuple[str, str]], levels: list[int], duration: float) -> None:
    pg = await asyncpg.connect(f"{PG_SERVER.replace('+asyncpg', '')}/postgres")
    print("\nPostgreSQL backends of one replica (pool: DB_POOL_SIZE 20 + DB_MAX_OVERFLOW 10; system 4 + 4):")
    print(f"{'load':>10} {'calls/s':>8} {'app role':>9} {'owner':>6} {'total':>6}")
    try:
        warm = await backends(pg)
        app, owner = warm.get("tenantry_app", 0), warm.get("postgres", 0)
        print(f"{'warm':>10} {'':>8} {app:>9} {owner:>6} {sum(warm.values()):>6}")
        for level in levels:
            stop = time.monotonic() + duration
            done = 0
            peak: dict[str, int] = {}

            async def worker(index: int, stop: float = stop) -> None:
                nonlocal done
                tenant_id, key = tenants[index % len(tenants)]
                conn = RawHttpConnection("127.0.0.1", port, "/mcp", request_headers("legacy", tenant_id, key))
                try:
                    while time.monotonic() < stop:
                        await call(conn, done + 1, "data_get", {"key": "k"})
                        done += 1
                finally:
                    await conn.close()

            async def sample(stop: float = stop) -> None:
                nonlocal peak
                while time.monotonic() < stop:
                    now = await backends(pg)
                    if sum(now.values()) > sum(peak.values()):
                        peak = now
                    await asyncio.sleep(0.02)

            await asyncio.gather(sample(), *(worker(i) for i in range(level)))
            print(
                f"{'c=' + str(level):>10} {done / duration:>8.0f} {peak.get('tenantry_app', 0):>9}"
                f" {peak.get('postgres', 0):>6} {sum(peak.values()):>6}"
            )
    finally:
        await pg.close()


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(args: argparse.Namespace) -> int:
    env = server_env()
    env["TENANTRY_DATABASE_URL"] = f"{PG_SERVER}/{DB_NAME}"
    await forget_keys()
    tenants = await prepare(env, args.tenants)
    with tempfile.TemporaryDirectory() as logs:
        server = start_server(NAME, ["tenantry.app:create_app", "--factory"], env, Path(logs))
        try:
            await asyncio.to_thread(wait_healthy, server)
            await redis_per_tenant(server.port, tenants, args.calls)
            await ledger_backlog()
            await connections(server.port, tenants, args.concurrency, args.duration)
            print(f"\nthe replica's resident memory after all that: {rss_mib(server.pid):.0f} MiB")
        except RuntimeError:
            print(f"the gateway's log ends:\n{server.log_tail(40)}", file=sys.stderr)
            raise
        finally:
            stop_server(server)
            await forget_keys()
            await recreate_database(DB_NAME)
    return 0


async def forget_keys() -> None:
    """Delete every key of this benchmark's prefix (what an earlier, interrupted run left too)."""
    r = aioredis.from_url(REDIS_URL)
    try:
        async for name in r.scan_iter(match=f"{PREFIX}:*", count=1000):
            await r.delete(name)
    finally:
        await r.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", type=int, default=200, help="active tenants for the Redis figure (default 200)")
    p.add_argument("--calls", type=int, default=20, help="data_get calls per tenant after one data_put (default 20)")
    p.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16, 64],
        help="concurrent callers for the connection figure (default 1,16,64)",
    )
    p.add_argument("--duration", type=float, default=4.0, help="seconds per concurrency (default 4)")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
