"""tools/call latency with 10 active tenants vs 10,000 active tenants, on one gateway, in one run.

    .venv/bin/python bench/bench_tenants.py [--tenants 10000] [--few 10] [--concurrency 16]
                                            [--duration 8] [--rounds 3] [--profile DIR]

What it does:
1. recreates the database `tenantry_bench_tenants`, migrates it, and creates `--tenants` tenants on
   `pro` (metered, limits raised so that nothing is refused), each with an API key and one stored
   value. They are written in bulk, as the owner, with the same SQL and key functions the API uses
   (`tenants.create_tenant`'s table, `api_keys.generate_key` / `hash_key`, the data store's INSERT):
   10,000 one at a time through the REST API would take minutes and measure nothing of interest;
2. starts the gateway (uvicorn, one worker, uvloop, httptools, as bench_gateway.py does);
3. touches every tenant once (a `data_get` each), so what is measured is the steady state of a
   gateway whose tenants all call, not the first call of each;
4. drives `tools/call data_get` with `--concurrency` keep-alive connections, each request on behalf of
   the next tenant of a shuffled cycle over the active set: the first `--few` tenants, then all of
   them, alternating for `--rounds` rounds (so drift of this shared machine hits both alike);
5. prints, per active set, req/s, p50, p99 and CPU per call of the gateway process and of the
   PostgreSQL backends of the bench database (medians over the rounds), then the ratios
   many/few. The goal of issue #18: p99 with 10,000 active tenants within 1.1x of p99 with 10.

What grows with the tenant count is printed too: the number of Prometheus series `/metrics` exports
after the few and after the many (it must not grow), and the Redis keys the gateway holds per
active tenant. `--profile DIR` adds one py-spy run of each set (DIR/{few,many}.folded; rank them with
bench/profile_summary.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gateway as bg  # the load generator, CPU accounting and server handling

DB_NAME = "tenantry_bench_tenants"
OPS_KEY = "bench-ops-key-0123456789abcdef01"
# bench_gateway counts the PostgreSQL backends of its database by name: these are this database's.
bg.DB_NAME = DB_NAME


@dataclass(frozen=True)
class BenchTenant:
    id: str
    key: str


def server_env(overrides: list[str]) -> dict[str, str]:
    env = bg.server_env()
    env["TENANTRY_DATABASE_URL"] = f"{bg.PG_SERVER}/{DB_NAME}"
    env["TENANTRY_OPS_API_KEY"] = OPS_KEY
    for item in overrides:
        name, _, value = item.partition("=")
        env[f"TENANTRY_{name.upper()}"] = value
    return env


async def prepare(env: dict[str, str], count: int) -> list[BenchTenant]:
    """Recreate and migrate the bench database; `count` tenants, each with a key and the bench value."""
    from sqlalchemy import insert, text

    from tenantry.auth.api_keys import KEY_PREFIX, generate_key, hash_key
    from tenantry.db.engine import Database
    from tenantry.db.migrate import migrate
    from tenantry.db.models import api_keys, tenants
    from tenantry.settings import Settings

    await bg.recreate_database(DB_NAME)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{k.removeprefix("TENANTRY_").lower(): v for k, v in env.items() if k.startswith("TENANTRY_")},
    )
    await migrate(settings.database_url, app_role=settings.db_app_role)
    # Metered (every call goes through the Lua meter and the ledger) but never refused.
    limits = {"calls_per_window": 10**9, "requests_per_minute": 10**9, "max_concurrent": 10_000}
    value = json.dumps(bg.VALUE, separators=(",", ":"))
    made: list[BenchTenant] = []
    tenant_rows: list[dict[str, Any]] = []
    key_rows: list[dict[str, Any]] = []
    data_rows: list[dict[str, Any]] = []
    for i in range(count):
        tenant_id, secret = uuid.uuid4(), generate_key()
        made.append(BenchTenant(str(tenant_id), secret))
        tenant_rows.append({"id": tenant_id, "name": f"bench-{i}", "plan": "pro", "status": "active", "limits": limits})
        key_rows.append(
            {
                "tenant_id": tenant_id,
                "id": uuid.uuid4(),
                "name": "bench",
                "prefix": secret[: len(KEY_PREFIX) + 6],
                "key_hash": hash_key(secret),
                "roles": [],
            }
        )
        data_rows.append({"tenant_id": tenant_id, "key": bg.KEY, "value": value, "size": len(value.encode())})
    put = text(
        "INSERT INTO tenant_data (tenant_id, key, value, size_bytes)"
        " VALUES (:tenant_id, :key, CAST(:value AS jsonb), :size)"
    )
    db = Database(settings)
    try:
        async with db.system() as conn:
            for start in range(0, count, 1000):
                await conn.execute(insert(tenants), tenant_rows[start : start + 1000])
                await conn.execute(insert(api_keys), key_rows[start : start + 1000])
                await conn.execute(put, data_rows[start : start + 1000])
            await conn.execute(text("ANALYZE"))
    finally:
        await db.dispose()
    return made


class TenantConnection(bg.RawHttpConnection):
    """A keep-alive connection whose every request may speak for another tenant (its own headers)."""

    async def post_as(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        self._head = head
        return await self.post(body)


def request_head(port: int, tenant: BenchTenant) -> bytes:
    headers = bg.request_headers("legacy", tenant.id, tenant.key)
    lines = ["POST /mcp HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


async def drive(
    name: str, port: int, pid: int, heads: list[bytes], concurrency: int, warmup: float, duration: float
) -> bg.RunResult:
    """`concurrency` workers POSTing back to back; request i speaks for heads[order[i % len]]."""
    order = list(range(len(heads)))
    random.shuffle(order)
    cursor = 0
    result = bg.RunResult(name, concurrency, duration)
    prefix, _, suffix = bg.call_body("legacy", 0, "data_get", {"key": bg.KEY}).partition(b'"id":0')
    perf = time.perf_counter
    measure_from = perf() + warmup
    measure_until = measure_from + duration
    snapshot: list[bg.CpuSnapshot] = []
    connections = [TenantConnection("127.0.0.1", port, "/mcp", {}) for _ in range(concurrency)]

    async def worker(index: int, conn: TenantConnection) -> None:
        nonlocal cursor
        request_id = index * 10_000_000
        while perf() < measure_until:
            request_id += 1
            head = heads[order[cursor % len(order)]]
            cursor += 1
            body = b'%s"id":%d%s' % (prefix, request_id, suffix)
            conn._head = head
            await bg.timed_call(conn, body, request_id, result, measure_from, measure_until)

    async def snap_at(when: float) -> None:
        await asyncio.sleep(max(0.0, when - perf()))
        snapshot.append(bg.CpuSnapshot.take(pid))

    try:
        await asyncio.gather(
            *(worker(i, c) for i, c in enumerate(connections)), snap_at(measure_from), snap_at(measure_until)
        )
    finally:
        for conn in connections:
            await conn.close()
    result.server_cpu, result.postgres_cpu, result.client_cpu = snapshot[1].since(snapshot[0])
    result.steal = snapshot[1].steal_since(snapshot[0])
    return result


async def touch_all(port: int, heads: list[bytes], concurrency: int) -> list[str]:
    """One data_get per tenant; what was wrong with each wrong answer."""
    body = bg.call_body("legacy", 1, "data_get", {"key": bg.KEY})
    queue = list(heads)
    wrong: list[str] = []

    async def worker() -> None:
        conn = TenantConnection("127.0.0.1", port, "/mcp", {})
        try:
            while queue:
                status, payload = await conn.post_as(queue.pop(), body)
                problem = bg.check_response(status, payload, 1)
                if problem is not None:
                    wrong.append(problem)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return wrong


async def metric_series(port: int) -> int:
    """How many series (sample lines) /metrics exports now."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {OPS_KEY}\r\nConnection: close\r\n"
    writer.write(f"{head}\r\n".encode())
    raw = await reader.read()
    writer.close()
    body = raw.partition(b"\r\n\r\n")[2].decode(errors="replace")
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


async def redis_keys(prefix: str, *, delete: bool = False) -> int:
    """How many keys the gateway holds under `prefix` (`delete`: and remove them, before a run)."""
    from redis.asyncio import Redis

    client = Redis.from_url(bg.REDIS_URL)
    try:
        found = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if delete and found:
            await client.delete(*found)
        return len(found)
    finally:
        await client.aclose()


def median_of(runs: list[bg.RunResult]) -> dict[str, float]:
    def med(values: list[float | None]) -> float:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else float("nan")

    return {
        "rps": med([r.rps for r in runs]),
        "p50": med([r.percentile_ms(50) for r in runs]),
        "p99": med([r.percentile_ms(99) for r in runs]),
        "srv": med([r.per_request_us(r.server_cpu) for r in runs]),
        "pg": med([r.per_request_us(r.postgres_cpu) for r in runs]),
        "steal": med([r.steal for r in runs]),
        "errors": sum(r.errors for r in runs),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--tenants", type=int, default=10_000, help="tenants created, all active in the many set")
    p.add_argument("--few", type=int, default=10, help="tenants active in the few set (the reference)")
    p.add_argument("--concurrency", type=int, default=16, help="keep-alive connections driving the gateway")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run (default 8)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="few/many alternations; medians are reported")
    p.add_argument("--profile", type=Path, metavar="DIR", help="also profile each set with py-spy into DIR")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a gateway setting for this run (TENANTRY_NAME), e.g. audit_enabled=false; repeatable",
    )
    args = p.parse_args(argv)
    if any("=" not in item for item in args.set):
        p.error("--set takes NAME=VALUE")
    if not 1 <= args.few < args.tenants or args.concurrency < 1 or args.rounds < 1 or args.duration <= 0:
        p.error("need 1 <= --few < --tenants, --concurrency >= 1, --rounds >= 1, --duration > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"cores: {os.cpu_count()}  tenants: {args.tenants}  few: {args.few}  concurrency: {args.concurrency}"
        f"  duration: {args.duration:g}s (+{args.warmup:g}s warm-up) x {args.rounds} rounds"
        + (f"  settings: {' '.join(args.set)}" if args.set else "")
    )
    env = server_env(args.set)
    with asyncio.Runner(loop_factory=bg.new_loop) as runner:
        started = time.perf_counter()
        tenants = runner.run(prepare(env, args.tenants))
        print(f"created {len(tenants)} tenants with keys and values in {time.perf_counter() - started:.1f}s")
        runner.run(redis_keys("bench-tenants", delete=True))  # a previous run's keys would be counted
        server = bg.start_server("tenants", ["tenantry.app:create_app", "--factory"], env, Path(tempfile.mkdtemp()))
        prefix = "bench-tenants"  # bg.start_server gives each server `bench-<name>` as its Redis key prefix
        failed = True
        try:
            bg.wait_healthy(server)
            heads = [request_head(server.port, t) for t in tenants]
            sets = {"few": heads[: args.few], "many": heads}
            started = time.perf_counter()
            first = touch_all(server.port, heads, args.concurrency)
            if args.profile is not None:  # the first call of each tenant: the start of it
                args.profile.mkdir(parents=True, exist_ok=True)
                with bg.py_spy(server.pid, args.profile / "first", args.duration):
                    wrong = runner.run(first)
            else:
                wrong = runner.run(first)
            elapsed = time.perf_counter() - started
            print(
                f"first call of every tenant: {elapsed:.1f}s, {len(tenants) / elapsed:.0f} calls/s"
                f" ({len(wrong)} wrong answers{': ' + wrong[0] if wrong else ''})"
            )
            series: dict[str, int] = {}
            runs: dict[str, list[bg.RunResult]] = {"few": [], "many": []}
            for _ in range(args.rounds):
                for name, active in sets.items():
                    run = drive(name, server.port, server.pid, active, args.concurrency, args.warmup, args.duration)
                    runs[name].append(runner.run(run))
                    series[name] = runner.run(metric_series(server.port))
            keys = runner.run(redis_keys(prefix))
            few, many = median_of(runs["few"]), median_of(runs["many"])
            print()
            print(
                f"{'active':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'srv µs/call':>11} {'pg µs/call':>10}"
                f" {'steal':>5} {'errors':>6} {'series':>6}"
            )
            for name, row, count in (("few", few, args.few), ("many", many, args.tenants)):
                print(
                    f"{count:>7} {row['rps']:>7.0f} {row['p50']:>7.2f} {row['p99']:>7.2f} {row['srv']:>11.0f}"
                    f" {row['pg']:>10.0f} {100 * row['steal']:>4.0f}% {row['errors']:>6.0f} {series[name]:>6}"
                )
            print(
                f"\nmany/few: p50 {many['p50'] / few['p50']:.2f}x  p99 {many['p99'] / few['p99']:.2f}x (goal <= 1.10x)"
                f"  req/s {many['rps'] / few['rps']:.2f}x  srv CPU/call {many['srv'] / few['srv']:.2f}x"
                f"  pg CPU/call {many['pg'] / few['pg']:.2f}x"
            )
            print(
                f"per round p99 ms few: {', '.join(f'{r.percentile_ms(99):.2f}' for r in runs['few'])}"
                f"  many: {', '.join(f'{r.percentile_ms(99):.2f}' for r in runs['many'])}"
            )
            print(f"Redis keys under {prefix}: {keys} ({keys / args.tenants:.2f} per tenant)")
            for name in runs:
                for r in runs[name]:
                    for sample in r.error_samples:
                        print(f"  {name} error: {sample}")
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                for name, active in sets.items():
                    with bg.py_spy(server.pid, args.profile / name, args.duration):
                        runner.run(drive(name, server.port, server.pid, active, args.concurrency, 0.5, args.duration))
                print(f"profiles: {args.profile}/{{first,few,many}}.folded")
            failed = bool(wrong) or any(r.errors for group in runs.values() for r in group)
        finally:
            bg.stop_server(server)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
