"""Resource reads against their own window (`reads_per_window`), through the same one-round-trip meter.

Reads and calls count in separate windows and refuse with their own codes; both count against the
request rate and the in-flight cap. Every test makes its own tenant; the clock is injected.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from tenantry.metering.meter import Meter
from tenantry.metering.resp import RespClient
from tenantry.plans import Limits

W = 100_000
T0 = (1_800_000_000_000 // W) * W


@pytest.fixture(params=["redis-py", "resp"])
async def meter(request: pytest.FixtureRequest) -> AsyncIterator[Meter]:
    if request.param == "redis-py":
        client = Redis.from_pool(BlockingConnectionPool(host="127.0.0.1", port=6379, max_connections=16, timeout=5))
        try:
            yield Meter(client, clock=lambda: T0)
        finally:
            await client.aclose()
        return
    resp = RespClient(host="127.0.0.1", port=6379, timeout=5)
    try:
        yield Meter(resp, clock=lambda: T0)
    finally:
        await resp.aclose()


def limits(**values: int | None) -> Limits:
    return Limits(window_seconds=W // 1000, **values)


async def test_reads_count_against_their_own_window_and_are_refused_as_reads(meter: Meter) -> None:
    tenant = uuid.uuid4()
    plan = limits(calls_per_window=2, reads_per_window=3)
    reads = [await meter.admit(tenant, f"r{i}", 1, plan, now_ms=T0, quota="reads") for i in range(4)]
    assert [d.admitted for d in reads] == [True, True, True, False]
    assert reads[3].reason == "read_quota_exceeded"
    assert reads[3].limit == 3
    assert reads[3].remaining == 0
    assert reads[3].retry_after_ms > 0
    # The calls window is untouched by reads, and exhausting it leaves reads where they were.
    calls = [await meter.admit(tenant, f"c{i}", 1, plan, now_ms=T0) for i in range(3)]
    assert [d.admitted for d in calls] == [True, True, False]
    assert calls[2].reason == "quota_exceeded"
    windows = await meter.windows(tenant, plan, now_ms=T0)
    assert (windows["reads"]["used"], windows["reads"]["limit"]) == (3, 3)
    assert (windows["calls"]["used"], windows["calls"]["limit"]) == (2, 2)
    assert (await meter.usage(tenant, plan, now_ms=T0, quota="reads"))["remaining"] == 0


async def test_concurrent_reads_admit_exactly_the_limit(meter: Meter) -> None:
    tenant = uuid.uuid4()
    plan = limits(reads_per_window=25)
    decisions = await asyncio.gather(
        *(meter.admit(tenant, f"r{i}", 1, plan, now_ms=T0, quota="reads") for i in range(60))
    )
    assert sum(d.admitted for d in decisions) == 25
    assert {d.reason for d in decisions if not d.admitted} == {"read_quota_exceeded"}
    assert (await meter.usage(tenant, plan, now_ms=T0, quota="reads"))["used"] == 25


async def test_reads_and_calls_share_the_request_rate(meter: Meter) -> None:
    tenant = uuid.uuid4()
    plan = limits(calls_per_window=100, reads_per_window=100, requests_per_minute=3)
    assert (await meter.admit(tenant, "c1", 1, plan, now_ms=T0)).admitted
    assert (await meter.admit(tenant, "r1", 1, plan, now_ms=T0, quota="reads")).admitted
    assert (await meter.admit(tenant, "r2", 1, plan, now_ms=T0, quota="reads")).admitted
    refused = await meter.admit(tenant, "r3", 1, plan, now_ms=T0 + 1, quota="reads")
    assert refused.reason == "rate_limited"
    assert (await meter.windows(tenant, plan, now_ms=T0 + 1))["requests"]["used"] == 3


async def test_a_read_costing_more_than_the_window_is_refused_without_a_round_trip(meter: Meter) -> None:
    plan = limits(reads_per_window=2)
    decision = await meter.admit(uuid.uuid4(), "r", 3, plan, now_ms=T0, quota="reads")
    assert (decision.admitted, decision.reason, decision.retry_after_ms) == (False, "cost_exceeds_limit", -1)


async def test_a_plan_limiting_only_reads_is_metered_and_a_call_is_not_held_by_it(meter: Meter) -> None:
    tenant = uuid.uuid4()
    plan = limits(reads_per_window=1)
    assert not plan.unmetered
    assert (await meter.admit(tenant, "r1", 1, plan, now_ms=T0, quota="reads")).admitted
    assert not (await meter.admit(tenant, "r2", 1, plan, now_ms=T0, quota="reads")).admitted
    assert all([(await meter.admit(tenant, f"c{i}", 1, plan, now_ms=T0)).admitted for i in range(5)])
    windows = await meter.windows(tenant, plan, now_ms=T0)
    assert windows["calls"]["used"] is None  # no calls limit: not counted
    assert windows["reads"]["used"] == 1
