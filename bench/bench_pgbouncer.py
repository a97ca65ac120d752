"""What PgBouncer in transaction pooling mode costs, and what the statement settings behind it cost.

    .venv/bin/python bench/bench_pgbouncer.py [--transactions 2000] [--workers 4]
                                              [--concurrency 1,16] [--duration 5]

In one run, on the database `tenantry_bench_pgbouncer` (dropped, recreated and migrated), with a
PgBouncer 1.18 (the distribution's; `tests/pgbouncer/server.py` starts it on a free port):

1. **Transactions**: `--transactions` tenant transactions (bind the tenant, read one row under RLS,
   commit; the shape of a built-in tool call) one after another, through `Database.tenant()`:
   - `direct`: straight to PostgreSQL with asyncpg's and SQLAlchemy's statement caches (the
     reference: how Tenantry runs without a pooler);
   - `direct, pooler settings`: straight to PostgreSQL with `db_transaction_pooler` on (unnamed
     statements, no cache): what the setting alone costs;
   - `pgbouncer`: through PgBouncer with the setting on (how Tenantry runs behind it);
   - `pgbouncer, unique names`: through PgBouncer with SQLAlchemy's documented recipe instead
     (no cache, a unique name per statement).
   For each: p50 and p99 per transaction, CPU per transaction of this process, of PostgreSQL's
   backends and of PgBouncer, and the prepared statements left on PgBouncer's server connections
   afterwards (counted on each of them at once).
2. **Gateway**: `tools/call data_get` through the whole gateway (`bench_gateway.py`'s servers and
   load generator), once straight to PostgreSQL and once through PgBouncer, at each concurrency:
   calls/s, p50, p99, and CPU per call of the gateway, PostgreSQL's backends and PgBouncer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from sqlalchemy import text  # noqa: E402
from tests.pgbouncer.server import run_pgbouncer, through  # noqa: E402

import bench_gateway as bg  # noqa: E402
from tenantry.db.engine import Database  # noqa: E402
from tenantry.settings import Settings  # noqa: E402

bg.DB_NAME = "tenantry_bench_pgbouncer"  # its own database: other benchmarks may run meanwhile
SERVERS = 4  # PgBouncer's server connections per role


def _unique_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


class UniqueNames(Database):
    """SQLAlchemy's PgBouncer recipe: no statement cache, a unique name per prepared statement."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.model_copy(update={"db_transaction_pooler": False}))
        args = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
        from sqlalchemy.ext.asyncio import create_async_engine

        for name in ("app_engine", "system_engine"):
            old = getattr(self, name)
            url = old.url.render_as_string(hide_password=False)
            setattr(
                self,
                name,
                create_async_engine(url, connect_args={**args, "prepared_statement_name_func": _unique_name}),
            )


async def transactions(db: Database, tenant: uuid.UUID, n: int, workers: int) -> list[float]:
    """`n` transactions by `workers` concurrent loops on `db`; each one's duration."""
    read = text("SELECT value FROM tenant_data WHERE key = :k")
    took: list[float] = []

    async def loop(count: int) -> None:
        for _ in range(count):
            t0 = time.perf_counter()
            async with db.tenant(tenant) as conn:
                (await conn.execute(read, {"k": "k"})).scalar_one()
            took.append(time.perf_counter() - t0)

    await asyncio.gather(*(loop(n // workers) for _ in range(workers)))
    return took


async def left_behind(settings: Settings) -> int:
    """Prepared statements on PgBouncer's app-role server connections: as many transactions held open at
    once as it has server connections, so each count comes from another one."""
    probe = Database(settings.model_copy(update={"db_pool_size": SERVERS, "db_max_overflow": 0}))
    counts: list[int] = []
    barrier = asyncio.Barrier(SERVERS)

    async def count() -> None:
        async with probe.unbound() as conn:
            counts.append(int((await conn.execute(text("SELECT count(*) FROM pg_prepared_statements"))).scalar_one()))
            await barrier.wait()

    try:
        await asyncio.gather(*(count() for _ in range(SERVERS)))
    finally:
        await probe.dispose()
    return sum(counts)


def ms(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * len(ordered)))] * 1000


def bouncer_for(direct: Settings, servers: int = SERVERS) -> Any:
    return run_pgbouncer(direct.database_url, ["postgres", direct.db_app_role], pool_size=servers)


async def part_transactions(direct: Settings, tenant: uuid.UUID, n: int, workers: int) -> None:
    print(f"1. {n} tenant transactions by {workers} concurrent loops (bind, read one row under RLS, commit)\n")
    print(
        f"{'':<25} {'p50 ms':>7} {'p99 ms':>7} {'client µs':>9} {'pg µs':>6} {'bouncer µs':>10} {'statements left':>16}"
    )
    configs: list[tuple[str, bool, Callable[[Settings], Database]]] = [
        ("direct", False, Database),
        ("direct, pooler settings", False, lambda s: Database(s.model_copy(update={"db_transaction_pooler": True}))),
        ("pgbouncer", True, Database),
        ("pgbouncer, unique names", True, UniqueNames),
    ]
    for name, pooled, make in configs:
        with bouncer_for(direct) as bouncer:
            settings = through(direct, bouncer) if pooled else direct
            db = make(settings)
            try:
                await transactions(db, tenant, 20 * workers, workers)  # warm-up: connections, type codecs
                cpu0, pg0 = time.process_time(), sum(bg._postgres_cpu().values())
                b0 = bg._proc_cpu(bouncer.pid) or 0.0
                took = await transactions(db, tenant, n, workers)
                client = (time.process_time() - cpu0) / len(took) * 1e6
                pg = (sum(bg._postgres_cpu().values()) - pg0) / len(took) * 1e6
                bounced = f"{((bg._proc_cpu(bouncer.pid) or 0.0) - b0) / len(took) * 1e6:.0f}" if pooled else "-"
            finally:
                await db.dispose()
            left = str(await left_behind(settings)) if pooled else "-"
        print(
            f"{name:<25} {ms(took, 50):>7.2f} {ms(took, 99):>7.2f} {client:>9.0f} {pg:>6.0f} {bounced:>10} {left:>16}"
        )


def part_gateway(direct: Settings, env: dict[str, str], args: argparse.Namespace) -> None:
    print(
        "\n2. tools/call data_get through the gateway (one uvicorn worker), straight to PostgreSQL and through"
        " PgBouncer\n"
    )
    with asyncio.Runner(loop_factory=bg.new_loop) as runner, bouncer_for(direct) as bouncer:
        tenant_id, api_key = runner.run(bg.prepare_database(env))
        pooled = through(direct, bouncer)
        pooled_env = {
            **env,
            "TENANTRY_DATABASE_URL": pooled.database_url,
            "TENANTRY_DATABASE_PASSWORD": pooled.database_password or "",
            "TENANTRY_DB_APP_PASSWORD": pooled.db_app_password or "",
            "TENANTRY_DB_TRANSACTION_POOLER": "true",
            "TENANTRY_DATABASE_DIRECT_URL": direct.database_url,
        }
        logdir = Path(tempfile.mkdtemp(prefix="tenantry-bench-pgbouncer-"))
        servers = [
            bg.start_server("direct", ["tenantry.app:create_app", "--factory"], env, logdir),
            bg.start_server("pgbouncer", ["tenantry.app:create_app", "--factory"], pooled_env, logdir),
        ]
        try:
            for server in servers:
                bg.wait_healthy(server)
            headers = bg.request_headers("legacy", tenant_id, api_key)
            targets = [bg.Target(s.name, s.port, headers, s.pid) for s in servers]
            for target in targets:
                runner.run(bg.call_once(target, "legacy", "data_put", {"key": bg.KEY, "value": bg.VALUE}))
            print(
                f"{'':<10} {'c':>3} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'srv µs':>7} {'pg µs':>6}"
                f" {'bouncer µs':>10} {'errors':>6}"
            )
            for conc in args.concurrency:
                for target in targets:
                    b0 = bg._proc_cpu(bouncer.pid) or 0.0
                    run = runner.run(bg.drive(target, "legacy", conc, args.warmup, args.duration, "raw"))
                    b1 = bg._proc_cpu(bouncer.pid) or 0.0
                    bouncer_us = run.per_request_us(b1 - b0) if target.name == "pgbouncer" else None
                    print(
                        f"{target.name:<10} {conc:>3} {run.rps:>8.0f} {run.percentile_ms(50):>7.2f}"
                        f" {run.percentile_ms(99):>7.2f} {bg.fmt_us(run.per_request_us(run.server_cpu)):>7}"
                        f" {bg.fmt_us(run.per_request_us(run.postgres_cpu)):>6} {bg.fmt_us(bouncer_us):>10}"
                        f" {run.errors:>6}"
                    )
        finally:
            for server in servers:
                bg.stop_server(server)


async def seed(direct: Settings) -> uuid.UUID:
    db = Database(direct)
    tenant = uuid.uuid4()
    try:
        async with db.system() as conn:
            await conn.execute(text("INSERT INTO tenants (id, name) VALUES (:t, 'bench-pgbouncer')"), {"t": tenant})
        async with db.tenant(tenant) as conn:
            await conn.execute(
                text("INSERT INTO tenant_data (tenant_id, key, value, size_bytes) VALUES (:t, 'k', '1', 1)"),
                {"t": tenant},
            )
    finally:
        await db.dispose()
    return tenant


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--transactions", type=int, default=2000, help="transactions per configuration (default 2000)")
    p.add_argument("--workers", type=int, default=4, help="concurrent transaction loops (default 4)")
    p.add_argument("--concurrency", default="1,16", help="gateway load generator concurrencies (default 1,16)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per gateway run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per gateway run (default 1)")
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    env = bg.server_env()
    direct = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{k.removeprefix("TENANTRY_").lower(): v for k, v in env.items() if k.startswith("TENANTRY_")},
    )
    asyncio.run(bg.prepare_database(env))
    tenant = asyncio.run(seed(direct))
    asyncio.run(part_transactions(direct, tenant, args.transactions, args.workers))
    part_gateway(direct, env, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
