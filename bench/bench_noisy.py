"""A noisy neighbour: how much a tenant hammering past its quota slows another tenant's calls.

    .venv/bin/python bench/bench_noisy.py [--rounds 3] [--duration 5] [--victim 4] [--noisy 12]

One gateway (uvicorn, one worker, as bench_gateway.py serves it). The victim (the bench tenant, limits
that never refuse) calls data_get with --victim workers, alone, then while a free-plan tenant whose quota
is spent (1 call per hour) floods the same gateway with --noisy workers. Rounds alternate; the table shows
the victim's p50 and p99 in each phase and their ratio (noisy / alone), and what the noisy tenant got.
PostgreSQL and Redis must be running; the database `tenantry_bench` is recreated.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_gateway as bg  # noqa: E402


async def noisy_tenant(env: dict[str, str]) -> tuple[str, str]:
    """A free-plan tenant whose quota is one call per hour: after the first, every call is refused."""
    from tenantry import tenants as tenant_service
    from tenantry.auth import api_keys
    from tenantry.db.engine import Database
    from tenantry.settings import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{k.removeprefix("TENANTRY_").lower(): v for k, v in env.items() if k.startswith("TENANTRY_")},
    )
    db = Database(settings)
    try:
        async with db.system() as conn:
            tenant = await tenant_service.create_tenant(conn, "noisy", "free")
            await tenant_service.update_tenant(conn, tenant.id, limits={"calls_per_window": 1})
            _, secret = await api_keys.create_key(conn, tenant.id, "noisy")
    finally:
        await db.dispose()
    return str(tenant.id), secret


async def run(args: argparse.Namespace) -> int:
    env = bg.server_env()
    victim_id, victim_key = await bg.prepare_database(env)
    noisy_id, noisy_key = await noisy_tenant(env)
    logdir = Path(tempfile.mkdtemp(prefix="tenantry-noisy-"))
    server = bg.start_server("gateway", ["tenantry.app:create_app", "--factory"], env, logdir)
    try:
        bg.wait_healthy(server)
        headers = bg.request_headers("legacy", victim_id, victim_key)
        victim = bg.Target("victim", server.port, headers, server.proc.pid)
        noisy = bg.Target("noisy", server.port, bg.request_headers("legacy", noisy_id, noisy_key), server.proc.pid)
        await bg.call_once(victim, "legacy", "data_put", {"key": bg.KEY, "value": bg.VALUE})
        alone: list[bg.RunResult] = []
        crowded: list[bg.RunResult] = []
        flood: list[bg.RunResult] = []
        for _ in range(args.rounds):
            alone.append(await bg.drive(victim, "legacy", args.victim, 1.0, args.duration, "raw"))
            both = await asyncio.gather(
                bg.drive(victim, "legacy", args.victim, 1.0, args.duration, "raw"),
                bg.drive(noisy, "legacy", args.noisy, 1.0, args.duration, "raw"),
            )
            crowded.append(both[0])
            flood.append(both[1])
    finally:
        bg.stop_server(server)
    p50a = statistics.median(r.percentile_ms(50) for r in alone)
    p99a = statistics.median(r.percentile_ms(99) for r in alone)
    p50c = statistics.median(r.percentile_ms(50) for r in crowded)
    p99c = statistics.median(r.percentile_ms(99) for r in crowded)
    print(f"victim: {args.victim} workers; noisy: {args.noisy} workers, quota spent; {args.rounds} rounds (medians)")
    print(f"{'phase':<16}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'alone':<16}{statistics.median(r.rps for r in alone):>8.0f}{p50a:>9.2f}{p99a:>9.2f}")
    print(f"{'with the noisy':<16}{statistics.median(r.rps for r in crowded):>8.0f}{p50c:>9.2f}{p99c:>9.2f}")
    print(f"victim p99 with / without the noisy tenant: {p99c / p99a:.2f}x (p50 {p50c / p50a:.2f}x)")
    refused = statistics.median((r.errors + r.ok) / r.duration for r in flood)
    print(f"the noisy tenant sent {refused:.0f} req/s, all refused (quota, then rate)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--victim", type=int, default=4, help="victim workers (default 4)")
    p.add_argument("--noisy", type=int, default=12, help="noisy workers (default 12)")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
