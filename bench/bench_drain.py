"""The ledger drain: CPU per usage event moved from the Redis stream into PostgreSQL.

    .venv/bin/python bench/bench_drain.py [--events 6000] [--batches 1,50,500] [--tenants 1,100]

Recreates the `tenantry_bench` database (as `bench_gateway.py` does) with `max(--tenants)`
tenants; PostgreSQL and Redis must be up. For each batch size and number of tenants the events
of a batch are spread over, it records `--events` events on the stream, drains them batch by
batch, and reports this process's CPU (the gateway's share: the read, the insert, the
acknowledgement) and PostgreSQL's (the backends of `tenantry_bench`) per event.

Each configuration runs twice, interleaved: entries as the gateway writes them (tenant + one JSON
document, passed to `tenantry_record_usage` unparsed, one statement per batch) and, as the
reference, the eight-field entries gateways wrote before migration 0006 (parsed in Python into
events, one statement per tenant).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_gateway as bg  # noqa: E402
from tenantry import tenants as tenant_service  # noqa: E402
from tenantry.db.engine import Database  # noqa: E402
from tenantry.metering.drain import LedgerDrainer  # noqa: E402
from tenantry.metering.ledger import UsageEvent  # noqa: E402
from tenantry.metering.resp import RespClient  # noqa: E402
from tenantry.settings import Settings  # noqa: E402

STREAM = "bench-drain:{ledger}"


def legacy_fields(e: UsageEvent) -> dict[str, str]:
    return {
        "e": str(e.event_id),
        "t": str(e.tenant_id),
        "tool": e.tool,
        "u": str(e.units),
        "o": e.outcome,
        "l": f"{e.latency_ms:.3f}",
        "at": str(e.occurred_at_ms),
        "m": "1",
    }


async def run(
    r: Redis, drainer: LedgerDrainer, tenants: list[uuid.UUID], events: int, batch: int, legacy: bool
) -> tuple[float, float]:
    """(client µs, PostgreSQL µs) per event."""
    client = pg = 0.0
    moved = 0
    while moved < events:
        async with r.pipeline(transaction=False) as pipe:
            for n in range(batch):
                e = UsageEvent(uuid.uuid4(), tenants[n % len(tenants)], "data_get", 1, "ok", 1.234, bg_now())
                pipe.xadd(STREAM, legacy_fields(e) if legacy else e.fields())  # type: ignore[arg-type]
            await pipe.execute()
        pg0, c0 = sum(bg._postgres_cpu().values()), time.process_time()
        got = await drainer.drain_once(recover=False)
        client += time.process_time() - c0
        pg += sum(bg._postgres_cpu().values()) - pg0
        if got != batch:
            raise RuntimeError(f"drained {got} of {batch}")
        moved += batch
    return client / moved * 1e6, pg / moved * 1e6


def bg_now() -> int:
    return time.time_ns() // 1_000_000


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=6000, help="events per configuration (default 6000)")
    p.add_argument("--batches", default="1,50,500", help="batch sizes (default 1,50,500)")
    p.add_argument("--tenants", default="1,100", help="tenants a batch's events are spread over (default 1,100)")
    args = p.parse_args()
    batches = [int(v) for v in args.batches.split(",")]
    spreads = [int(v) for v in args.tenants.split(",")]
    env = bg.server_env()
    os.environ.update({k: v for k, v in env.items() if k.startswith("TENANTRY_")})
    await bg.prepare_database(env)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    db = Database(settings)
    async with db.system() as conn:
        tenants = [(await tenant_service.create_tenant(conn, f"drain-{n}", "pro")).id for n in range(max(spreads))]
    r = Redis.from_url(settings.redis_url)
    lean = RespClient.from_url(settings.redis_url, timeout=5.0)
    try:
        await r.delete(STREAM)
        drainer = LedgerDrainer(lean, db, stream=STREAM, batch_size=max(batches))
        await drainer.ensure_group()
        await run(r, drainer, tenants[:1], 200, 50, False)  # warm-up: connections, prepared statements
        await run(r, drainer, tenants[:1], 200, 50, True)
        print("µs per event (this process = the gateway's share; pg = PostgreSQL backends, 10 ms ticks)\n")
        head = f"{'batch':>6} {'tenants':>8} {'document cpu':>13} {'pg':>6} {'8-field cpu':>12} {'pg':>6}"
        print(f"{head} {'cpu ratio':>10}")
        for batch in batches:
            for spread in spreads:
                n = max(args.events // batch, 1) * batch if batch > 1 else min(args.events, 1000)
                doc = await run(r, drainer, tenants[:spread], n, batch, False)
                old = await run(r, drainer, tenants[:spread], n, batch, True)
                print(
                    f"{batch:>6} {spread:>8} {doc[0]:>13.1f} {doc[1]:>6.1f} {old[0]:>12.1f} {old[1]:>6.1f}"
                    f" {doc[0] / old[0]:>9.2f}x"
                )
    finally:
        await r.delete(STREAM)
        await r.aclose()
        await lean.aclose()
        await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
