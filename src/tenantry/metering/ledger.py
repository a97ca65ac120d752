"""The usage ledger: every completed tool call becomes exactly one durable usage event.

Design
------
Hot path (no database round trip): when a call completes, its event is
appended to its tenant's ledger stream *before* the result is returned
to the client, in the same pipelined round trip that frees the call's
in-flight slot in the meter (on a Redis Cluster, one write to each of the
two masters, at once). So a gateway crash at any moment loses no event
of a call whose result the client received: either the event is
in the stream, or the client got no result. That XADD (+ ZREM) goes over the
meter's client (`commands.py`), the lean RESP client in the app, in one
write: through redis-py the pipeline cost ~280-330 µs of client CPU per call,
through the lean client ~60-80 µs. The drain reads over a connection of its
own: its blocking read must not sit on the connection the per-call commands
are pipelined on.

An entry is the tenant, `t`, and one or two JSON documents the drain hands
to PostgreSQL unparsed (parsing eight fields per event in Python cost more
than the insert, bench/bench_drain.py): `v`, the usage event
(`UsageEvent.document()`), and `a`, the call's audit record
(`audit/records.py`). An admitted call's audit record rides in its usage
event's entry, so auditing it costs no round trip of its own; a record of
something that used no quota (a refused call, a request that is not a call,
an admin change) is an entry of its own (`append`).

The drain (`drain.py`, a lifespan task on every replica) moves the stream
into `usage_events`, once per event, and keeps what can never be stored aside.

When Redis cannot take the event, it is written straight to PostgreSQL
(slower, still exactly once); only if both fail is the call reported as
failed (`ledger_unavailable`) rather than returned unrecorded.

Durability of the stream across a *Redis* restart needs Redis persistence
(AOF); docker-compose.yml turns it on.

Shards: the ledger is `TENANTRY_LEDGER_SHARDS` streams (`ledger_streams`), and a tenant's entries
all go to one of them, picked by a hash of its id: on a Redis Cluster each stream is one key, so
one stream would be one hot key on one master taking every call's XADD and the whole drain. One
tenant's entries stay in one stream, in order (its audit chain is written in that order). The first
shard is `<prefix>:{ledger}`, the one stream of gateways before shards, so what they left drains; the
others' hash tags are picked so their slots are evenly spaced, and a cluster whose masters own equal
slot ranges (as `redis-cli --cluster create` makes) gets an even share of them.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import Database
from tenantry.errors import Unavailable
from tenantry.metering.commands import RedisCommands, as_commands
from tenantry.metering.meter import Meter
from tenantry.metering.slots import SLOTS, key_slot
from tenantry.metering.storing import insert_documents as insert_documents
from tenantry.metering.storing import unstorable as unstorable

log = logging.getLogger(__name__)

MAX_SHARDS = 256


def stream_key(prefix: str = "tenantry") -> str:
    """The first ledger stream's key (the only one before shards); `{ledger}` is its Redis Cluster hash tag."""
    return f"{prefix}:{{ledger}}"


def ledger_streams(prefix: str = "tenantry", shards: int = 1) -> tuple[str, ...]:
    """The keys of the ledger's `shards` streams: `stream_key(prefix)`, then one per hash tag of `shard_tags`."""
    return tuple(f"{prefix}:{{{tag}}}" for tag in shard_tags(shards))


@functools.cache
def shard_tags(shards: int) -> tuple[str, ...]:
    """`ledger`, then for each other shard i the first tag `ledger-<i>.<j>` whose slot falls in the i-th of
    `shards` equal slices of the slot space, counted from the slot of `ledger`: evenly spaced slots."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"the ledger has 1 to {MAX_SHARDS} shards, not {shards}")
    first = key_slot("ledger")
    width = SLOTS // shards
    tags = ["ledger"]
    for i in range(1, shards):
        start = (first + i * SLOTS // shards) % SLOTS
        j = 0
        while (key_slot(f"ledger-{i}.{j}") - start) % SLOTS >= width:
            j += 1
        tags.append(f"ledger-{i}.{j}")
    return tuple(tags)


def shard_of(tenant_id: uuid.UUID, streams: Sequence[str]) -> str:
    """The stream of `tenant_id`'s entries: always the same one, so they stay in order."""
    if len(streams) == 1:
        return streams[0]
    return streams[zlib.crc32(tenant_id.bytes) % len(streams)]


REDIS_ERRORS = (RedisError, OSError)


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


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

    def document(self) -> str:
        """The event without its tenant, as one JSON object: what `tenantry_record_usage` reads."""
        return _ENCODE(
            {
                "e": str(self.event_id),
                "tool": self.tool,
                "u": self.units,
                "o": self.outcome,
                "l": round(self.latency_ms, 3),
                "at": self.occurred_at_ms,
                "m": self.metered,
            }
        )

    def fields(self) -> dict[str, str]:
        """The stream entry: the tenant, and the rest as one document (the drain passes it on unparsed)."""
        return {"t": str(self.tenant_id), "v": self.document()}

    def xadd(self, stream: str, audit: str | None = None) -> tuple[str, ...]:
        """The XADD that appends this event (and the call's audit record) to `stream`."""
        if audit is None:
            return ("XADD", stream, "*", "t", str(self.tenant_id), "v", self.document())
        return ("XADD", stream, "*", "t", str(self.tenant_id), "v", self.document(), "a", audit)

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> UsageEvent:
        """An entry of either format: `t` + `v` (the document), or the eight fields that gateways
        before migration 0006 wrote (still read, so a stream they left drains). Raises ValueError
        when it is not a usage event."""
        try:
            f = {k.decode(): v.decode() for k, v in raw.items()}
            if "v" in f:
                doc = json.loads(f["v"])
                return cls(
                    event_id=uuid.UUID(doc["e"]),
                    tenant_id=uuid.UUID(f["t"]),
                    tool=_text(doc["tool"]),
                    units=int(doc["u"]),
                    outcome=_text(doc["o"]),
                    latency_ms=float(doc["l"]),
                    occurred_at_ms=int(doc["at"]),
                    metered=doc.get("m", True) is True,
                )
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
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError
            raise ValueError(f"not a usage event: {exc!r}") from exc


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


class LedgerUnavailable(Exception):
    """Neither Redis nor PostgreSQL took the event."""


async def insert_events(db: Database, events: Iterable[UsageEvent]) -> int:
    """Insert idempotently as the app role; return how many were new."""
    batch: dict[uuid.UUID, list[str]] = defaultdict(list)
    for event in events:
        batch[event.tenant_id].append(event.document())
    return await insert_documents(db, batch)


class Ledger:
    def __init__(
        self,
        client: Redis | RedisCommands,
        db: Database,
        *,
        stream: str | Sequence[str] = stream_key(),
        timeout_s: float | None = None,
        meter: Meter | None = None,
    ) -> None:
        """`stream`: the ledger's stream, or its shards (`ledger_streams`).

        `client` carries the XADD (`commands.py`); a redis-py client is bounded by `timeout_s`. With
        `meter`, its breaker applies here too: while it is open (Redis hung a moment ago) the event goes
        straight to PostgreSQL instead of waiting for another timeout, and the call's in-flight entry is
        freed once Redis answers again."""
        self._commands = as_commands(client, timeout=timeout_s)
        self._db = db
        self._meter = meter
        self.streams = (stream,) if isinstance(stream, str) else tuple(stream)
        self.stream = self.streams[0]
        self.fallbacks = 0  # events written straight to PostgreSQL because Redis was unreachable

    async def record(
        self, event: UsageEvent, *, release: tuple[str, str] | None = None, audit: str | None = None
    ) -> None:
        """Make `event` (and `audit`, the call's audit record) durable before the call's result is returned.

        `release=(key, member)`: also remove `member` from the sorted set `key` (the call's in-flight
        slot in the meter) in the same round trip."""
        if self._meter is None or not self._meter.down:
            xadd = event.xadd(shard_of(event.tenant_id, self.streams), audit)
            try:
                if release is None:
                    await self._commands.execute(*xadd)
                else:
                    await self._commands.execute_many([xadd, ("ZREM", *release)])
                return
            except REDIS_ERRORS as exc:
                log.warning("ledger: Redis unavailable (%s); writing event %s to PostgreSQL", exc, event.event_id)
        if release is not None and self._meter is not None:
            self._meter.release_later(*release)
        self.fallbacks += 1
        try:
            await insert_documents(
                self._db, {event.tenant_id: [event.document()]}, {event.tenant_id: [audit]} if audit else None
            )
        except (DBAPIError, OSError, Unavailable) as exc:  # Unavailable: the tenant is moving between tiers
            raise LedgerUnavailable(str(exc)) from exc

    async def append(self, tenant_id: uuid.UUID, audit: str) -> None:
        """Make an audit record of no usage event durable (a refusal, a request that is not a call, an admin
        change): an entry of its own, or straight to PostgreSQL while Redis cannot take it."""
        if self._meter is None or not self._meter.down:
            try:
                stream = shard_of(tenant_id, self.streams)
                await self._commands.execute("XADD", stream, "*", "t", str(tenant_id), "a", audit)
                return
            except REDIS_ERRORS as exc:
                log.warning("ledger: Redis unavailable (%s); writing an audit record to PostgreSQL", exc)
        self.fallbacks += 1
        try:
            await insert_documents(self._db, {}, {tenant_id: [audit]})
        except (DBAPIError, OSError, Unavailable) as exc:
            raise LedgerUnavailable(str(exc)) from exc
