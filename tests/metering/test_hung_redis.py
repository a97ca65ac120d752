"""A Redis that hangs (SIGSTOP), not one that is down: admissions the gateway gave up on hold nothing
once Redis resumes, and a hung Redis costs one timeout per breaker interval, not one per call."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tenantry.db.engine import Database
from tenantry.metering.ledger import Ledger
from tenantry.metering.meter import Meter
from tenantry.metering.resp import RespClient
from tenantry.plans import Limits
from tests.conftest import Admin, free_port
from tests.metering.test_ledger import event, stored
from tests.metering.test_resp import start_redis, stop

FREE = Limits(calls_per_window=10, max_concurrent=1, fail_open=False)
PAID = Limits(calls_per_window=10, max_concurrent=1, fail_open=True)


@pytest.fixture
async def hung(tmp_path: Path) -> AsyncIterator[tuple[Meter, Redis, list[float], int]]:
    """A meter on a redis-server of the test's own (lean client, 0.2 s timeout, a clock the test moves),
    a redis-py client beside it, and the server's pid."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    client = RespClient(port=port, timeout=0.2)
    clock = [0.0]
    redis = Redis(port=port)
    try:
        yield Meter(client, monotonic=lambda: clock[0]), redis, clock, proc.pid
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await client.aclose()
        await redis.aclose()
        stop(proc)


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def until(check: object, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("limits", [FREE, PAID], ids=["fails closed", "fails open"])
async def test_an_admission_abandoned_in_a_hang_holds_no_slot_or_quota_once_redis_resumes(
    hung: tuple[Meter, Redis, list[float], int], limits: Limits
) -> None:
    meter, redis, clock, pid = hung
    tenant = uuid.uuid4()
    inflight = meter.inflight_key(tenant)
    await meter.admit(uuid.uuid4(), "warm", 1, limits)  # the script is loaded, as it is in a running gateway
    with frozen(pid):
        decision = await meter.admit(tenant, "lost", 1, limits)
    # The caller was told: refused (free) or admitted unmetered (paid). Either way nothing may be held.
    assert decision.reason == ("meter_unavailable" if not limits.fail_open else None)
    assert decision.bypassed is limits.fail_open
    # The script sent before the timeout runs now that Redis resumes: the phantom slot appears...
    await until(lambda: _has(redis, inflight, "lost"))
    clock[0] += 10  # ...and once the breaker lets a call try Redis again, the meter takes it back first.
    admitted = await meter.admit(tenant, "next", 1, limits)
    assert admitted.admitted, admitted  # with the phantom still there, the cap of 1 would refuse it
    assert admitted.remaining == 9  # one unit used: the abandoned call's was given back
    assert meter.undone == 1
    assert not meter.abandoned
    assert await redis.zrange(inflight, 0, -1) == [b"next"]


async def _has(redis: Redis, key: str, member: str) -> bool:
    return await redis.zscore(key, member) is not None


async def test_an_abandonment_that_runs_first_makes_the_late_admission_admit_nothing(
    hung: tuple[Meter, Redis, list[float], int],
) -> None:
    meter, redis, _clock, _ = hung
    tenant = uuid.uuid4()
    q_cur, _ = meter.quota_keys(tenant, FREE.window_ms, 1_000)
    # The undo reaches Redis before the admission it undoes (another connection, another order).
    meter.abandoned.append(_abandoned(meter, tenant, "late", q_cur))
    await meter._settle()
    late = await meter.admit(tenant, "late", 1, FREE, now_ms=1_000)
    assert (late.admitted, late.reason) == (False, "abandoned")
    assert await redis.exists(q_cur, meter.inflight_key(tenant)) == 0  # nothing counted, nothing held
    assert (await meter.admit(tenant, "other", 1, FREE, now_ms=1_000)).remaining == 9


def _abandoned(meter: Meter, tenant: uuid.UUID, call_id: str, quota_key: str) -> object:
    from tenantry.metering.meter import _Abandoned

    mark = f"{meter.inflight_key(tenant).rsplit(':', 1)[0]}:ab:{call_id}"
    return _Abandoned(quota_key, meter.inflight_key(tenant), mark, call_id, 1, 60_000)


async def test_a_hung_redis_costs_one_timeout_per_breaker_interval_not_one_per_call(
    hung: tuple[Meter, Redis, list[float], int],
) -> None:
    meter, _, clock, pid = hung
    with frozen(pid):
        started = time.perf_counter()
        decisions = [await meter.admit(uuid.uuid4(), f"c{n}", 1, PAID) for n in range(20)]
        elapsed = time.perf_counter() - started
        assert all(d.admitted and d.bypassed for d in decisions)
        assert elapsed < 0.2 * 3, elapsed  # one 0.2 s timeout, then decided at once
        assert meter.down
        assert meter.failures == 20
        clock[0] += 10  # the breaker lets one call probe: still hung, so it opens again (longer)
        probe = await meter.admit(uuid.uuid4(), "probe", 1, PAID)
        assert probe.bypassed
    clock[0] += 10
    resumed = await meter.admit(uuid.uuid4(), "resumed", 1, PAID)
    assert (resumed.admitted, resumed.bypassed) == (True, False)
    assert not meter.down


async def test_while_the_breaker_is_open_events_go_to_postgres_at_once_and_slots_free_on_recovery(
    hung: tuple[Meter, Redis, list[float], int], db: Database, admin: Admin
) -> None:
    meter, redis, clock, pid = hung
    tenant = await admin.create_tenant()
    tid = uuid.UUID(tenant.id)
    ledger = Ledger(meter._commands, db, stream=f"hung-{uuid.uuid4().hex}:{{ledger}}", meter=meter)
    admitted = await meter.admit(tid, "held", 1, FREE)  # a real admission, whose slot the ledger frees
    assert admitted.admitted
    with frozen(pid):
        await meter.admit(uuid.uuid4(), "trips-the-breaker", 1, PAID)
        started = time.perf_counter()
        await ledger.record(event(tenant.id), release=(meter.inflight_key(tid), "held"))
        assert time.perf_counter() - started < 0.15  # no second timeout: straight to PostgreSQL
    assert ledger.fallbacks == 1
    assert await stored(db, tenant.id) != []
    assert await redis.zscore(meter.inflight_key(tid), "held") is not None  # not yet freed...
    clock[0] += 10
    assert (await meter.admit(tid, "after", 1, FREE)).admitted  # ...freed first, so the cap of 1 admits
    assert await redis.zscore(meter.inflight_key(tid), "held") is None


async def test_calls_arriving_together_after_an_outage_share_the_leftover_work(
    hung: tuple[Meter, Redis, list[float], int],
) -> None:
    """Entries left to free and admissions left to undo are each settled once, however many calls
    arrive at once when Redis answers again, and none of those calls fails for it."""
    meter, redis, _, _ = hung
    tenant = uuid.uuid4()
    inflight = meter.inflight_key(tenant)
    await redis.zadd(inflight, {f"gone-{n}": 10**15 for n in range(20)})
    for n in range(20):
        meter.release_later(inflight, f"gone-{n}")
    decisions = await asyncio.gather(*(meter.admit(tenant, f"c{n}", 1, PAID) for n in range(30)))
    assert sum(d.admitted for d in decisions) == 1  # the cap of one: the freed entries made room
    assert not meter.unreleased
    assert await redis.zcard(inflight) == 1
