"""The per-tenant meter against the real Redis: exact limits under concurrency, sliding windows,
retry hints, cost weights, isolation, rate and concurrency caps, outages, and memory.

Every test makes its own tenant (a random uuid), so tests never collide; the clock is
injected (`now_ms`), so nothing sleeps. Counter keys expire on their own.
"""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tenantry.metering.commands import RedisPyCommands
from tenantry.metering.meter import Decision, Meter
from tenantry.metering.resp import Arg, LuaScript, RespClient
from tenantry.plans import Limits

W = 100_000  # a 100 s quota window, in ms
T0 = (1_800_000_000_000 // W) * W  # start of a quota window (and of a minute: 100 s windows align with 60 s ones)
assert T0 % 60_000 == 0


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    # A blocking pool, as the app should use: redis-py 8's default pool raises
    # MaxConnectionsError (a ConnectionError) past 100 connections instead of waiting,
    # which the meter could not tell from Redis being down.
    client = Redis.from_pool(BlockingConnectionPool(host="127.0.0.1", port=6379, db=0, max_connections=16, timeout=5))
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["redis-py", "resp"])
async def meter(request: pytest.FixtureRequest, redis: Redis) -> AsyncIterator[Meter]:
    """The meter on each client its hot commands can take: redis-py, and the lean RESP client."""
    if request.param == "redis-py":
        yield Meter(redis, clock=lambda: T0)
        return
    resp = RespClient(host="127.0.0.1", port=6379, timeout=5)
    try:
        yield Meter(resp, clock=lambda: T0)
    finally:
        await resp.aclose()


@pytest.fixture
def tenant() -> uuid.UUID:
    return uuid.uuid4()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def unreachable_client(port: int) -> Redis:
    """A client that gives up at once (redis-py 8 otherwise retries a refused connection 10 times)."""
    return Redis(
        host="127.0.0.1",
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


def quota(limit: int | None, **kw: Any) -> Limits:
    return Limits(calls_per_window=limit, window_seconds=W // 1000, **kw)


async def admit_n(
    meter: Meter, tenant: uuid.UUID, n: int, limits: Limits, *, now: int, cost: int = 1
) -> list[Decision]:
    return [await meter.admit(tenant, f"c{i}", cost, limits, now_ms=now) for i in range(n)]


# -- exact limit under concurrency -------------------------------------------------------------


async def test_exactly_the_limit_is_admitted_under_200_concurrent_calls(meter: Meter, tenant: uuid.UUID) -> None:
    limits = quota(50)
    decisions = await asyncio.gather(*(meter.admit(tenant, f"c{i}", 1, limits, now_ms=T0) for i in range(200)))
    admitted = [d for d in decisions if d.admitted]
    assert len(admitted) == 50
    assert sorted(d.remaining for d in admitted if d.remaining is not None) == list(range(50))
    refused = [d for d in decisions if not d.admitted]
    assert {d.reason for d in refused} == {"quota_exceeded"}
    assert all(d.remaining == 0 and d.limit == 50 for d in refused)
    # The whole window is used: the wait is into the next window and past its start.
    assert {d.retry_after_ms for d in refused} == {W + W // 50}


# -- sliding window ----------------------------------------------------------------------------


async def test_previous_window_is_weighted_by_its_overlap(meter: Meter, tenant: uuid.UUID) -> None:
    limits = quota(100)
    assert all(d.admitted for d in await admit_n(meter, tenant, 100, limits, now=T0 + 10))
    assert not (await meter.admit(tenant, "x", 1, limits, now_ms=T0 + W - 1)).admitted

    # 25 % into the next window the previous 100 weigh 75: exactly 25 more.
    at = T0 + W + W // 4
    assert (await meter.usage(tenant, limits, now_ms=at))["used"] == 75
    decisions = await admit_n(meter, tenant, 40, limits, now=at)
    assert [d.admitted for d in decisions] == [True] * 25 + [False] * 15
    assert decisions[24].remaining == 0

    # Half-way: 100 * 0.5 + 25 = 75 again, so 25 more; then the window after that
    # sees only this window's 50, weighted by its own overlap.
    at = T0 + W + W // 2
    decisions = await admit_n(meter, tenant, 30, limits, now=at)
    assert sum(d.admitted for d in decisions) == 25
    at = T0 + 2 * W + W // 10  # 50 * 0.9 = 45 -> 55 more
    decisions = await admit_n(meter, tenant, 60, limits, now=at)
    assert sum(d.admitted for d in decisions) == 55

    # Two idle windows later nothing of it counts.
    usage = await meter.usage(tenant, limits, now_ms=T0 + 4 * W)
    assert usage["used"] == 0
    assert usage["remaining"] == 100


# -- retry_after_ms ----------------------------------------------------------------------------


async def assert_retry_is_exact(meter: Meter, tenant: uuid.UUID, cost: int, limits: Limits, now: int) -> int:
    refused = await meter.admit(tenant, "probe", cost, limits, now_ms=now)
    assert not refused.admitted
    assert refused.retry_after_ms > 0
    after = now + refused.retry_after_ms
    early = await meter.admit(tenant, "probe", cost, limits, now_ms=after - 1)
    assert not early.admitted, (refused, early)
    assert (await meter.admit(tenant, "probe", cost, limits, now_ms=after)).admitted
    return refused.retry_after_ms


async def test_retry_after_waits_for_the_previous_window_to_decay(meter: Meter, tenant: uuid.UUID) -> None:
    limits = quota(100)
    await meter.admit(tenant, "prev", 100, limits, now_ms=T0)
    now = T0 + W + W // 10  # previous weighs 90
    assert (await meter.admit(tenant, "a", 10, limits, now_ms=now)).admitted  # exactly 100
    # 5 more need the previous window down to 85: 15 % into the window.
    retry = await assert_retry_is_exact(meter, tenant, 5, limits, now)
    assert retry == W * 15 // 100 - W // 10


async def test_retry_after_waits_into_the_next_window(meter: Meter, tenant: uuid.UUID) -> None:
    limits = quota(100)
    await meter.admit(tenant, "cur", 100, limits, now_ms=T0)
    now = T0 + W // 2
    # This window alone is full; in the next one its 100 must decay to 99: 1 % into it.
    retry = await assert_retry_is_exact(meter, tenant, 1, limits, now)
    assert retry == W // 2 + W // 100


async def test_retry_after_waits_two_windows_when_the_cost_is_the_whole_limit(meter: Meter, tenant: uuid.UUID) -> None:
    limits = quota(100)
    await meter.admit(tenant, "cur", 100, limits, now_ms=T0 + 123)
    now = T0 + 456
    retry = await assert_retry_is_exact(meter, tenant, 100, limits, now)
    assert retry == 2 * W - 456


async def test_retry_after_is_exact_for_random_states(redis: Redis) -> None:
    """Property check: for random (previous, current, limit, cost, elapsed) the hint is the least wait."""
    rng = random.Random(20261101)
    meter = Meter(redis)
    setup = Limits(calls_per_window=10**9, window_seconds=60)  # limits are per call: fill freely
    w = 60_000
    checked = 0
    while checked < 40:
        limit = rng.randint(1, 1000)
        prev = rng.randint(0, 2 * limit)
        cur = rng.randint(0, limit + 5)
        cost = rng.randint(1, limit)
        elapsed = rng.randint(0, w - 1)
        start = T0 + w * rng.randint(0, 10_000)
        tenant = uuid.uuid4()
        if prev:
            await meter.admit(tenant, "p", prev, setup, now_ms=start - w)
        if cur:
            await meter.admit(tenant, "c", cur, setup, now_ms=start)
        limits = Limits(calls_per_window=limit, window_seconds=60)
        now = start + elapsed
        probe = await meter.admit(tenant, "x", cost, limits, now_ms=now)
        if probe.admitted:
            continue
        assert probe.reason == "quota_exceeded"
        # Undo nothing: the probe was refused and consumed nothing, so probe again.
        await assert_retry_is_exact(meter, tenant, cost, limits, now)
        checked += 1


# -- cost weights --------------------------------------------------------------------------------


async def test_cost_weights_consume_units(meter: Meter, tenant: uuid.UUID) -> None:
    limits = quota(100)
    decisions = await admit_n(meter, tenant, 6, limits, now=T0, cost=20)
    assert [d.admitted for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [80, 60, 40, 20, 0, 0]
    assert decisions[-1].reason == "quota_exceeded"
    # A cheaper call still fits nowhere, a free one does.
    assert not (await meter.admit(tenant, "one", 1, limits, now_ms=T0)).admitted
    assert (await meter.admit(tenant, "free", 0, limits, now_ms=T0)).admitted


async def test_cost_above_the_limit_is_never_admitted(meter: Meter, tenant: uuid.UUID) -> None:
    decision = await meter.admit(tenant, "big", 101, quota(100), now_ms=T0)
    assert decision == Decision(False, "cost_exceeds_limit", -1, 100, None)


# -- enterprise ----------------------------------------------------------------------------------


async def test_unlimited_tenant_never_touches_redis() -> None:
    dead = unreachable_client(closed_port())
    try:
        meter = Meter(dead)
        limits = Limits(calls_per_window=None)
        decision = await meter.admit(uuid.uuid4(), "c", 10**6, limits)
        assert decision == Decision(True, None, 0, None, None)
        assert not decision.bypassed
        assert (await meter.check_rate(uuid.uuid4(), limits)).admitted
        await meter.release(uuid.uuid4(), "c", limits)
        usage = await meter.usage(uuid.uuid4(), limits)
        assert usage["limit"] is None
        assert usage["remaining"] is None
        assert meter.failures == 0
        # Had it tried, it would have found Redis down:
        assert not (await meter.admit(uuid.uuid4(), "c", 1, Limits(calls_per_window=5))).admitted
        assert meter.failures == 1
    finally:
        await dead.aclose()


# -- isolation -----------------------------------------------------------------------------------


async def test_a_tenant_hammering_at_ten_times_its_quota_does_not_touch_another(meter: Meter) -> None:
    noisy, quiet = uuid.uuid4(), uuid.uuid4()
    limits = quota(20)
    hammer = [meter.admit(noisy, f"n{i}", 1, limits, now_ms=T0) for i in range(200)]
    calm = [meter.admit(quiet, f"q{i}", 1, limits, now_ms=T0) for i in range(20)]
    results = await asyncio.gather(*hammer, *calm)
    assert sum(d.admitted for d in results[:200]) == 20
    assert all(d.admitted for d in results[200:])
    assert (await meter.usage(quiet, limits, now_ms=T0))["used"] == 20


# -- rate limit ----------------------------------------------------------------------------------


async def test_requests_per_minute(meter: Meter, tenant: uuid.UUID) -> None:
    limits = Limits(calls_per_window=None, requests_per_minute=5)
    decisions = [await meter.admit(tenant, f"c{i}", 1, limits, now_ms=T0 + i) for i in range(5)]
    assert all(d.admitted for d in decisions)
    refused = await meter.admit(tenant, "c5", 1, limits, now_ms=T0 + 10)
    assert refused.reason == "rate_limited"
    assert refused.limit is None  # no quota
    # The minute is full: in the next one its 5 must decay to 4 (20 % into it).
    assert refused.retry_after_ms == 60_000 - 10 + 12_000
    await assert_retry_is_exact(meter, tenant, 1, limits, T0 + 10)


async def test_check_rate_shares_the_per_minute_limit(meter: Meter, tenant: uuid.UUID) -> None:
    limits = quota(1000, requests_per_minute=3)
    assert (await meter.admit(tenant, "c", 1, limits, now_ms=T0)).admitted
    first = await meter.check_rate(tenant, limits, now_ms=T0)
    assert (first.admitted, first.limit, first.remaining) == (True, 3, 1)
    assert (await meter.check_rate(tenant, limits, now_ms=T0)).admitted
    refused = await meter.check_rate(tenant, limits, now_ms=T0)
    assert (refused.admitted, refused.reason, refused.remaining) == (False, "rate_limited", 0)
    assert (await meter.admit(tenant, "d", 1, limits, now_ms=T0)).reason == "rate_limited"
    # check_rate counted no quota.
    assert (await meter.usage(tenant, limits, now_ms=T0))["used"] == 1


async def test_a_refused_call_consumes_nothing(meter: Meter, redis: Redis, tenant: uuid.UUID) -> None:
    limits = quota(100, requests_per_minute=2, max_concurrent=5)
    assert all(d.admitted for d in await admit_n(meter, tenant, 2, limits, now=T0, cost=10))
    refused = await meter.admit(tenant, "third", 10, limits, now_ms=T0)
    assert refused.reason == "rate_limited"
    assert refused.remaining == 80  # the quota is reported, untouched
    q_cur, _ = meter.quota_keys(tenant, W, T0)
    assert await redis.get(q_cur) == b"20"
    assert await redis.zcard(meter.inflight_key(tenant)) == 2
    assert (await meter.usage(tenant, limits, now_ms=T0))["used"] == 20

    # Refused by quota: no quota and no slot taken, but it was a request, and the rate counts it.
    other = uuid.uuid4()
    roomy = quota(10, requests_per_minute=3, max_concurrent=5)
    assert (await meter.admit(other, "a", 10, roomy, now_ms=T0)).admitted
    assert (await meter.admit(other, "b", 1, roomy, now_ms=T0)).reason == "quota_exceeded"
    assert (await meter.admit(other, "c", 0, roomy, now_ms=T0)).admitted  # the third request of the minute
    assert (await meter.admit(other, "d", 0, roomy, now_ms=T0)).reason == "rate_limited"
    r_cur, _ = meter.rate_keys(other, T0)
    assert await redis.get(r_cur) == b"3"
    assert await redis.zrange(meter.inflight_key(other), 0, -1) == [b"a", b"c"]


async def test_the_longest_wait_is_reported_when_several_limits_refuse(meter: Meter, tenant: uuid.UUID) -> None:
    limits = quota(10, requests_per_minute=1)
    assert (await meter.admit(tenant, "a", 10, limits, now_ms=T0)).admitted
    refused = await meter.admit(tenant, "b", 10, limits, now_ms=T0)
    # rate: next minute (60 s); quota (cost = whole limit): two windows (200 s).
    assert (refused.reason, refused.retry_after_ms) == ("quota_exceeded", 2 * W)


class CountingCommands(RedisPyCommands):
    """The meter's commands over redis-py, counting the scripts it runs (one per round trip of admit)."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.scripts = 0

    async def evalsha(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        self.scripts += 1
        return await super().evalsha(script, keys, args)


async def test_a_tenant_over_its_rate_is_refused_without_a_round_trip_until_the_rate_lets_it_through(
    redis: Redis, tenant: uuid.UUID
) -> None:
    commands = CountingCommands(redis)
    meter = Meter(commands, clock=lambda: T0 + 1000)
    limits = quota(1, requests_per_minute=2)
    assert (await meter.admit(tenant, "a", 1, limits, now_ms=T0)).admitted
    assert (await meter.admit(tenant, "b", 1, limits, now_ms=T0)).reason == "quota_exceeded"  # 2nd request
    by_redis = await meter.admit(tenant, "c", 1, limits, now_ms=T0)  # over the rate too: Redis says the longest
    assert (by_redis.reason, commands.scripts) == ("quota_exceeded", 3)
    assert meter.over_rate(uuid.uuid4(), limits) is None  # another tenant: nothing known
    # A flood from now on: refused from memory, by the rate, with the rate's own wait.
    held = meter.over_rate(tenant, limits)
    assert held is not None
    assert (held.admitted, held.reason, held.limit) == (False, "rate_limited", 1)
    rate_free = T0 + 60_000 + 30_001  # the minute's 2 requests have decayed below 1
    assert held.retry_after_ms == rate_free - (T0 + 1000) - 1
    flood = [await meter.admit(tenant, f"f{i}", 1, limits, now_ms=T0 + 1000) for i in range(50)]
    assert {(d.admitted, d.reason) for d in flood} == {(False, "rate_limited")}
    assert (await meter.check_rate(tenant, limits, now_ms=T0 + 1000)).reason == "rate_limited"
    assert commands.scripts == 3
    # Once the rate lets a request through again, Redis is asked (and the quota still refuses).
    later = await meter.admit(tenant, "g", 1, limits, now_ms=rate_free)
    assert (commands.scripts, later.reason) == (4, "quota_exceeded")
    # A change of the tenant (its limits may have been raised) makes the meter ask Redis at once.
    assert (await meter.admit(tenant, "h", 1, limits, now_ms=rate_free)).reason == "quota_exceeded"
    assert (await meter.admit(tenant, "i", 1, limits, now_ms=rate_free)).reason == "rate_limited"
    asked = commands.scripts
    meter.forget(tenant)
    raised = quota(100, requests_per_minute=100)
    assert meter.over_rate(tenant, raised) is None
    assert (await meter.admit(tenant, "j", 1, raised, now_ms=rate_free)).admitted
    assert commands.scripts == asked + 1


# -- concurrency ---------------------------------------------------------------------------------


async def test_concurrency_cap_and_release(meter: Meter, redis: Redis, tenant: uuid.UUID) -> None:
    limits = quota(None, max_concurrent=3)
    assert all(d.admitted for d in await admit_n(meter, tenant, 3, limits, now=T0))
    refused = await meter.admit(tenant, "c3", 1, limits, now_ms=T0 + 5)
    assert (refused.admitted, refused.reason) == (False, "concurrency_limited")
    assert refused.retry_after_ms == 250  # a slot frees when any call ends, not at the oldest deadline
    await meter.release(tenant, "c1")
    assert (await meter.admit(tenant, "c3", 1, limits, now_ms=T0 + 5)).admitted
    assert not (await meter.admit(tenant, "c4", 1, limits, now_ms=T0 + 5)).admitted

    # Released by removing the call from the key the ledger's record is given (with its event).
    assert await redis.zrem(meter.inflight_key(tenant), "c0") == 1
    assert (await meter.admit(tenant, "c4", 1, limits, now_ms=T0 + 5)).admitted


async def test_expired_in_flight_entries_are_reclaimed(meter: Meter, tenant: uuid.UUID) -> None:
    limits = quota(None, max_concurrent=1)
    assert (await meter.admit(tenant, "crashed", 1, limits, now_ms=T0, call_timeout_ms=1000)).admitted
    refused = await meter.admit(tenant, "next", 1, limits, now_ms=T0 + 999)
    assert (refused.reason, refused.retry_after_ms) == ("concurrency_limited", 1)
    assert (await meter.admit(tenant, "next", 1, limits, now_ms=T0 + 1000)).admitted


async def test_zero_caps_are_never(meter: Meter, tenant: uuid.UUID) -> None:
    refused = await meter.admit(tenant, "c", 1, quota(None, max_concurrent=0), now_ms=T0)
    assert (refused.reason, refused.retry_after_ms) == ("concurrency_limited", -1)
    refused = await meter.check_rate(tenant, quota(None, requests_per_minute=0), now_ms=T0)
    assert (refused.reason, refused.retry_after_ms) == ("rate_limited", -1)


async def test_release_for_an_unmetered_plan_is_no_round_trip() -> None:
    dead = unreachable_client(closed_port())
    try:
        meter = Meter(dead)
        await meter.release(uuid.uuid4(), "c", quota(None))
        assert meter.failures == 0
        await meter.release(uuid.uuid4(), "c")  # unknown limits: tries, fails quietly
        assert meter.failures == 1
    finally:
        await dead.aclose()


# -- Redis unreachable ---------------------------------------------------------------------------


async def test_redis_unreachable_follows_the_plan_policy() -> None:
    dead = unreachable_client(closed_port())
    try:
        meter = Meter(dead)
        closed = await meter.admit(uuid.uuid4(), "c", 1, quota(10))
        assert (closed.admitted, closed.reason, closed.bypassed) == (False, "meter_unavailable", False)
        assert closed.retry_after_ms > 0
        opened = await meter.admit(uuid.uuid4(), "c", 1, quota(10, fail_open=True))
        assert (opened.admitted, opened.reason, opened.bypassed) == (True, None, True)
        rate = await meter.check_rate(uuid.uuid4(), quota(None, requests_per_minute=5))
        assert rate.reason == "meter_unavailable"
        assert meter.failures == 3
    finally:
        await dead.aclose()


@asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A TCP server that accepts and never answers: (its port, the connections it has accepted)."""
    never = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await never.wait()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], writers
    finally:
        never.set()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_silent_redis_is_cut_off_by_the_meter_timeout() -> None:
    """A server that accepts and never answers: the meter's own deadline decides."""
    async with silent_server() as (port, _):
        silent = Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
        try:
            meter = Meter(silent, timeout_s=0.2)
            decision = await meter.admit(uuid.uuid4(), "c", 1, quota(10, fail_open=True))
            assert (decision.admitted, decision.bypassed) == (True, True)
            assert meter.failures == 1
        finally:
            await silent.aclose()


async def test_an_exhausted_default_pool_looks_like_an_outage() -> None:
    """Why the app must give the meter a blocking pool: redis-py's default pool refuses, not waits."""
    small = Redis(host="127.0.0.1", port=6379, db=0, max_connections=2)
    try:
        meter = Meter(small)
        tenant = uuid.uuid4()
        decisions = await asyncio.gather(*(meter.admit(tenant, f"c{i}", 1, quota(100), now_ms=T0) for i in range(20)))
        assert {d.reason for d in decisions} <= {None, "meter_unavailable"}
        assert meter.failures == sum(d.reason == "meter_unavailable" for d in decisions) > 0
    finally:
        await small.aclose()


# -- script loading ------------------------------------------------------------------------------


async def test_the_script_reloads_itself_after_script_flush(meter: Meter, redis: Redis, tenant: uuid.UUID) -> None:
    limits = quota(10)
    assert (await meter.admit(tenant, "a", 1, limits, now_ms=T0)).admitted
    sha = meter._lua.sha
    assert await redis.script_exists(sha) == [True]
    await redis.script_flush()
    assert await redis.script_exists(sha) == [False]
    decision = await meter.admit(tenant, "b", 1, limits, now_ms=T0)
    assert (decision.admitted, decision.remaining) == (True, 8)
    assert await redis.script_exists(sha) == [True]


# -- usage ---------------------------------------------------------------------------------------


async def test_usage_agrees_with_admit(meter: Meter, tenant: uuid.UUID) -> None:
    limits = quota(10)
    empty = await meter.usage(tenant, limits, now_ms=T0 + 10)
    assert empty == {
        "limit": 10,
        "used": 0,
        "remaining": 10,
        "window_seconds": 100,
        "resets_in_ms": 0,
        "window_ends_in_ms": W - 10,
    }
    assert (await meter.admit(tenant, "a", 3, limits, now_ms=T0 + 10)).remaining == 7
    usage = await meter.usage(tenant, limits, now_ms=T0 + 10)
    assert (usage["used"], usage["remaining"], usage["resets_in_ms"]) == (3, 7, 2 * W - 10)
    assert await meter.usage(tenant, limits, now_ms=T0 + 10) == usage  # reading counts nothing

    # Half-way through the next window the 3 weigh 1.5: shown as 2 used, 8 remaining, and 8 fit.
    half = T0 + W + W // 2
    usage = await meter.usage(tenant, limits, now_ms=half)
    assert (usage["used"], usage["remaining"], usage["resets_in_ms"]) == (2, 8, W // 2)
    assert not (await meter.admit(tenant, "b", 9, limits, now_ms=half)).admitted
    decision = await meter.admit(tenant, "b", 8, limits, now_ms=half)
    assert (decision.admitted, decision.remaining) == (True, 0)
    assert (await meter.usage(tenant, limits, now_ms=half))["remaining"] == 0
    # Everything counted is gone once this window has decayed through the next one.
    usage = await meter.usage(tenant, limits, now_ms=half)
    assert (await meter.usage(tenant, limits, now_ms=half + usage["resets_in_ms"]))["used"] == 0
    assert (await meter.usage(tenant, limits, now_ms=half + usage["resets_in_ms"] - 1))["used"] == 1


# -- memory --------------------------------------------------------------------------------------


async def test_counter_memory_does_not_grow_with_the_count(meter: Meter, redis: Redis, tenant: uuid.UUID) -> None:
    limits = quota(10**6, requests_per_minute=10**6)
    assert (await meter.admit(tenant, "a", 10, limits, now_ms=T0)).admitted
    q_cur, _ = meter.quota_keys(tenant, W, T0)
    small = await redis.memory_usage(q_cur)
    assert (await meter.admit(tenant, "b", 9_990, limits, now_ms=T0)).admitted
    assert await redis.get(q_cur) == b"10000"
    large = await redis.memory_usage(q_cur)
    assert small is not None
    assert large is not None
    assert abs(large - small) <= 16, (small, large)
    assert large < 128
    # Two counters per limit, whatever the count, and the set of calls in flight (each leaves it when it
    # ends: its size is the concurrency, not the count). Nothing else was written.
    keys = sorted(k.decode() for k in await redis.keys(f"tenantry:{{{tenant}}}:*"))
    assert keys == sorted([q_cur, meter.rate_keys(tenant, T0)[0], meter.inflight_key(tenant)])
    await meter.release(tenant, "a")
    await meter.release(tenant, "b")
    assert await redis.exists(meter.inflight_key(tenant)) == 0
    ttl = await redis.pttl(q_cur)
    assert 0 < ttl <= 2 * W


async def test_every_key_the_meter_writes_expires_and_outlives_its_use(
    meter: Meter, tenant: uuid.UUID, redis: Redis
) -> None:
    limits = quota(1000, requests_per_minute=1000, max_concurrent=50)
    for n in range(5):  # the first call creates each key, the later ones only count
        assert (await meter.admit(tenant, f"c{n}", 2, limits, now_ms=T0 + n, call_timeout_ms=30_000)).admitted
    await meter.check_rate(tenant, limits, now_ms=T0 + 5)
    q_cur, _ = meter.quota_keys(tenant, W, T0)
    r_cur, _ = meter.rate_keys(tenant, T0)
    assert await redis.get(q_cur) == b"10"
    assert await redis.get(r_cur) == b"6"
    # A counter lives two windows from its creation: through its own window and the next one.
    assert W * 2 - 5_000 < await redis.pttl(q_cur) <= W * 2
    assert 120_000 - 5_000 < await redis.pttl(r_cur) <= 120_000
    # The in-flight set outlives the latest deadline in it (now + the call timeout).
    assert 30_000 <= await redis.pttl(meter.inflight_key(tenant)) <= 60_000
    keys = await redis.keys(f"tenantry:{{{tenant}}}:*")
    assert len(keys) == 3
    assert all([await redis.pttl(k) > 0 for k in keys])
