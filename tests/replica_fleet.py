"""Gateway replicas as real processes (`tenantry serve`) on one database and one Redis, behind the
balancer `tenantry balance` ships, each on a free loopback port, all stopped at the end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tenantry.settings import Settings
from tests.conftest import ADMIN_KEY, JWT_SECRET, OPS, OPS_KEY, TenantHandle, eventually, free_port

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class Replica:
    port: int
    proc: subprocess.Popen[bytes]
    id: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Fleet:
    replicas: list[Replica]
    balancer: subprocess.Popen[bytes]
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ids(self) -> set[str]:
        return {r.id for r in self.replicas}

    def kill(self, replica: Replica) -> None:
        """SIGKILL: no shutdown, no drain, sockets closed by the kernel."""
        replica.proc.send_signal(signal.SIGKILL)
        replica.proc.wait(timeout=10)


def replica_env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "TENANTRY_ENVIRONMENT": "test",
        "TENANTRY_DATABASE_URL": settings.database_url,
        "TENANTRY_REDIS_URL": settings.redis_url,
        "TENANTRY_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "TENANTRY_ADMIN_API_KEY": ADMIN_KEY,
        "TENANTRY_OPS_API_KEY": OPS_KEY,
        "TENANTRY_JWT_SECRET": JWT_SECRET,
        "TENANTRY_PORT": str(port),
        "TENANTRY_REPLICA_URL": f"http://127.0.0.1:{port}",
        "TENANTRY_DB_POOL_SIZE": "4",
        "TENANTRY_DB_MAX_OVERFLOW": "4",
        "TENANTRY_UPSTREAM_ALLOW_LOOPBACK": "true",
        # Take over a killed replica's unstored usage events quickly (the default is 30 s).
        "TENANTRY_LEDGER_CLAIM_IDLE_SECONDS": "0.2",
        **extra,
    }


def start_replica(settings: Settings, logs: Path, **extra: str) -> Replica:
    port = free_port()
    with open(logs / f"replica-{port}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tenantry.cli", "serve", "--log-level", "warning"],
            env=replica_env(settings, port, **extra),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return Replica(port, proc)


async def wait_until_serving(replica: Replica) -> None:
    async with httpx.AsyncClient(base_url=replica.url, timeout=2) as http:

        async def up() -> str:
            if replica.proc.poll() is not None:
                raise AssertionError(f"replica on port {replica.port} exited with {replica.proc.returncode}")
            try:
                answer = await http.get("/health", headers=OPS)
            except httpx.TransportError:
                return ""
            return str(answer.json()["process"]["replica"])

        replica.id = await eventually(up, within=60, what=f"the replica on port {replica.port}")


@contextmanager
def fleet(settings: Settings, logs: Path, count: int = 3, **extra: str) -> Iterator[Fleet]:
    """`count` replicas and a balancer in front; every process is stopped at the end."""
    replicas: list[Replica] = []
    balancer: subprocess.Popen[bytes] | None = None
    try:
        replicas = [start_replica(settings, logs, **extra) for _ in range(count)]
        port = free_port()
        backends = [arg for r in replicas for arg in ("--backend", f"127.0.0.1:{r.port}")]
        with open(logs / "balancer.log", "wb") as log:
            balancer = subprocess.Popen(
                [sys.executable, "-m", "tenantry.cli", "balance", "--listen", f"127.0.0.1:{port}", *backends],
                env={**os.environ, "TENANTRY_ENVIRONMENT": "test"},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

        async def ready() -> None:
            await asyncio.gather(*(wait_until_serving(r) for r in replicas))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:

                async def balancing() -> bool:
                    if balancer is not None and balancer.poll() is not None:
                        raise AssertionError(f"the balancer exited with {balancer.returncode}")
                    try:
                        return (await http.get("/health")).status_code in (200, 503)
                    except httpx.TransportError:
                        return False

                await eventually(balancing, within=30, what="the balancer")

        asyncio.run(ready())
        yield Fleet(replicas, balancer, port, replica_env(settings, 0, **extra))
    finally:
        for proc in [*(r.proc for r in replicas), *([balancer] if balancer else [])]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*(r.proc for r in replicas), *([balancer] if balancer else [])]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def mcp(http: httpx.AsyncClient, headers: dict[str, str], method: str, params: Any = None) -> httpx.Response:
    """One JSON-RPC request to `/mcp` (stateless unless `headers` name a session)."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    return await http.post("/mcp", headers={**headers, **ACCEPT}, json=body)


async def call(http: httpx.AsyncClient, tenant: TenantHandle, tool: str, arguments: dict[str, Any]) -> httpx.Response:
    return await mcp(http, tenant.headers, "tools/call", {"name": tool, "arguments": arguments})
