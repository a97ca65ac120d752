"""The per-tenant meter: decision latency from Python, and Redis memory per tenant.

    .venv/bin/python bench/bench_meter.py [--decisions 20000] [--tenants 10000] [--db 15] [--url redis://127.0.0.1:6379]

Uses its own Redis database (default 15), flushed before and after. Redis must be up.

Part 1 times `Meter.admit` one call at a time (sequential, so it is one round trip each:
EVALSHA of the Lua script) across many tenants, next to a bare PING on the same client
for the round-trip floor, plus `check_rate` and the unmetered (enterprise) path.

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

from redis.asyncio import Redis

from tenantry.metering.meter import Limits, Meter

QUOTA = Limits(calls_per_window=10_000, window_seconds=3600, requests_per_minute=600)
QUOTA_CAP = Limits(calls_per_window=10_000, window_seconds=3600, requests_per_minute=600, max_concurrent=10)
UNMETERED = Limits(calls_per_window=None)


def pct(sorted_us: list[float], p: float) -> float:
    return sorted_us[min(len(sorted_us) - 1, round(p / 100 * (len(sorted_us) - 1)))]


async def time_each(n: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    """µs per call, sequential."""
    out: list[float] = []
    for i in range(n):
        t = time.perf_counter_ns()
        await op(i)
        out.append((time.perf_counter_ns() - t) / 1000)
    out.sort()
    return out


def row(name: str, us: list[float]) -> str:
    return (
        f"  {name:<34} {len(us):>7} {pct(us, 50):>8.1f} {pct(us, 90):>8.1f} {pct(us, 99):>8.1f}"
        f" {statistics.fmean(us):>8.1f} {len(us) / (sum(us) / 1e6):>9.0f}"
    )


async def used_memory(r: Redis) -> int:
    info = await r.info("memory")
    return int(info["used_memory"])


async def evalsha_stats(r: Redis) -> tuple[int, int]:
    """(calls, usec) of EVALSHA so far, server-wide (other clients of this Redis add noise)."""
    stats = (await r.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def latency(r: Redis, meter: Meter, decisions: int, tenants: list[uuid.UUID]) -> None:
    calls = [f"call-{i}" for i in range(decisions)]
    n = len(tenants)

    async def admit(i: int) -> object:
        return await meter.admit(tenants[i % n], calls[i], 1, QUOTA)

    async def admit_cap(i: int) -> object:
        d = await meter.admit(tenants[i % n], calls[i], 1, QUOTA_CAP)
        await meter.release(tenants[i % n], calls[i])
        return d

    async def admit_cap_only(i: int) -> object:
        return await meter.admit(tenants[i % n], calls[i], 1, QUOTA_CAP)

    async def rate(i: int) -> object:
        return await meter.check_rate(tenants[i % n], QUOTA)

    async def unmetered(i: int) -> object:
        return await meter.admit(tenants[i % n], calls[i], 1, UNMETERED)

    async def ping(i: int) -> object:
        return await r.ping()

    await time_each(2000, ping)  # warm the connection and the script cache
    await meter.admit(uuid.uuid4(), "warm", 1, QUOTA)
    before = await evalsha_stats(r)
    admits = await time_each(decisions, admit)
    ev_calls, ev_usec = (a - b for a, b in zip(await evalsha_stats(r), before, strict=True))
    results = [
        ("PING (round-trip floor)", await time_each(decisions, ping)),
        ("admit: quota + rate", admits),
        ("admit: quota + rate + in-flight cap", await time_each(decisions // 2, admit_cap_only)),
        ("  ... + release (2 round trips)", await time_each(decisions // 2, admit_cap)),
        ("check_rate", await time_each(decisions, rate)),
        ("admit: unmetered (no Redis)", await time_each(decisions, unmetered)),
    ]
    print(f"Part 1: decision latency, sequential, {decisions:,} decisions across {n:,} tenants (µs)")
    print(f"  {'operation':<34} {'n':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8} {'ops/s':>9}")
    for name, us in results:
        print(row(name, us))
    if ev_calls:
        print(f"  server side (INFO commandstats): {ev_usec / ev_calls:.1f} µs per EVALSHA of the meter script")


async def memory(r: Redis, meter: Meter, tenants: int) -> None:
    print(f"\nPart 2: Redis memory, one admit for each of {tenants:,} tenants")
    head = f"{'limits on':<26} {'keys':>7} {'keys/tenant':>11} {'B/tenant':>9} {'B/key':>7}"
    print(f"  {head}   MEMORY USAGE (sample mean)")
    for name, limits in (("quota + rate", QUOTA), ("quota + rate + cap", QUOTA_CAP)):
        await r.flushdb()
        ids = [uuid.uuid4() for _ in range(tenants)]
        before_keys = await r.dbsize()
        before = await used_memory(r)
        for t in ids:
            d = await meter.admit(t, "c0", 1, limits)
            assert d.admitted, d
        after = await used_memory(r)
        keys = await r.dbsize() - before_keys
        per_tenant = (after - before) / tenants
        sample = ids[:200]
        now = meter_now()
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
    args = parser.parse_args()

    r = Redis.from_url(args.url, db=args.db)
    try:
        await r.flushdb()
        server = await r.info("server")
        print(f"Redis {server['redis_version']} at {args.url}/{args.db}\n")
        meter = Meter(r)
        tenants = [uuid.uuid4() for _ in range(args.tenants)]
        started = time.perf_counter()
        await latency(r, meter, args.decisions, tenants)
        await memory(r, meter, args.tenants)
        print(f"\n(total {time.perf_counter() - started:.1f} s; failures={meter.failures})")
    finally:
        await r.flushdb()
        await r.aclose()


if __name__ == "__main__":
    asyncio.run(main())
