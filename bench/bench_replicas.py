"""Throughput and CPU per call through the balancer with 1, 2 and 3 gateway replicas.

    .venv/bin/python bench/bench_replicas.py [--duration 5] [--warmup 1] [--concurrency 16] [--rounds 1]

Three gateway processes (uvicorn, one worker each, as bench_gateway.py serves one) on one database and
one Redis (one key prefix: one meter and one ledger stream, drained by all), and `tenantry balance` in
front of the first 1, 2 and 3 of them. The reference, in the same run, is the first replica driven
directly, without the balancer. The load is bench_gateway.py's: C keep-alive connections calling
`data_get` back to back (metered, ledgered, an RLS transaction each); with round robin per connection,
C connections spread evenly over the replicas.

On a 2-core machine the point is not linear scaling (one replica already has most of a core, the load
generator, the balancer and PostgreSQL the rest), but that nothing serializes across replicas: CPU per
call (all replicas together, the balancer, PostgreSQL) stays flat as replicas are added, and throughput
does not fall. PostgreSQL and Redis must be running; the database `tenantry_bench_replicas` is recreated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_gateway as bg  # noqa: E402

bg.DB_NAME = "tenantry_bench_replicas"  # its own database: other benchmarks recreate theirs


@dataclass
class Cpu:
    replicas: float
    balancer: float
    postgres: float
    client: float
    machine: tuple[int, int, int] | None

    @classmethod
    def take(cls, replica_pids: list[int], balancer_pid: int | None) -> Cpu:
        replicas = sum(bg._proc_cpu(pid) or 0.0 for pid in replica_pids)
        balancer = (bg._proc_cpu(balancer_pid) or 0.0) if balancer_pid is not None else 0.0
        postgres = sum(bg._postgres_cpu().values())
        return cls(replicas, balancer, postgres, time.process_time(), bg._machine_ticks())


@dataclass
class Row:
    name: str
    result: bg.RunResult
    start: Cpu
    end: Cpu

    def per_call_us(self, field: str) -> float:
        calls = self.result.ok + self.result.errors
        spent = getattr(self.end, field) - getattr(self.start, field)
        return spent / calls * 1e6 if calls else float("nan")

    @property
    def steal(self) -> float | None:
        a, b = self.start.machine, self.end.machine
        if a is None or b is None or b[0] == a[0]:
            return None
        return (b[2] - a[2]) / (b[0] - a[0])


def start_replica(index: int, env: dict[str, str], logdir: Path) -> bg.ServerProcess:
    port = bg.free_port()
    cmd = [
        sys.executable,
        *("-m", "uvicorn", "tenantry.app:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port)),
        *("--loop", "uvloop", "--http", "httptools", "--lifespan", "on", "--no-access-log", "--log-level", "warning"),
    ]
    log = logdir / f"replica-{index}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=bg.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return bg.ServerProcess(f"replica-{index}", port, proc, log)


def start_balancer(backends: list[bg.ServerProcess], logdir: Path) -> bg.ServerProcess:
    port = bg.free_port()
    args = [arg for b in backends for arg in ("--backend", f"127.0.0.1:{b.port}")]
    log = logdir / f"balancer-{len(backends)}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tenantry.cli", "balance", "--listen", f"127.0.0.1:{port}", *args],
            cwd=bg.ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return bg.ServerProcess(f"balancer-{len(backends)}", port, proc, log)


async def drive(
    port: int,
    headers: dict[str, str],
    concurrency: int,
    warmup: float,
    duration: float,
    pids: list[int],
    lb: int | None,
) -> tuple[bg.RunResult, Cpu, Cpu]:
    """bench_gateway's load (C keep-alive connections, data_get back to back), with CPU taken over every
    replica and the balancer."""
    result = bg.RunResult("", concurrency, duration)
    connections = [bg.RawHttpConnection("127.0.0.1", port, "/mcp", headers) for _ in range(concurrency)]
    prefix, _, suffix = bg.call_body("legacy", 0, "data_get", {"key": bg.KEY}).partition(b'"id":0')
    perf = time.perf_counter
    measure_from = perf() + warmup
    measure_until = measure_from + duration
    taken: list[Cpu] = []

    async def worker(index: int, conn: bg.RawHttpConnection) -> None:
        request_id = index * 10_000_000
        while perf() < measure_until:
            request_id += 1
            body = b'%s"id":%d%s' % (prefix, request_id, suffix)
            await bg.timed_call(conn, body, request_id, result, measure_from, measure_until)

    async def take_at(when: float) -> None:
        await asyncio.sleep(max(0.0, when - perf()))
        taken.append(Cpu.take(pids, lb))

    try:
        await asyncio.gather(
            *(worker(i, c) for i, c in enumerate(connections)), take_at(measure_from), take_at(measure_until)
        )
    finally:
        for conn in connections:
            await conn.close()
    return result, taken[0], taken[1]


def print_rows(rows: list[Row]) -> None:
    print(
        f"{'setup':<22}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'replicas µs/call':>18}{'balancer µs/call':>18}"
        f"{'pg µs/call':>12}{'client µs/call':>16}{'steal':>7}{'errors':>8}"
    )
    for row in rows:
        r = row.result
        steal = f"{row.steal:.0%}" if row.steal is not None else "-"
        print(
            f"{row.name:<22}{r.rps:>8.0f}{r.percentile_ms(50):>8.2f}{r.percentile_ms(99):>8.2f}"
            f"{row.per_call_us('replicas'):>18.0f}{row.per_call_us('balancer'):>18.0f}"
            f"{row.per_call_us('postgres'):>12.0f}{row.per_call_us('client'):>16.0f}{steal:>7}{r.errors:>8}"
        )
        for sample in r.error_samples:
            print(f"    error: {sample}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per setup (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each (default 1)")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections (default 16)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every setup this many times (default 1)")
    parser.add_argument("--pool", type=int, default=8, help="database connections per replica (default 8)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"cores: {os.cpu_count()}  python: {platform.python_version()}  concurrency: {args.concurrency}"
        f"  duration: {args.duration:g}s (+{args.warmup:g}s warm-up)  pool: {args.pool} per replica"
    )
    # A bounded pool per replica: three replicas at the default 20 + 10 (plus the owner pools) would take
    # most of a 100-connection PostgreSQL that other work shares (README "Replicas": size the pool per
    # replica, or put PgBouncer in front).
    env = {
        **bg.server_env(),
        "TENANTRY_REDIS_KEY_PREFIX": "bench-replicas",
        "TENANTRY_DB_POOL_SIZE": str(args.pool),
        "TENANTRY_DB_MAX_OVERFLOW": "0",
    }
    processes: list[bg.ServerProcess] = []
    with asyncio.Runner(loop_factory=bg.new_loop) as runner:
        tenant_id, api_key = runner.run(bg.prepare_database(env))
        headers = bg.request_headers("legacy", tenant_id, api_key)
        logdir = Path(tempfile.mkdtemp(prefix="tenantry-bench-replicas-"))
        rows: list[Row] = []
        try:
            replicas = [start_replica(i, env, logdir) for i in range(3)]
            processes += replicas
            for replica in replicas:
                bg.wait_healthy(replica, timeout=60)
            balancers = [start_balancer(replicas[:k], logdir) for k in (1, 2, 3)]
            processes += balancers
            for balancer in balancers:
                bg.wait_healthy(balancer, timeout=60)
            first = bg.Target("replica-0", replicas[0].port, headers, replicas[0].pid)
            runner.run(bg.call_once(first, "legacy", "data_put", {"key": bg.KEY, "value": bg.VALUE}))
            setups: list[tuple[str, int, list[int], int | None]] = [
                ("1 replica, direct", replicas[0].port, [replicas[0].pid], None)
            ]
            for k, balancer in zip((1, 2, 3), balancers, strict=True):
                name = f"{k} replica{'s' if k > 1 else ''}, balancer"
                setups.append((name, balancer.port, [r.pid for r in replicas[:k]], balancer.pid))
            for _ in range(args.rounds):
                for name, port, pids, lb in setups:
                    result, start, end = runner.run(
                        drive(port, headers, args.concurrency, args.warmup, args.duration, pids, lb)
                    )
                    rows.append(Row(name, result, start, end))
            print()
            print_rows(rows)
        finally:
            for process in reversed(processes):
                bg.stop_server(process)
    return 1 if any(row.result.errors for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
