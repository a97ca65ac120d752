"""The ledger's drain: usage events and audit records from the Redis stream into PostgreSQL, each exactly once.

A lifespan task on every replica (any number of them): a consumer group reads the
stream, stores each batch with one statement, `tenantry_ledger_usage` and
`tenantry_ledger_audit` (migration 0021: set-based, whatever the number of
tenants; the audit function chains each tenant's records on from its head),
and only then acknowledges and deletes the entries. Events are inserted with
`ON CONFLICT DO NOTHING` on (tenant_id, event_id), by the dedicated ledger
role under forced RLS (`db/ledger_schema.py`), in one round trip whatever the
number of tenants. After a batch that was not full
the drain lingers (200 ms), so that under load one statement carries many
events. A crash between commit and acknowledgement leaves the entries
pending; they are re-read (by this consumer, or claimed by another replica
after `claim_idle_ms`) and the insert is a no-op for them. The event id is
minted when the call is admitted, so every later step (ledger, aggregation,
Stripe `identifier`) is idempotent on it.

An entry that can never be stored (not a usage event, or PostgreSQL refuses
it: its tenant is gone) must not stall every tenant's billing behind it: when
a batch is refused for its data, the drain stores it tenant by tenant, then
event by event, and moves what is still refused, with the reason, to
`<stream>:dead` before acknowledging it. `/health` shows how many are there.
Entries in the eight-field format of gateways before 0006 are still read.

A tenant moving between isolation tiers (its audit trail moves with it, `metering/storing.py`) is not
"never storable" but "not yet": its entries are neither stored, nor acknowledged, nor set aside. They
stay pending, the rest of the batch is stored and acknowledged, and the drain reads its pending entries
again about a second later (`retry_ms`), until the move is done and they land in the tenant's new copy
(once: they are re-read as not `fresh`, so each record is looked for by id first). Meanwhile the
tenant's newer entries are held back too, so its chain keeps the stream's order.

Shards (`ledger.ledger_streams`): one drainer reads every shard of the ledger, each with its own consumer
group, so each stream keeps the guarantees above, and stores what it read from all of them with one
statement. On a single Redis one blocking XREADGROUP reads them all, as it read the one stream; on a
Redis Cluster a command may name keys of one slot only, so each pass reads every shard without
blocking (one round trip per master, all masters at once) and, when all were empty, waits
`poll_ms` before the next pass. Acknowledgements go likewise, per shard, in one round trip.
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
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import Database
from tenantry.errors import Unavailable
from tenantry.metering.commands import RedisCommands, as_commands
from tenantry.metering.entries import Dead, Docs, Entry, field_pairs, group_entries, parse_entry, stream_entries
from tenantry.metering.ledger import REDIS_ERRORS, stream_key
from tenantry.metering.storing import insert_documents, store_documents, unstorable

log = logging.getLogger(__name__)

GROUP = "ledger"


def _tenant_of(fields: dict[bytes, bytes]) -> uuid.UUID | None:
    try:
        return uuid.UUID(fields[b"t"].decode())
    except (KeyError, ValueError):  # UnicodeDecodeError too
        return None


def dead_letter_key(stream: str) -> str:
    """Where the drain keeps entries that can never be stored (same hash slot as `stream`)."""
    return f"{stream}:dead"


class LedgerDrainer:
    """Moves events from the stream into `usage_events`; one per replica, as a lifespan task."""

    def __init__(
        self,
        client: Redis | RedisCommands,
        db: Database,
        *,
        batch_size: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        linger_ms: int = 200,
        consumer: str | None = None,
        stream: str | Sequence[str] = stream_key(),
        timeout_s: float = 5.0,
        poll_ms: int = 100,
        retry_ms: int = 1000,
    ) -> None:
        """`linger_ms`: after a batch that was not full, wait this long for more events, so under load
        the drain moves them in batches (one transaction for many calls) instead of one by one.

        `client` carries every command (`commands.py`). Give the drainer a connection of its own (the
        app gives it its own lean client): its blocking read would hold up every command queued
        behind it on a shared one. A redis-py client is bounded by `timeout_s` per command.

        `stream`: the ledger's stream, or its shards (`ledger_streams`). `poll_ms`: on a Redis Cluster,
        how long the drain waits after a pass that found every shard empty (it cannot block on all).
        `retry_ms`: how soon entries left pending for a tenant moving between tiers are read again."""
        self.streams = (stream,) if isinstance(stream, str) else tuple(stream)
        self.stream = self.streams[0]
        self._commands = as_commands(client, timeout=timeout_s)
        self._db = db
        self._batch = batch_size
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._linger_s = linger_ms / 1000
        self._poll_s = poll_ms / 1000
        self._retry_s = retry_ms / 1000
        # A cluster refuses a command naming keys of several slots: there, read each shard on its own.
        self._one_read = len(self.streams) == 1 or not getattr(self._commands, "cluster", False)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stopping = asyncio.Event()
        self.dead = dead_letter_key(self.stream)
        self.drained = 0
        self.dead_lettered = 0
        self.left_pending = 0  # entries the last batch left pending (their tenant is moving between tiers)
        self._held: frozenset[uuid.UUID] = frozenset()  # tenants whose entries wait: newer ones wait too
        self.last_error: str | None = None

    async def ensure_group(self) -> None:
        """Create each shard's consumer group (and stream) unless it exists."""
        for stream in self.streams:
            try:
                await self._commands.execute("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def drain_once(self, *, block: bool = False, recover: bool = True) -> int:
        """Move one batch. With `recover`, this consumer's own pending entries first, then abandoned
        ones, then new ones; without it (the steady state), new ones only: one read."""
        entries, fresh = await self._read(block=block, recover=recover)
        if not entries:
            return 0
        ids: dict[str, list[bytes]] = {}
        for stream, entry_id, _ in entries:
            ids.setdefault(stream, []).append(entry_id)
        # An entry deleted after it was read comes back without fields: only acknowledged.
        live = [entry for entry in entries if entry[2]]
        batch, audit, odd = group_entries(live)
        moved = 0
        waiting: frozenset[uuid.UUID] = frozenset()
        if batch or audit:
            try:
                hold = self._held if fresh else frozenset()
                waiting = (await store_documents(self._db, batch, audit, fresh=fresh, hold=hold)).waiting
                moved = sum(len(docs) for tenant, docs in batch.items() if tenant not in waiting)
            except DBAPIError as exc:
                if not unstorable(exc):
                    raise
                # Something in the batch can never be stored: find it, store the rest.
                log.error("ledger: a batch of %d events was refused (%s); storing them one by one", len(live), exc.orig)
                odd = live
        dead: list[Dead] = []
        if odd:
            stored, dead = await self._store_one_by_one(odd)
            moved += stored
        if dead:
            await self._dead_letter(dead)
        # A re-read (own pending entries first) settles who still waits; a fresh read can only add to them.
        self._held = (self._held | waiting) if fresh else waiting
        self.left_pending = 0
        if waiting:  # their tenant is moving: not stored yet, so not acknowledged (read again soon)
            left = {entry_id for stream, entry_id, fields in live if _tenant_of(fields) in waiting}
            self.left_pending = len(left)
            for stream in ids:
                ids[stream] = [entry_id for entry_id in ids[stream] if entry_id not in left]
        acks: list[tuple[str | bytes, ...]] = []
        for stream, stream_ids in ids.items():
            if not stream_ids:
                continue
            acks += [("XACK", stream, GROUP, *stream_ids), ("XDEL", stream, *stream_ids)]
        if acks:
            await self._commands.execute_many(acks)
        self.drained += moved
        return len(entries)

    async def _store_one_by_one(self, entries: list[Entry]) -> tuple[int, list[Dead]]:
        """The slow path, for a batch holding something the fast one could not store: each tenant's
        entries in their own transaction, and a tenant's whose were refused, one entry at a time.
        Returns how many usage events were stored, and the entries that can never be (with the reason)."""
        dead: list[Dead] = []
        by_tenant: dict[uuid.UUID, list[tuple[str, bytes, dict[bytes, bytes], Docs]]] = defaultdict(list)
        for stream, entry_id, fields in entries:
            try:
                tenant, docs = parse_entry(fields)
            except ValueError as exc:
                dead.append((stream, entry_id, fields, str(exc)))
                continue
            by_tenant[tenant].append((stream, entry_id, fields, docs))
        stored = 0
        for tenant, group in by_tenant.items():
            refused = await self._refusal(tenant, [docs for *_, docs in group])
            if refused is None:
                stored += sum(docs.usage is not None for *_, docs in group)
                continue
            for stream, entry_id, fields, docs in group:
                alone = refused if len(group) == 1 else await self._refusal(tenant, [docs])
                if alone is None:
                    stored += docs.usage is not None
                    continue
                # An audit record that can never be stored must not take the call's usage event with it:
                # the event is stored (billed) and the entry kept aside for its record.
                usage_only = Docs(docs.usage, None)
                if (
                    docs.audit is not None
                    and docs.usage is not None
                    and await self._refusal(tenant, [usage_only]) is None
                ):
                    stored += 1
                    dead.append(
                        (stream, entry_id, fields, f"audit record refused by PostgreSQL (usage stored): {alone}")
                    )
                    continue
                dead.append((stream, entry_id, fields, f"refused by PostgreSQL: {alone}"))
        return stored, dead

    async def _refusal(self, tenant: uuid.UUID, entries: list[Docs]) -> str | None:
        """Store one tenant's `entries` in one transaction; None when stored, PostgreSQL's reason when it never will."""
        usage = [d.usage for d in entries if d.usage is not None]
        audit = [d.audit for d in entries if d.audit is not None]
        try:
            await insert_documents(self._db, {tenant: usage} if usage else {}, {tenant: audit} if audit else None)
        except DBAPIError as exc:
            if not unstorable(exc):
                raise
            return str(exc.orig)
        return None

    async def _dead_letter(self, dead: list[Dead]) -> None:
        """Keep entries that can never be stored in `<stream>:dead` (of their shard), with the reason,
        before they are acknowledged: nothing leaves the ledger unaccounted for; `/health` shows how many
        there are."""
        commands: list[list[bytes | str]] = []
        for stream, entry_id, fields, reason in dead:
            kept_in = dead_letter_key(stream)
            log.error("ledger: entry %s can never be stored (%s); moved to %s", entry_id, reason, kept_in)
            kept = {**fields, b"entry": entry_id, b"reason": reason.encode()[:1000]}
            commands.append(["XADD", kept_in, "*", *(part for pair in kept.items() for part in pair)])
        await self._commands.execute_many(commands)
        self.dead_lettered += len(dead)

    async def _read(self, *, block: bool, recover: bool) -> tuple[list[Entry], bool]:
        """A batch, and whether it was delivered for the first time (`fresh`: none of it can be stored yet)."""
        if recover:
            # A batch this consumer read but did not acknowledge (the insert failed, or we were cancelled).
            entries = await self._read_group("0", block=False)
            if entries:
                return entries, False
            # Entries a dead consumer read and never acknowledged (Redis 7 lists deleted ones apart; 6.2 as nil).
            claims = await self._commands.execute_many(
                [
                    ("XAUTOCLAIM", stream, GROUP, self.consumer, self._claim_idle_ms, "0-0", "COUNT", self._batch)
                    for stream in self.streams
                ]
            )
            entries = [
                (stream, entry_id, field_pairs(fields))
                for stream, claimed in zip(self.streams, claims, strict=True)
                for entry_id, fields in claimed[1]
                if fields is not None
            ]
            if entries:
                return entries, False
        return await self._read_group(">", block=block), True

    async def _read_group(self, start: str, *, block: bool) -> list[Entry]:
        """XREADGROUP of every shard from `start` ("0": this consumer's pending entries; ">": new ones)."""
        command: list[str | int] = ["XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self._batch]
        if self._one_read:
            if block:
                command += ["BLOCK", self._block_ms]
            starts = [start] * len(self.streams)
            return stream_entries(await self._commands.execute(*command, "STREAMS", *self.streams, *starts))
        replies = await self._commands.execute_many([(*command, "STREAMS", stream, start) for stream in self.streams])
        entries = [entry for reply in replies for entry in stream_entries(reply)]
        if not entries and block:
            await self._pause(self._poll_s)
        return entries

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
                    if self.left_pending:  # a tenant moving between tiers: its entries are read again soon
                        next_recovery = min(next_recovery, loop.time() + self._retry_s)
                    self.last_error = None
                    backoff = 0.1
                    if 0 < moved < self._batch:
                        await self._pause(self._linger_s)
            except (*REDIS_ERRORS, DBAPIError, Unavailable) as exc:  # Unavailable: on the slow path, a move
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
                read = await self.drain_once(block=False)
                if read == 0 or read == self.left_pending:  # nothing, or only what waits for a move
                    return
        except (*REDIS_ERRORS, DBAPIError, Unavailable) as exc:
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


async def backlog(commands: RedisCommands, streams: Sequence[str], now_ms: int | None = None) -> tuple[int, int]:
    """Over every shard: the age of the oldest event not yet in PostgreSQL (as `oldest_undrained_age_ms`),
    and how many entries were set aside as never storable; one round trip (one per master on a cluster)."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    asked: list[tuple[str, ...]] = []
    for stream in streams:
        asked += [("XRANGE", stream, "-", "+", "COUNT", "1"), ("XLEN", dead_letter_key(stream))]
    replies = await commands.execute_many(asked)
    oldest = [int(bytes(first[0][0]).split(b"-")[0]) for first in replies[0::2] if first]
    lag = max(0, now_ms - min(oldest)) if oldest else 0
    return lag, sum(int(n) for n in replies[1::2])
