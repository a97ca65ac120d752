"""The usage ledger: every completed tool call becomes exactly one durable usage event.

Design
------
Hot path (no database round trip): when a call completes, its event is
appended to the Redis stream `<prefix>:{ledger}` *before* the result is
returned to the client, in the same pipelined round trip that frees the
call's in-flight slot in the meter. So a gateway crash at any moment loses
no event of a call whose result the client received: either the event is
in the stream, or the client got no result. That XADD (+ ZREM) goes over the
meter's lean RESP client (`resp.py`) when there is one, in one write: through
redis-py the pipeline cost ~280-330 µs of client CPU per call, through the
lean client ~60-80 µs. The drain below stays on redis-py: its blocking read
must not sit on the connection the per-call commands are pipelined on.

Drain (lifespan task, any number of replicas): a consumer group reads the
stream, inserts each batch into `usage_events` with `ON CONFLICT DO NOTHING`
on (tenant_id, event_id), commits, and only then acknowledges and deletes
the entries. After a batch that was not full it lingers (200 ms) so that
under load one transaction carries many events: the per-drain cost (a read,
a transaction, an acknowledgement) is about 2 ms of CPU, the per-event cost
about 0.1 ms. A crash between commit and acknowledgement leaves the entries
pending; they are re-read (by this consumer, or claimed by another replica
after `claim_idle_ms`) and the insert is a no-op for them. The event id is
minted when the call is admitted, so every later step (ledger, aggregation,
Stripe `identifier`) is idempotent on it.

Each batch is written as the application role under RLS, binding each
tenant in turn inside one transaction, so the ledger obeys the same
isolation as the tools.

When Redis cannot take the event, it is written straight to PostgreSQL
(slower, still exactly once); only if both fail is the call reported as
failed (`ledger_unavailable`) rather than returned unrecorded.

Durability of the stream across a *Redis* restart needs Redis persistence
(AOF); docker-compose.yml turns it on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import Database, bind_tenant
from tenantry.metering.resp import Batch, RespClient, ZremQueue

log = logging.getLogger(__name__)

GROUP = "ledger"


def stream_key(prefix: str = "tenantry") -> str:
    """The ledger stream's key; `{ledger}` is its Redis Cluster hash tag."""
    return f"{prefix}:{{ledger}}"


_REDIS_DOWN = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class UsageEvent:
    event_id: uuid.UUID
    tenant_id: uuid.UUID
    tool: str
    units: int
    outcome: str  # "ok" or the error code that ended the call
    latency_ms: float
    occurred_at_ms: int
    metered: bool = True  # False when the meter was bypassed (Redis down, plan fails open)

    def fields(self) -> dict[str, str]:
        return {
            "e": str(self.event_id),
            "t": str(self.tenant_id),
            "tool": self.tool,
            "u": str(self.units),
            "o": self.outcome,
            "l": f"{self.latency_ms:.3f}",
            "at": str(self.occurred_at_ms),
            "m": "1" if self.metered else "0",
        }

    def xadd(self, stream: str) -> tuple[str, ...]:
        """The XADD that appends this event to `stream` (for the lean client)."""
        return (
            "XADD", stream, "*",
            "e", str(self.event_id),
            "t", str(self.tenant_id),
            "tool", self.tool,
            "u", str(self.units),
            "o", self.outcome,
            "l", f"{self.latency_ms:.3f}",
            "at", str(self.occurred_at_ms),
            "m", "1" if self.metered else "0",
        )  # fmt: skip

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> UsageEvent:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            event_id=uuid.UUID(f["e"]),
            tenant_id=uuid.UUID(f["t"]),
            tool=f["tool"],
            units=int(f["u"]),
            outcome=f["o"],
            latency_ms=float(f["l"]),
            occurred_at_ms=int(f["at"]),
            metered=f.get("m", "1") == "1",
        )


class LedgerUnavailable(Exception):
    """Neither Redis nor PostgreSQL took the event."""


# One statement per tenant and batch, whatever its size: the columns travel as arrays, so the
# statement text (and its prepared plan) never changes. A multi-row VALUES would be compiled anew
# for every batch size and cost several times more CPU per event.
_INSERT_BATCH = text(
    """
    INSERT INTO usage_events (tenant_id, event_id, tool, units, outcome, latency_ms, occurred_at, metered)
    SELECT CAST(:tenant_id AS uuid), e.*
    FROM unnest(CAST(:event_ids AS uuid[]), CAST(:tools AS text[]), CAST(:units AS integer[]),
                CAST(:outcomes AS text[]), CAST(:latencies AS double precision[]),
                CAST(:occurred AS timestamptz[]), CAST(:metered AS boolean[])) AS e
    ON CONFLICT (tenant_id, event_id) DO NOTHING
    """
)


async def insert_events(db: Database, events: Iterable[UsageEvent]) -> int:
    """Insert idempotently as the app role, binding each tenant in turn; return how many were new."""
    by_tenant: dict[uuid.UUID, list[UsageEvent]] = defaultdict(list)
    for event in events:
        by_tenant[event.tenant_id].append(event)
    inserted = 0
    async with db.unbound() as conn:
        for tenant_id, batch in by_tenant.items():
            await bind_tenant(conn, tenant_id)
            result = await conn.execute(
                _INSERT_BATCH,
                {
                    "tenant_id": str(tenant_id),
                    "event_ids": [e.event_id for e in batch],
                    "tools": [e.tool for e in batch],
                    "units": [e.units for e in batch],
                    "outcomes": [e.outcome for e in batch],
                    "latencies": [e.latency_ms for e in batch],
                    "occurred": [datetime.fromtimestamp(e.occurred_at_ms / 1000, tz=UTC) for e in batch],
                    "metered": [e.metered for e in batch],
                },
            )
            inserted += result.rowcount
    return inserted


class Ledger:
    def __init__(
        self, redis: Redis, db: Database, *, stream: str = stream_key(), resp: RespClient | None = None
    ) -> None:
        """With `resp`, `record` goes through that lean client instead of `redis`."""
        self._redis = redis
        self._resp = resp
        self._db = db
        self.stream = stream
        self.fallbacks = 0  # events written straight to PostgreSQL because Redis was unreachable

    async def record(self, event: UsageEvent, *, also: Callable[[ZremQueue], None] | None = None) -> None:
        """Make `event` durable before the call's result is returned.

        `also(pipe)` may queue more commands (the meter's release) on the same round trip.
        """
        try:
            if self._resp is not None:
                if also is None:
                    await self._resp.execute(*event.xadd(self.stream))
                else:
                    batch = Batch([event.xadd(self.stream)])
                    also(batch)
                    await self._resp.execute_many(batch.commands)
                return
            if also is None:  # one command: a pipeline would only add client-side work
                await self._redis.xadd(self.stream, event.fields())  # type: ignore[arg-type]
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.stream, event.fields())  # type: ignore[arg-type]
                also(pipe)
                await pipe.execute()
            return
        except _REDIS_DOWN as exc:
            log.warning("ledger: Redis unavailable (%s); writing event %s to PostgreSQL", exc, event.event_id)
        self.fallbacks += 1
        try:
            await insert_events(self._db, [event])
        except (DBAPIError, OSError) as exc:
            raise LedgerUnavailable(str(exc)) from exc


class LedgerDrainer:
    """Moves events from the stream into `usage_events`; one per replica, as a lifespan task."""

    def __init__(
        self,
        redis: Redis,
        db: Database,
        *,
        batch_size: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        linger_ms: int = 200,
        consumer: str | None = None,
        stream: str = stream_key(),
        resp: RespClient | None = None,
    ) -> None:
        """`linger_ms`: after a batch that was not full, wait this long for more events, so under load
        the drain moves them in batches (one transaction for many calls) instead of one by one.

        `resp`: a lean client of the drainer's own (its blocking read would hold up every command
        queued behind it on a shared connection), for the steady state's read and acknowledgement;
        recovery (own pending, XAUTOCLAIM) stays on redis-py."""
        self.stream = stream
        self._redis = redis
        self._resp = resp
        self._db = db
        self._batch = batch_size
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._linger_s = linger_ms / 1000
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stopping = asyncio.Event()
        self.drained = 0
        self.last_error: str | None = None

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def drain_once(self, *, block: bool = False, recover: bool = True) -> int:
        """Move one batch. With `recover`, this consumer's own pending entries first, then abandoned
        ones, then new ones; without it (the steady state), new ones only: one read."""
        entries = await self._read(block=block, recover=recover)
        if not entries:
            return 0
        ids = [entry_id for entry_id, _ in entries]
        events = [UsageEvent.from_fields(fields) for _, fields in entries if fields]
        if events:
            await insert_events(self._db, events)
        if self._resp is not None:
            await self._resp.execute_many([("XACK", self.stream, GROUP, *ids), ("XDEL", self.stream, *ids)])
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xack(self.stream, GROUP, *ids)
                pipe.xdel(self.stream, *ids)
                await pipe.execute()
        self.drained += len(events)
        return len(ids)

    async def _read(self, *, block: bool, recover: bool) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if not recover:
            return await self._read_new(block=block)
        # A batch this consumer read but did not acknowledge (the insert failed, or we were cancelled).
        entries = _entries(await self._redis.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=self._batch))
        if entries:
            return entries
        # Entries a dead consumer read and never acknowledged.
        claimed = await self._redis.xautoclaim(
            self.stream, GROUP, self.consumer, min_idle_time=self._claim_idle_ms, count=self._batch
        )
        entries = [(entry_id, fields) for entry_id, fields in claimed[1] if fields is not None]
        if entries:
            return entries
        return await self._read_new(block=block)

    async def _read_new(self, *, block: bool) -> list[tuple[bytes, dict[bytes, bytes]]]:
        block_ms = self._block_ms if block else None
        if self._resp is not None:
            command: list[str | int] = ["XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self._batch]
            if block_ms is not None:
                command += ["BLOCK", block_ms]
            reply = await self._resp.execute(*command, "STREAMS", self.stream, ">")
            return [(entry_id, _pairs(fields)) for _, entries in reply or [] for entry_id, fields in entries]
        return _entries(
            await self._redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=self._batch, block=block_ms)
        )

    async def run(self) -> None:
        """Drain until `stop()`; then drain what is left (bounded) and return."""
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                await self.ensure_group()
                # Recover (own pending, then abandoned entries) at start, after an error, and every
                # half claim interval; otherwise each round is one blocking read of new entries.
                next_recovery = 0.0
                while not self._stopping.is_set():
                    recover = loop.time() >= next_recovery
                    if recover:
                        next_recovery = loop.time() + self._claim_idle_ms / 2000
                    moved = await self.drain_once(block=True, recover=recover)
                    self.last_error = None
                    backoff = 0.1
                    if 0 < moved < self._batch:
                        await self._pause(self._linger_s)
            except (*_REDIS_DOWN, DBAPIError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("ledger drain failed (%s); retrying in %.1fs", self.last_error, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, 5.0)
        await self.flush()

    async def flush(self, within_s: float = 10.0) -> None:
        """Drain everything in the stream now (at shutdown, and in tests), for at most `within_s`."""
        deadline = time.monotonic() + within_s
        try:
            await self.ensure_group()
            while time.monotonic() < deadline:
                if await self.drain_once(block=False) == 0:
                    return
        except (*_REDIS_DOWN, DBAPIError) as exc:
            log.warning("ledger: final drain incomplete: %s", exc)

    def stop(self) -> None:
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if `stop()` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


async def oldest_undrained_age_ms(redis: Redis, stream: str, now_ms: int | None = None) -> int:
    """Age of the oldest event not yet in PostgreSQL (pending or undelivered); 0 when there is none.

    Drained entries are deleted from the stream, so its first entry is the oldest undrained one.
    """
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    first = await redis.xrange(stream, count=1)
    if not first:
        return 0
    entry_id = first[0][0]
    raw = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return max(0, now_ms - int(raw.split("-")[0]))


def _entries(response: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    if not response:
        return []
    if isinstance(response, dict):  # RESP3
        return [entry for entries in response.values() for entry in (entries[0] if entries else [])]
    return [entry for _, entries in response for entry in entries]


def _pairs(flat: list[bytes] | None) -> dict[bytes, bytes]:
    """A stream entry's fields as RESP2 sends them (name, value, name, value...)."""
    if not flat:
        return {}
    items = iter(flat)
    return dict(zip(items, items, strict=True))
