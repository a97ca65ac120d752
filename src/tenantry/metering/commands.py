"""The Redis commands of every tool call, behind one interface with two clients.

The meter (admit, release, usage), the ledger (record) and the drain (read,
acknowledge, recover) issue their commands through `RedisCommands`: one
command, several in one round trip, or a Lua script by its SHA. Each of their
methods has one code path, whichever client carries it:

- `RespClient` (`resp.py`), the lean client the app uses: its CPU per command
  is a fifth of redis-py's (bench/bench_meter.py);
- `RedisPyCommands`, the same calls over redis-py, with replies as Redis sent
  them (no response callbacks): the way back (`TENANTRY_REDIS_LEAN_CLIENT=false`)
  and the reference the lean client is measured and tested against.

Both raise redis-py's exception classes, so "Redis is down" reads the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from tenantry.metering.resp import Arg, Command, LuaScript, RespClient

__all__ = ["RedisCommands", "RedisPyCommands", "as_commands"]


class RedisCommands(Protocol):
    async def execute(self, *args: Arg) -> Any:
        """One command's reply; an error reply is raised."""
        ...

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one round trip (not a transaction); the first error reply is raised."""
        ...

    async def evalsha(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run `script` by its SHA, loading it first if Redis does not know it."""
        ...


class RedisPyCommands:
    """`RedisCommands` over a redis-py client's connection pool, each call bounded by `timeout`."""

    def __init__(self, redis: Redis, *, timeout: float | None = None) -> None:
        # A client of our own on the same pool, without response callbacks: replies stay raw.
        self._redis = Redis(connection_pool=redis.connection_pool)
        self._redis.response_callbacks = {}
        self._timeout = timeout

    async def execute(self, *args: Arg) -> Any:
        async with asyncio.timeout(self._timeout):
            return await self._redis.execute_command(*args)  # type: ignore[no-untyped-call]

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return list(await pipe.execute())

    async def evalsha(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.execute(*command)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script.text)
            return await self.execute(*command)


def as_commands(client: Redis | RespClient | RedisCommands, *, timeout: float | None = None) -> RedisCommands:
    """`client` as `RedisCommands`: a redis-py client is wrapped (bounded by `timeout`), the rest used as is."""
    if isinstance(client, Redis):
        return RedisPyCommands(client, timeout=timeout)
    return client
