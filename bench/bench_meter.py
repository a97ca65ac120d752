"""The per-tenant meter: decision latency from Python, and Redis memory per tenant.

    .venv/bin/python bench/bench_meter.py [--decisions 20000] [--tenants 10000] [--db 15]
                                          [--url redis://127.0.0.1:6379] [--concurrency 16]
                                          [--redis-cluster]

Uses its own Redis database (default 15), flushed before and after. Redis must be up.

Part 1 times the hot commands one call at a time (sequential, so one round trip each) across
many tenants: `Meter.admit` (EVALSHA of the Lua script; a tool call against the calls window, and a
resource read against the reads window, `quota="reads"`), `check_rate`, `release`, and the
ledger's `record` (XADD, or XADD + ZREM in one round trip), next to a bare PING for the
round-trip floor. Each runs twice, on redis-py and on the lean client (`tenantry.metering.resp`),
interleaved, and the `cpu` column is this process's CPU per call, i.e. the client's cost; the
ratio of the two is printed. Then admit from `--concurrency` coroutines at once, on each client.

`--redis-cluster` adds a third client to part 1: the cluster client (`tenantry.metering.cluster`) on a
local three-master Redis Cluster started for the run (redis-server from the distribution), with the
ledger's 16 shards, its ratio given against the lean client on the single Redis.

Part 2 admits once for each of N tenants, with quota and a per-minute rate limit on
(two counter keys per tenant), then again with the in-flight cap on too (plus one sorted
set per tenant), and reports `INFO memory` used_memory growth per tenant and MEMORY USAGE
of sample keys.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis

from tenantry.db.engine import Database
from tenantry.metering.cluster import ClusterClient
from tenantry.metering.ledger import Ledger, UsageEvent, ledger_streams
from tenantry.metering.meter import Meter
from tenantry.metering.resp import RespClient
from tenantry.plans import Limits

QUOTA = Limits(calls_per_window=10_000, window_seconds=3600, requests_per_minute=600)
QUOTA_CAP = Limits(calls_per_window=10_000, window_seconds=3600, requests_per_minute=600, max_concurrent=10)
# A plan with both windows: a call and a resource read each cost one EVALSHA of the same script.
READS = Limits(calls_per_window=10_000, reads_per_window=10_000, window_seconds=3600, requests_per_minute=600)
UNMETERED = Limits(calls_per_window=None)
STREAM = "bench-meter:{ledger}"


def pct(sorted_us: list[float], p: float) -> float:
    return sorted_us[min(len(sorted_us) - 1, round(p / 100 * (len(sorted_us) - 1)))]


@dataclass
class Timing:
    us: list[float]  # wall time per call, sorted
    cpu_us: float  # this process's CPU per call (the client's share; Redis runs elsewhere)


async def time_each(n: int, op: Callable[[int], Awaitable[object]]) -> Timing:
    """µs per call, sequential."""
    out: list[float] = []
    cpu = time.process_time()
    for i in range(n):
        t = time.perf_counter_ns()
        await op(i)
        out.append((time.perf_counter_ns() - t) / 1000)
    cpu_us = (time.process_time() - cpu) * 1e6 / n
    out.sort()
    return Timing(out, cpu_us)


async def time_concurrent(n: int, width: int, op: Callable[[int], Awaitable[object]]) -> float:
    """Calls per second with `width` coroutines calling back to back."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await op(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return n / (time.perf_counter() - started)


def row(name: str, t: Timing, ratio: str = "") -> str:
    us = t.us
    return (
        f"  {name:<48} {len(us):>6} {pct(us, 50):>7.1f} {pct(us, 90):>7.1f} {pct(us, 99):>7.1f}"
        f" {statistics.fmean(us):>7.1f} {t.cpu_us:>7.1f} {len(us) / (sum(us) / 1e6):>7.0f} {ratio}"
    )


async def used_memory(r: Redis) -> int:
    info = await r.info("memory")
    return int(info["used_memory"])


async def evalsha_stats(r: Redis) -> tuple[int, int]:
    """(calls, usec) of EVALSHA so far, server-wide (other clients of this Redis add noise)."""
    stats = (await r.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def operations(
    r: Redis,
    resp: RespClient | ClusterClient | None,
    meter: Meter,
    ledger: Ledger,
    tenants: list[uuid.UUID],
    decisions: int,
) -> dict[str, Callable[[int], Awaitable[object]]]:
    """The timed operations, on whichever client `meter` and `ledger` were built with."""
    calls = [f"call-{i}" for i in range(decisions)]
    n = len(tenants)

    async def ping(i: int) -> object:
        return await (resp.execute("PING") if resp is not None else r.ping())

    async def admit(i: int) -> object:
        return await meter.admit(tenants[i % n], calls[i], 1, QUOTA)

    async def admit_read(i: int) -> object:
        return await meter.admit(tenants[i % n], calls[i], 1, READS, quota="reads")

    async def admit_cap(i: int) -> object:
        return await meter.admit(tenants[i % n], calls[i], 1, QUOTA_CAP)

    async def admit_release(i: int) -> object:
        d = await meter.admit(tenants[i % n], calls[i], 1, QUOTA_CAP)
        await meter.release(tenants[i % n], calls[i])
        return d

    async def rate(i: int) -> object:
        return await meter.check_rate(tenants[i % n], QUOTA)

    def event(i: int) -> UsageEvent:
        return UsageEvent(uuid.uuid4(), tenants[i % n], "data_get", 1, "ok", 1.234, meter_now())

    async def record(i: int) -> object:
        await ledger.record(event(i))
        return None

    async def record_release(i: int) -> object:
        await ledger.record(event(i), release=(meter.inflight_key(tenants[i % n]), calls[i]))
        return None

    return {
        "PING (round-trip floor)": ping,
        "admit: quota + rate": admit,
        "admit: a read, reads window + rate": admit_read,
        "admit: quota + rate + in-flight cap": admit_cap,
        "  ... + release (2 round trips)": admit_release,
        "check_rate": rate,
        "ledger record: XADD": record,
        "ledger record: XADD + ZREM (one trip)": record_release,
    }


async def latency(
    r: Redis, url: str, decisions: int, tenants: list[uuid.UUID], width: int, cluster_url: str | None
) -> None:
    resp = RespClient.from_url(url)
    db = cast(Database, None)  # the ledger touches PostgreSQL only when Redis fails, which it must not here
    clients = {
        "redis-py": (Meter(r), Ledger(r, db, stream=STREAM)),
        "resp": (Meter(resp), Ledger(resp, db, stream=STREAM)),
    }
    lean: dict[str, RespClient | ClusterClient] = {"resp": resp}
    if cluster_url is not None:
        lean["cluster"] = cc = ClusterClient.from_url(cluster_url)
        clients["cluster"] = (Meter(cc), Ledger(cc, db, stream=ledger_streams("bench-meter", 16)))
    ops = {name: operations(r, lean.get(name), m, lg, tenants, decisions) for name, (m, lg) in clients.items()}
    for name, (m, _) in clients.items():  # warm the connections and the script cache
        await time_each(2000, ops[name]["PING (round-trip floor)"])
        await m.admit(uuid.uuid4(), "warm", 1, QUOTA)
    timings: dict[tuple[str, str], Timing] = {}
    ev_calls = ev_usec = 0
    for op in ops["redis-py"]:
        for name in clients:
            before = await evalsha_stats(r) if op == "admit: quota + rate" else None
            timings[op, name] = await time_each(decisions, ops[name][op])
            if before is not None:
                calls, usec = (a - b for a, b in zip(await evalsha_stats(r), before, strict=True))
                ev_calls, ev_usec = ev_calls + calls, ev_usec + usec
        await r.delete(STREAM)
    print(f"Part 1: latency, sequential, {decisions:,} per operation across {len(tenants):,} tenants (µs)")
    print("  redis-py = redis.asyncio (a BlockingConnectionPool like the app's); resp = tenantry.metering.resp")
    print(f"  {'operation':<48} {'n':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'mean':>7} {'cpu':>7} {'ops/s':>7}")
    for op in ops["redis-py"]:
        slow, fast = timings[op, "redis-py"], timings[op, "resp"]
        print(row(f"{op} [redis-py]", slow))
        ratio = f"cpu {fast.cpu_us / slow.cpu_us:.2f}x, p50 {pct(fast.us, 50) / pct(slow.us, 50):.2f}x of redis-py"
        print(row(f"{op} [resp]", fast, ratio))
        if "cluster" in clients:
            rc = timings[op, "cluster"]
            ratio = f"cpu {rc.cpu_us / fast.cpu_us:.2f}x, p50 {pct(rc.us, 50) / pct(fast.us, 50):.2f}x of resp"
            print(row(f"{op} [cluster]", rc, ratio))
    unmetered = Meter(r)
    t = await time_each(decisions, lambda i: unmetered.admit(tenants[i % len(tenants)], "c", 1, UNMETERED))
    print(row("admit: unmetered (no Redis)", t))
    if ev_calls:
        print(f"  server side (INFO commandstats): {ev_usec / ev_calls:.1f} µs per EVALSHA of the meter script")
    print(f"\n  admit: quota + rate, {width} coroutines at once (calls/s; resp pipelines them on one connection)")
    for name in clients:
        rate = await time_concurrent(decisions, width, ops[name]["admit: quota + rate"])
        print(f"  {name:<10} {rate:>9.0f}")
    for client in lean.values():
        await client.aclose()


async def memory(r: Redis, meter: Meter, tenants: int) -> None:
    print(f"\nPart 2: Redis memory, one admit for each of {tenants:,} tenants")
    head = f"{'limits on':<26} {'keys':>7} {'keys/tenant':>11} {'B/tenant':>9} {'B/key':>7}"
    print(f"  {head}   MEMORY USAGE (sample mean)")
    for name, limits in (("quota + rate", QUOTA), ("quota + rate + cap", QUOTA_CAP)):
        await r.flushdb()
        ids = [uuid.uuid4() for _ in range(tenants)]
        before_keys = await r.dbsize()
        before = await used_memory(r)
        # One clock reading for the whole pass: the sampled key names must be the ones written,
        # even if a minute (a rate window) rolls over during the pass.
        now = meter_now()
        for t in ids:
            d = await meter.admit(t, "c0", 1, limits, now_ms=now)
            assert d.admitted, d
        after = await used_memory(r)
        keys = await r.dbsize() - before_keys
        per_tenant = (after - before) / tenants
        sample = ids[:200]
        kinds = {
            "quota": [meter.quota_keys(t, limits.window_ms, now)[0] for t in sample],
            "rate": [meter.rate_keys(t, now)[0] for t in sample],
        }
        if limits.max_concurrent is not None:
            kinds["in-flight"] = [meter.inflight_key(t) for t in sample]
        usage = []
        for kind, names in kinds.items():
            sizes = [s for s in [await r.memory_usage(k) for k in names] if s is not None]
            usage.append(f"{kind} {statistics.fmean(sizes):.0f} B")
        print(
            f"  {name:<26} {keys:>7,} {keys / tenants:>11.1f} {per_tenant:>9.0f} {(after - before) / keys:>7.0f}"
            f"   {', '.join(usage)}"
        )
    sample_key = meter.quota_keys(uuid.UUID(int=0), QUOTA.window_ms, meter_now())[0]
    print(f"  (key names like {sample_key!r}, {len(sample_key)} bytes)")


def meter_now() -> int:
    return time.time_ns() // 1_000_000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--db", type=int, default=15)
    parser.add_argument("--url", default="redis://127.0.0.1:6379")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--redis-cluster", action="store_true", help="also time the cluster client on a local three-master cluster"
    )
    args = parser.parse_args()
    cluster = None
    if args.redis_cluster:
        from tenantry.dev.redis_cluster import start_local_cluster

        cluster = start_local_cluster(3)

    url = f"{args.url.rstrip('/')}/{args.db}"
    r = Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=64, timeout=5))
    try:
        await r.flushdb()
        server = await r.info("server")
        print(f"Redis {server['redis_version']} at {args.url}/{args.db}\n")
        meter = Meter(r)
        tenants = [uuid.uuid4() for _ in range(args.tenants)]
        started = time.perf_counter()
        await latency(r, url, args.decisions, tenants, args.concurrency, cluster.url if cluster else None)
        await memory(r, meter, args.tenants)
        print(f"\n(total {time.perf_counter() - started:.1f} s; failures={meter.failures})")
    finally:
        await r.flushdb()
        await r.aclose()
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
