"""The meter, the sharded ledger and the drain on a real three-master Redis Cluster (and the same
sharded ledger on a single Redis): every script's keys in one slot, redirections followed while a
slot moves, the ledger's writes spread over its shards and masters, and every event drained once
even when a drainer dies between storing a batch and acknowledging it."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from importlib.resources import files
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from tenantry.db.engine import Database
from tenantry.dev.redis_cluster import LocalCluster, start_local_cluster
from tenantry.metering.cluster import ClusterClient
from tenantry.metering.commands import RedisCommands
from tenantry.metering.drain import GROUP, LedgerDrainer, backlog
from tenantry.metering.ledger import Ledger, UsageEvent, ledger_streams, shard_of
from tenantry.metering.meter import Meter
from tenantry.metering.resp import Arg, Command, LuaScript, RespClient
from tenantry.metering.slots import command_key, key_slot
from tenantry.plans import Limits
from tenantry.settings import Settings
from tests.conftest import Admin

SHARDS = 16


@pytest.fixture
async def cluster(redis_cluster: LocalCluster) -> AsyncIterator[ClusterClient]:
    client = ClusterClient.from_url(redis_cluster.url, timeout=5.0)
    try:
        yield client
    finally:
        await client.aclose()


def master_of(cluster: LocalCluster, key: str) -> int:
    """The port of the master serving `key`'s slot, as the cluster says now."""
    slot = key_slot(key)
    for line in cluster.redis_cli(cluster.ports[0], "CLUSTER", "NODES").splitlines():
        parts = line.split()
        for served in parts[8:]:
            if served.startswith("["):  # a slot being migrated, not served
                continue
            start, _, end = served.partition("-")
            if int(start) <= slot <= int(end or start):
                return int(parts[1].split("@")[0].rsplit(":", 1)[1])
    raise AssertionError(f"no master serves slot {slot}")


# -- slots -----------------------------------------------------------------------------------------


def test_slots_are_computed_as_the_cluster_computes_them(redis_cluster: LocalCluster) -> None:
    keys = ["plain", "tenantry:{ledger}", "a:{x}:{y}", "{}empty-tag", f"tenantry:{{{uuid.uuid4()}}}:inflight"]
    for key in keys:
        assert key_slot(key) == int(redis_cluster.redis_cli(redis_cluster.ports[0], "CLUSTER", "KEYSLOT", key))


def test_the_scripts_touch_only_the_keys_they_are_given() -> None:
    """So checking the keys passed in KEYS is checking every key a script touches."""
    for name in ("meter.lua", "abandon.lua"):
        lua = files("tenantry.metering").joinpath(name).read_text(encoding="utf-8")
        keys = {key for _, key in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", lua)}
        assert keys, name
        # A key that is not KEYS[n] must be a local function's parameter, given KEYS[n] at every call.
        for function, params in re.findall(r"local function (\w+)\(([^)]*)\)", lua):
            names = [p.strip() for p in params.split(",")]
            calls = re.findall(rf"(?<!function ){function}\(([^)]*)\)", lua)
            for args in calls:
                for param, arg in zip(names, args.split(","), strict=False):
                    if param in keys:
                        assert re.fullmatch(r"KEYS\[\d\]", arg.strip()), (name, function, args)
            keys -= set(names)
        assert all(re.fullmatch(r"KEYS\[\d\]", key) for key in keys), (name, keys)


class Recording:
    """RedisCommands that answers like Redis would for an admitted call, and keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Arg]]] = []  # (command, every key it names)

    def _keep(self, command: Command, keys: Sequence[Arg] | None = None) -> None:
        name = str(command[0]).upper()
        if keys is None:
            keys = list(command[1:]) if name == "MGET" else [k for k in [command_key(command)] if k is not None]
        self.sent.append((name, list(keys)))

    async def execute(self, *args: Arg) -> Any:
        self._keep(args)
        return [None] * (len(args) - 1) if str(args[0]).upper() == "MGET" else 1

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        for command in commands:
            self._keep(command)
        return [1] * len(commands)

    async def evalsha(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        self._keep(("EVALSHA", script.sha, len(keys), *keys), keys)
        return [1, b"", 0, 5, 5, 0]


async def test_every_script_and_command_of_a_call_touches_one_slot_for_many_tenants(db: Database) -> None:
    recording = Recording()
    meter = Meter(recording)
    ledger = Ledger(recording, db, stream=ledger_streams("tenantry", SHARDS), meter=meter)
    limits = Limits(calls_per_window=100, requests_per_minute=100, max_concurrent=5, reads_per_window=50)
    for n in range(2000):
        tenant = uuid.uuid4()
        await meter.admit(tenant, f"c{n}", 1, limits)
        await meter.admit(tenant, f"r{n}", 1, limits, quota="reads")
        await meter.check_rate(tenant, limits)
        await meter.windows(tenant, limits)
        await meter.release(tenant, f"c{n}")
        event = UsageEvent(uuid.uuid4(), tenant, "data_get", 1, "ok", 1.0, 1_800_000_000_000)
        await ledger.record(event, release=(meter.inflight_key(tenant), f"c{n}"), audit="{}")
        await ledger.append(tenant, "{}")
    scripts = [keys for name, keys in recording.sent if name == "EVALSHA"]
    assert len(scripts) == 2000 * 3
    assert all(len(keys) == 6 for keys in scripts)
    # abandon.lua is given three of the same call's meter keys (quota, in-flight, mark): the same slot.
    for name, keys in recording.sent:
        assert len({key_slot(k) for k in keys}) == 1, (name, keys)
    # A tenant's meter keys and none of another's share its slot by its tag.
    assert all(str(keys[0]).split("}")[0] == str(keys[-1]).split("}")[0] for keys in scripts)


# -- the meter on the cluster -----------------------------------------------------------------------


async def test_the_meter_admits_exactly_each_tenants_quota_across_the_masters(
    cluster: ClusterClient, redis_cluster: LocalCluster
) -> None:
    meter = Meter(cluster, key_prefix=f"rc-{uuid.uuid4().hex[:8]}")
    limits = Limits(calls_per_window=3, max_concurrent=10, requests_per_minute=100)
    tenants = [uuid.uuid4() for _ in range(60)]
    decisions = await asyncio.gather(
        *(meter.admit(t, f"{t}-{n}", 1, limits) for t in tenants for n in range(5)),
    )
    admitted = [d.admitted for d in decisions]
    assert [sum(admitted[i * 5 : i * 5 + 5]) for i in range(len(tenants))] == [3] * len(tenants)
    assert {d.reason for d in decisions if not d.admitted} == {"quota_exceeded"}
    assert meter.failures == 0
    usage = await asyncio.gather(*(meter.usage(t, limits) for t in tenants))
    assert {u["used"] for u in usage} == {3}
    # The tenants' keys landed on every master.
    assert {master_of(redis_cluster, meter.inflight_key(t)) for t in tenants} == set(redis_cluster.ports)


async def test_a_tenant_keeps_its_count_while_its_slot_moves_to_another_master(
    cluster: ClusterClient, redis_cluster: LocalCluster
) -> None:
    meter = Meter(cluster, key_prefix=f"rc-{uuid.uuid4().hex[:8]}")
    limits = Limits(calls_per_window=6, max_concurrent=10, fail_open=True)
    # Not a slot of the ledger's shards: the other tests count those per master.
    shard_slots = {key_slot(s) for s in ledger_streams("x", SHARDS)}
    tenant = next(t for t in iter(uuid.uuid4, None) if key_slot(meter.inflight_key(t)) not in shard_slots)
    other = next(
        t for t in iter(uuid.uuid4, None) if key_slot(meter.inflight_key(t)) != key_slot(meter.inflight_key(tenant))
    )
    assert all([(await meter.admit(tenant, f"c{n}", 1, limits)).admitted for n in range(3)])

    slot = key_slot(meter.inflight_key(tenant))
    source = master_of(redis_cluster, meter.inflight_key(tenant))
    target = next(port for port in redis_cluster.ports if port != source)
    ids = {port: redis_cluster.redis_cli(port, "CLUSTER", "MYID").strip() for port in redis_cluster.ports}
    asks_before = _command_calls(redis_cluster, target, "asking")

    # Mid-migration: every key of the slot has left the source, which answers ASK for them.
    redis_cluster.redis_cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source])
    redis_cluster.redis_cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target])
    keys = redis_cluster.redis_cli(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
    assert keys
    redis_cluster.redis_cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys)
    # A one-key command follows the ASK to the importing master: the call's in-flight entry is freed there.
    await meter.release(tenant, "c0")
    assert _command_calls(redis_cluster, target, "asking") > asks_before
    # The script names keys that do not exist yet, which a slot split between two masters cannot serve
    # (TRYAGAIN): the plan's outage policy decides this tenant's calls, and only this tenant's.
    during = await meter.admit(tenant, "c3", 1, limits)
    assert during.admitted
    assert during.bypassed
    assert not meter.down
    assert not (await meter.admit(other, "o1", 1, limits)).bypassed

    # Done: the target serves the slot; the source answers MOVED, and the client's map follows.
    for port in redis_cluster.ports:
        redis_cluster.redis_cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target])
    decisions = [await meter.admit(tenant, f"c{n}", 1, limits) for n in range(4, 8)]
    assert [d.admitted for d in decisions] == [True, True, True, False]  # 6 counted: 3 before, 3 after
    assert not any(d.bypassed for d in decisions)
    assert (await meter.usage(tenant, limits))["used"] == 6
    # In flight: c1, c2 and the three admitted after; c0 was freed through the ASK.
    assert int(redis_cluster.redis_cli(target, "ZCARD", meter.inflight_key(tenant))) == 5


def _command_calls(cluster: LocalCluster, port: int, command: str) -> int:
    stats = cluster.redis_cli(port, "INFO", "commandstats")
    found = re.search(rf"cmdstat_{command}:calls=(\d+)", stats)
    return int(found.group(1)) if found else 0


# -- the sharded ledger and its drain ---------------------------------------------------------------


async def test_the_ledger_spreads_its_writes_over_every_shard_and_master(
    cluster: ClusterClient, redis_cluster: LocalCluster, db: Database
) -> None:
    streams = ledger_streams(f"rc-{uuid.uuid4().hex[:8]}", SHARDS)
    ledger = Ledger(cluster, db, stream=streams)
    tenants = [uuid.uuid4() for _ in range(400)]
    for tenant in tenants:
        await ledger.record(UsageEvent(uuid.uuid4(), tenant, "data_get", 1, "ok", 1.0, 1_800_000_000_000))
    lengths = await cluster.execute_many([("XLEN", s) for s in streams])
    assert sum(lengths) == len(tenants)
    assert ledger.fallbacks == 0
    assert all(n > 0 for n in lengths)  # 400 tenants hashed over 16 shards: none is left out
    assert max(lengths) < len(tenants) / 4  # and none takes the lion's share
    per_master: dict[int, int] = {}
    for stream in streams:
        port = master_of(redis_cluster, stream)
        per_master[port] = per_master.get(port, 0) + 1
    assert sorted(per_master.values()) == [5, 5, 6]  # the shards' slots are evenly spaced
    await cluster.execute_many([("DEL", s) for s in streams])


class DiesBeforeAcknowledging:
    """A drainer's client whose process dies right after the batch is stored: the acknowledgement
    never leaves (the test cancels the drainer while it waits here)."""

    def __init__(self, inner: RedisCommands) -> None:
        self.inner = inner
        self.cluster = getattr(inner, "cluster", False)
        self.dying = asyncio.Event()

    async def execute(self, *args: Arg) -> Any:
        return await self.inner.execute(*args)

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        if any(str(c[0]) == "XACK" for c in commands):
            self.dying.set()
            await asyncio.Event().wait()  # never returns
        return await self.inner.execute_many(commands)

    async def evalsha(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        return await self.inner.evalsha(script, keys, args)


@pytest.fixture(params=["single", "cluster"])
async def ledger_redis(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[tuple[RedisCommands, RedisCommands]]:
    """Two clients (the ledger's and a drainer's) of a single Redis, or of the Redis Cluster."""
    if request.param == "single":
        clients: list[RespClient | ClusterClient] = [RespClient.from_url(settings.redis_url, timeout=5.0) for _ in "ab"]
    else:
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        clients = [ClusterClient.from_url(cluster.url, timeout=5.0) for _ in "ab"]
    try:
        yield clients[0], clients[1]
    finally:
        for client in clients:
            await client.aclose()


async def test_every_event_is_drained_once_though_a_drainer_dies_mid_way(
    ledger_redis: tuple[RedisCommands, RedisCommands], db: Database, admin: Admin
) -> None:
    writer, reader = ledger_redis
    streams = ledger_streams(f"rc-{uuid.uuid4().hex[:8]}", SHARDS)
    tenants = [uuid.UUID((await admin.create_tenant()).id) for _ in range(12)]
    ledger = Ledger(writer, db, stream=streams)
    events = [
        UsageEvent(uuid.uuid4(), tenant, "data_get", 1, "ok", 1.0, 1_800_000_000_000 + n)
        for n in range(50)
        for tenant in tenants
    ]
    await asyncio.gather(*(ledger.record(e) for e in events))
    assert ledger.fallbacks == 0
    used = {shard_of(t, streams) for t in tenants}
    assert len(used) > 1  # the events are spread over several shards

    victim_client = DiesBeforeAcknowledging(reader)
    victim = LedgerDrainer(victim_client, db, stream=streams, consumer="victim", batch_size=100)
    await victim.ensure_group()
    dying = asyncio.create_task(victim.drain_once(recover=False))
    await asyncio.wait_for(victim_client.dying.wait(), timeout=30)
    dying.cancel()  # killed between storing its batch and acknowledging it
    with pytest.raises(asyncio.CancelledError):
        await dying
    pending = await writer.execute_many([("XPENDING", s, GROUP) for s in streams])
    assert sum(int(p[0]) for p in pending) > 0  # read, stored, never acknowledged

    heir = LedgerDrainer(reader, db, stream=streams, consumer="heir", claim_idle_ms=0)
    await heir.flush()

    async with db.system() as conn:
        total, distinct = (
            await conn.execute(
                text("SELECT count(*), count(DISTINCT event_id) FROM usage_events WHERE tenant_id = ANY(:t)"),
                {"t": tenants},
            )
        ).one()
    assert total == distinct == len(events)
    async with db.system() as conn:
        ids = set(
            (
                await conn.execute(text("SELECT event_id FROM usage_events WHERE tenant_id = ANY(:t)"), {"t": tenants})
            ).scalars()
        )
    assert ids == {e.event_id for e in events}
    lengths = await writer.execute_many([("XLEN", s) for s in streams])
    pending = await writer.execute_many([("XPENDING", s, GROUP) for s in streams])
    assert sum(lengths) == 0
    assert sum(int(p[0]) for p in pending) == 0
    assert await backlog(writer, streams) == (0, 0)
    await writer.execute_many([("DEL", s) for s in streams])


async def test_a_stream_left_by_a_gateway_before_shards_is_drained(
    redis: Redis, db: Database, admin: Admin, stream: str
) -> None:
    """The first shard is the stream gateways wrote before shards: an upgrade leaves nothing behind."""
    tenant = uuid.UUID((await admin.create_tenant()).id)
    prefix = stream.removesuffix(":{ledger}")
    streams = ledger_streams(prefix, SHARDS)
    assert streams[0] == stream
    old = UsageEvent(uuid.uuid4(), tenant, "data_get", 1, "ok", 1.0, 1_800_000_000_000)
    await Ledger(redis, db, stream=stream).record(old)  # a gateway of one stream
    new = UsageEvent(uuid.uuid4(), tenant, "data_get", 1, "ok", 1.0, 1_800_000_000_001)
    await Ledger(redis, db, stream=streams).record(new)
    await LedgerDrainer(redis, db, stream=streams).flush()
    async with db.system() as conn:
        rows = await conn.execute(text("SELECT event_id FROM usage_events WHERE tenant_id = :t"), {"t": tenant})
        stored = set(rows.scalars())
    assert stored == {old.event_id, new.event_id}
    await redis.delete(*streams)


async def test_a_dead_master_leaves_only_its_tenants_to_the_outage_policy() -> None:
    own = start_local_cluster(3)  # a cluster of this test's own: one of its masters is killed
    client = ClusterClient.from_url(own.url, timeout=2.0)
    try:
        meter = Meter(client, key_prefix="rc-dead")
        limits = Limits(calls_per_window=100)  # fails closed when its keys cannot be reached
        tenants = [uuid.uuid4() for _ in range(30)]
        assert all([(await meter.admit(t, "c0", 1, limits)).admitted for t in tenants])
        dead = own.ports[1]
        lost = {t for t in tenants if master_of(own, meter.inflight_key(t)) == dead}
        own.processes[1].kill()
        own.processes[1].wait(timeout=10)
        decisions = {t: await meter.admit(t, "c1", 1, limits) for t in tenants}
        assert lost
        assert lost != set(tenants)
        assert all(decisions[t].reason == "meter_unavailable" for t in lost)
        assert all(decisions[t].admitted and not decisions[t].bypassed for t in set(tenants) - lost)
        assert not meter.down  # the others are still metered: the meter did not stop asking Redis
    finally:
        await client.aclose()
        own.stop()
