"""The per-tenant meter: quota, request rate and in-flight cap, decided and counted in one round trip.

A tool call counts against the calls window (`calls_per_window`), a resource read against the reads
window (`reads_per_window`, `admit(..., quota="reads")`): the same script over another pair of
counter keys, so neither costs more than the other.

Design
------
One Lua script (`meter.lua`, package data) checks every limit that applies
to the call and, only if all of them pass, counts the call against all of
them, atomically; a refused call consumes nothing. It runs by EVALSHA.

Every command goes through one `RedisCommands` (`commands.py`): the app gives
the meter the lean RESP client of `resp.py` (redis-py spent ~200-250 µs of
client CPU per EVALSHA against ~30-45 µs of Redis's own time, and the admit
runs on every metered tool call; the lean client spends ~50-70 µs,
bench/bench_meter.py), or redis-py behind the same interface. Both raise
redis-py's classes, so the outage handling below is one code path.

Quota and request rate are sliding-window counters: two fixed-window counters
weighted by the overlap, `previous * (window - elapsed) / window + current`,
so memory per (tenant, limit) is two small integer keys whatever the limit.
Window-index key names are computed here from `now_ms` and every key is
passed in KEYS; all of a tenant's keys carry the hash tag `{<tenant uuid>}`
so they live on one Redis Cluster slot. A counter key expires two windows
after the call that created it (it is then past use: its own window and the
next, where it is the previous one, are over).

The in-flight cap is a sorted set of call ids scored by their deadline
(`now + call_timeout_ms`); expired entries are dropped before each check, so
a crashed process cannot leak slots beyond its calls' deadlines.

When Redis is unreachable (or, on a Redis Cluster, the tenant's slot is
mid-migration or its master down: `SlotUnavailable`, those tenants only) the tenant's plan decides
(`Limits.fail_open`): admit unmetered (`bypassed=True`) or refuse
(`meter_unavailable`). `admit` never raises for that; `failures` counts them.
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Callable
from importlib.resources import files
from typing import Final

from redis.asyncio import Redis

from tenantry.errors import Unavailable
from tenantry.metering.backlog import REDIS_DOWN as _REDIS_DOWN
from tenantry.metering.backlog import Abandoned as _Abandoned
from tenantry.metering.backlog import settle
from tenantry.metering.breaker import RedisBreaker
from tenantry.metering.commands import RedisCommands, as_commands
from tenantry.metering.decision import REASONS, Decision, OverRate, QuotaKind, Usage, wall_clock_ms, window_usage
from tenantry.metering.resp import LuaScript
from tenantry.metering.slots import SlotLost, SlotUnavailable
from tenantry.plans import Limits

__all__ = ["REASONS", "Decision", "Meter", "QuotaKind", "Usage", "wall_clock_ms"]

METER_LUA: Final[str] = files("tenantry.metering").joinpath("meter.lua").read_text(encoding="utf-8")
ABANDON_LUA: Final[str] = files("tenantry.metering").joinpath("abandon.lua").read_text(encoding="utf-8")

RATE_WINDOW_MS: Final = 60_000
WINDOWS: Final = ("calls", "reads", "requests")  # what `Meter.windows` reads: the two quotas and the rate
# Abandoned admissions waiting to be undone, at most (the oldest dropped: their entries expire anyway).
_MAX_ABANDONED: Final = 100_000
# Rate-limited tenants remembered at once, at most (the oldest are forgotten: they ask Redis again).
_MAX_RATE_LIMITED: Final = 10_000

_NO_LIMIT: Final = -1

# The retry hint of `concurrency_limited`. The script knows only when the oldest call in flight must have
# ended (its deadline, up to the call timeout: a client told "retry in 120 s" waits two minutes), but a
# slot frees as soon as any of those calls ends, typically within milliseconds: a short wait a client can
# obey without hammering. The script's answer is kept when it is sooner (the last slot's deadline is near).
CONCURRENCY_RETRY_MS: Final = 250


class Meter:
    def __init__(
        self,
        client: Redis | RedisCommands,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        key_prefix: str = "tenantry",
        timeout_s: float | None = None,
        unavailable_retry_ms: int = 1000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`client` carries the meter's commands (`commands.py`); a redis-py client is bounded by
        `timeout_s` per round trip on top of its own timeouts (a lean client has its own). Past it the
        call is treated as "Redis unreachable". `unavailable_retry_ms` is the retry hint given with
        `meter_unavailable`."""
        self._commands = as_commands(client, timeout=timeout_s)
        self._lua = LuaScript(METER_LUA)
        self._abandon_lua = LuaScript(ABANDON_LUA)
        self._clock = clock
        self._prefix = key_prefix
        self._unavailable_retry_ms = unavailable_retry_ms
        self.failures = 0  # Redis unreachable (each admit/check_rate/release/usage that could not reach it)
        self._breaker = RedisBreaker(clock=monotonic)
        self.abandoned: collections.deque[_Abandoned] = collections.deque(maxlen=_MAX_ABANDONED)
        self.undone = 0  # abandoned admissions found to have run, and undone
        self._over_rate = OverRate(_MAX_RATE_LIMITED)
        # In-flight entries of calls that ended while Redis could not be told (their events went to PostgreSQL).
        self.unreleased: collections.deque[tuple[str, str]] = collections.deque(maxlen=_MAX_ABANDONED)

    # -- keys ---------------------------------------------------------------------------------

    def over_rate(self, tenant_id: uuid.UUID, limits: Limits) -> Decision | None:
        """The refusal of a tenant known to be over its request rate, decided here (no round trip);
        None when it is not known to be (the meter's round trip decides then)."""
        if not self._over_rate or limits.unmetered:
            return None
        return self._over_rate.held(tenant_id, self._clock(), limits.calls_per_window, False)

    def forget(self, tenant_id: uuid.UUID | None = None) -> None:
        """Ask Redis again about `tenant_id` (all tenants: None): its limits may have changed."""
        self._over_rate.forget(tenant_id)

    def _base(self, tenant_id: uuid.UUID) -> str:
        return f"{self._prefix}:{{{tenant_id}}}"

    def quota_keys(self, tenant_id: uuid.UUID, window_ms: int, now_ms: int, quota: str = "calls") -> tuple[str, str]:
        """(current, previous) quota counter keys at `now_ms` of the calls or the reads window; the window
        length is in the name, so changing a plan's window never mixes counts of different windows."""
        index = now_ms // window_ms
        base = self._base(tenant_id)
        window = "rd" if quota == "reads" else "q"
        return f"{base}:{window}:{window_ms}:{index}", f"{base}:{window}:{window_ms}:{index - 1}"

    def rate_keys(self, tenant_id: uuid.UUID, now_ms: int) -> tuple[str, str]:
        index = now_ms // RATE_WINDOW_MS
        base = self._base(tenant_id)
        return f"{base}:r:{index}", f"{base}:r:{index - 1}"

    def inflight_key(self, tenant_id: uuid.UUID) -> str:
        return f"{self._base(tenant_id)}:inflight"

    # -- the breaker and abandoned admissions -------------------------------------------------

    @property
    def down(self) -> bool:
        """Whether the meter is deciding without Redis now (it failed to answer a moment ago)."""
        return self._breaker.open

    def _unanswered(self, *, trip: bool = True) -> None:
        """Redis did not answer: count it, and open the breaker unless only a lost master's slots are out."""
        self.failures += 1
        if trip:
            self._breaker.unanswered()

    def release_later(self, key: str, call_id: str) -> None:
        self.unreleased.append((key, call_id))  # its call ended while Redis did not answer: free it later

    async def _settle(self) -> None:
        """Undo the admissions given up on, free the entries of calls that ended meanwhile (`backlog.py`)."""
        self.undone += await settle(
            self._commands, self._abandon_lua, self.unreleased, self.abandoned, self._unanswered
        )

    # -- decisions ----------------------------------------------------------------------------

    async def admit(
        self,
        tenant_id: uuid.UUID,
        call_id: str,
        cost: int,
        limits: Limits,
        *,
        now_ms: int | None = None,
        call_timeout_ms: int = 120_000,
        quota: QuotaKind = "calls",
    ) -> Decision:
        """Decide whether a tool call (`quota="calls"`) or a resource read (`"reads"`) of `cost` quota units
        may run, and if so count it (one round trip). The two count against their own windows
        (`calls_per_window`, `reads_per_window`; a read over its window is `read_quota_exceeded`) and share
        the request rate and the in-flight cap."""
        if cost < 0:
            raise ValueError("cost must be >= 0")
        if call_timeout_ms <= 0:
            raise ValueError("call_timeout_ms must be positive")
        if limits.unmetered:
            return Decision(admitted=True, reason=None, retry_after_ms=0, limit=None, remaining=None)
        reads = quota == "reads"
        window_limit = limits.reads_per_window if reads else limits.calls_per_window
        if window_limit is not None and cost > window_limit:
            # Never admissible: no round trip needed.
            return Decision(False, "cost_exceeds_limit", -1, window_limit, None)
        now = self._clock() if now_ms is None else now_ms
        return await self._run(
            tenant_id,
            call_id,
            now,
            cost=cost,
            quota=window_limit,
            window_ms=limits.window_ms,
            rate=limits.requests_per_minute,
            concurrent=limits.max_concurrent,
            call_timeout_ms=call_timeout_ms,
            limits=limits,
            report_rate=False,
            reads=reads,
        )

    async def check_rate(self, tenant_id: uuid.UUID, limits: Limits, *, now_ms: int | None = None) -> Decision:
        """For requests that are not tool calls: only the per-minute request limit, counting this request.

        `limit` and `remaining` in the decision are those of the per-minute limit.
        """
        rate = limits.requests_per_minute
        if rate is None:
            return Decision(admitted=True, reason=None, retry_after_ms=0, limit=None, remaining=None)
        now = self._clock() if now_ms is None else now_ms
        return await self._run(
            tenant_id,
            "",
            now,
            cost=0,
            quota=None,
            window_ms=limits.window_ms,
            rate=rate,
            concurrent=None,
            call_timeout_ms=1,
            limits=limits,
            report_rate=True,
        )

    async def _run(
        self,
        tenant_id: uuid.UUID,
        call_id: str,
        now: int,
        *,
        cost: int,
        quota: int | None,
        window_ms: int,
        rate: int | None,
        concurrent: int | None,
        call_timeout_ms: int,
        limits: Limits,
        report_rate: bool,
        reads: bool = False,
    ) -> Decision:
        # The names quota_keys(), rate_keys() and inflight_key() give, from one formatting of the tenant id.
        base = self._base(tenant_id)
        q_index, r_index = now // window_ms, now // RATE_WINDOW_MS
        window = "rd" if reads else "q"  # reads count in counters of their own; the script is the same
        keys = [
            f"{base}:{window}:{window_ms}:{q_index}",
            f"{base}:{window}:{window_ms}:{q_index - 1}",
            f"{base}:r:{r_index}",
            f"{base}:r:{r_index - 1}",
            f"{base}:inflight",
            f"{base}:ab:{call_id}",
        ]
        args: list[int | str] = [
            now,
            call_id,
            cost,
            _NO_LIMIT if quota is None else quota,
            window_ms,
            now % window_ms,
            _NO_LIMIT if rate is None else rate,
            RATE_WINDOW_MS,
            now % RATE_WINDOW_MS,
            _NO_LIMIT if concurrent is None else concurrent,
            call_timeout_ms,
        ]
        limit = rate if report_rate else quota
        held = self._over_rate.held(tenant_id, now, limit, report_rate)
        if held is not None:
            return held
        if not self._breaker.may_ask():
            self.failures += 1
            return self._without_redis(limits, limit)
        if self.abandoned or self.unreleased:
            await self._settle()
        try:
            reply = await self._commands.evalsha(self._lua, keys, args)
        except SlotUnavailable:  # the script did not run; the breaker stays shut: only this tenant's slot is out
            self.failures += 1
            return self._without_redis(limits, limit)
        except _REDIS_DOWN as exc:
            self._unanswered(trip=not isinstance(exc, SlotLost))  # a dead cluster master: only its slots
            if call_id:  # the script may still run when Redis resumes: make sure it admits nothing then
                mark_ms = max(2 * call_timeout_ms, 600_000)
                self.abandoned.append(_Abandoned(keys[0], keys[4], keys[5], call_id, cost, mark_ms))
            return self._without_redis(limits, limit)
        self._breaker.answered()
        admitted, reason, retry, q_remaining, r_remaining, r_retry = reply
        remaining = r_remaining if report_rate else q_remaining
        reason_text = reason.decode() if isinstance(reason, bytes) else str(reason)
        if reads and reason_text == "quota_exceeded":  # the script names the window it checked "quota"
            reason_text = "read_quota_exceeded"
        retry, r_retry = int(retry), int(r_retry)
        if r_retry > 0:  # on the meter's clock, like every window
            self._over_rate.hold(tenant_id, now + r_retry)
        if reason_text == "concurrency_limited" and retry > CONCURRENCY_RETRY_MS:
            retry = CONCURRENCY_RETRY_MS
        return Decision(
            admitted=bool(admitted),
            reason=reason_text or None,
            retry_after_ms=retry,
            limit=limit,
            remaining=None if limit is None else int(remaining),
        )

    def _without_redis(self, limits: Limits, limit: int | None) -> Decision:
        """The plan's outage policy: admit unmetered (recorded as such), or refuse."""
        if limits.fail_open:
            return Decision(True, None, 0, limit, None, bypassed=True)
        return Decision(False, "meter_unavailable", self._unavailable_retry_ms, limit, None)

    # -- in-flight slots -----------------------------------------------------------------------

    async def release(self, tenant_id: uuid.UUID, call_id: str, limits: Limits | None = None) -> None:
        """Take the call out of the in-flight set. With unmetered `limits`, no round trip at all.

        Never raises for Redis being unreachable: the entry then frees itself at its deadline.
        """
        if limits is not None and limits.unmetered:
            return
        key = self.inflight_key(tenant_id)
        try:
            await self._commands.execute("ZREM", key, call_id)
        except _REDIS_DOWN:
            self.failures += 1

    # -- read-only ---------------------------------------------------------------------------

    async def usage(
        self, tenant_id: uuid.UUID, limits: Limits, *, now_ms: int | None = None, quota: QuotaKind = "calls"
    ) -> Usage:
        """The calls (or reads) window as the next `admit` would see it (see `windows`)."""
        return (await self.windows(tenant_id, limits, now_ms=now_ms, kinds=(quota,)))[quota]

    async def windows(
        self, tenant_id: uuid.UUID, limits: Limits, *, now_ms: int | None = None, kinds: tuple[str, ...] = WINDOWS
    ) -> dict[str, Usage]:
        """The meter's windows of the tenant as the next admission would see them: `calls`, `reads`, and
        `requests` (the per-minute rate), in one round trip (none when none of them is limited); counts
        nothing. Raises `Unavailable` (`meter_unavailable`) when Redis is unreachable."""
        now = self._clock() if now_ms is None else now_ms
        w = limits.window_ms
        spans = {
            "calls": (limits.calls_per_window, w),
            "reads": (limits.reads_per_window, w),
            "requests": (limits.requests_per_minute, RATE_WINDOW_MS),
        }
        asked = [name for name in kinds if spans[name][0] is not None]
        counts: dict[str, tuple[int, int]] = {}
        if asked:
            keys = [
                self.rate_keys(tenant_id, now) if n == "requests" else self.quota_keys(tenant_id, w, now, n)
                for n in asked
            ]
            try:
                raw = await self._commands.execute("MGET", *(key for pair in keys for key in pair))
            except _REDIS_DOWN as exc:
                self.failures += 1
                raise Unavailable("the usage meter is unavailable", code="meter_unavailable") from exc
            values = [int(v) if v is not None else 0 for v in raw]
            counts = {name: (values[2 * i], values[2 * i + 1]) for i, name in enumerate(asked)}
        return {name: window_usage(*spans[name], now, *counts.get(name, (0, 0))) for name in kinds}
