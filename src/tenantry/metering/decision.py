"""What the meter answers: a `Decision` for a call or a request, and `Usage` for the quota window."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Literal, TypedDict

REASONS: Final = frozenset(
    {
        "quota_exceeded",
        "read_quota_exceeded",
        "rate_limited",
        "concurrency_limited",
        "cost_exceeds_limit",
        "meter_unavailable",
        "abandoned",
    }
)
# Which window a metered request counts against: tool calls (`calls_per_window`) or resource reads
# (`reads_per_window`). Both share the request rate and the in-flight cap.
QuotaKind = Literal["calls", "reads"]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    reason: str | None  # None or one of REASONS
    retry_after_ms: int  # 0 when admitted; when refused, the wait until the same call would pass; -1 never
    limit: int | None  # the quota limit (for check_rate: the per-minute limit)
    remaining: int | None  # quota units left in the window after this decision (None if unlimited or unknown)
    bypassed: bool = False  # Redis was unreachable and fail_open admitted the call unmetered


class Usage(TypedDict):
    limit: int | None
    used: int | None  # quota units counted in the sliding window (rounded up); None when unlimited
    remaining: int | None
    window_seconds: int
    resets_in_ms: int  # until the window holds nothing of what is counted now (used would be 0)
    window_ends_in_ms: int  # until the current fixed window rolls over


def window_usage(limit: int | None, window_ms: int, now: int, cur: int, prev: int) -> Usage:
    """A sliding window as the next admission would see it, from its two fixed-window counts."""
    elapsed = now % window_ms
    if limit is None:
        return Usage(
            limit=None,
            used=None,
            remaining=None,
            window_seconds=window_ms // 1000,
            resets_in_ms=0,
            window_ends_in_ms=window_ms - elapsed,
        )
    scaled = prev * (window_ms - elapsed) + cur * window_ms  # estimate * window, exact
    used = -(-scaled // window_ms)  # rounded up, so used + remaining == limit and remaining is what admit allows
    if cur:
        resets_in = (window_ms - elapsed) + window_ms  # this window's count decays through the next one
    elif prev:
        resets_in = window_ms - elapsed
    else:
        resets_in = 0
    return Usage(
        limit=limit,
        used=used,
        remaining=max(0, limit - used),
        window_seconds=window_ms // 1000,
        resets_in_ms=resets_in,
        window_ends_in_ms=window_ms - elapsed,
    )


class OverRate:
    """Tenants over their request rate, until when (ms, the meter's clock): every request of theirs is
    refused from memory, without a round trip, until the rate lets one through again (exact: other
    replicas can only add to the count), so a flood costs no Redis work. Forgotten when the tenant
    changes (its limits may have); at most `capacity` tenants (the oldest ask Redis again)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._until: OrderedDict[uuid.UUID, int] = OrderedDict()
        self._capacity = capacity

    def __bool__(self) -> bool:
        return bool(self._until)

    def hold(self, tenant_id: uuid.UUID, until: int) -> None:
        self._until[tenant_id] = until
        if len(self._until) > self._capacity:
            self._until.popitem(last=False)

    def held(self, tenant_id: uuid.UUID, now: int, limit: int | None, report_rate: bool) -> Decision | None:
        """The refusal while `tenant_id` is held (`limit` and `remaining` as the caller reports them)."""
        until = self._until.get(tenant_id)
        if until is None:
            return None
        if now >= until:
            del self._until[tenant_id]
            return None
        return Decision(False, "rate_limited", until - now, limit, 0 if report_rate else None)

    def forget(self, tenant_id: uuid.UUID | None = None) -> None:
        if tenant_id is None:
            self._until.clear()
        else:
            self._until.pop(tenant_id, None)
