"""What the meter answers: a `Decision` for a call or a request, and `Usage` for the quota window."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final, TypedDict

REASONS: Final = frozenset(
    {"quota_exceeded", "rate_limited", "concurrency_limited", "cost_exceeds_limit", "meter_unavailable", "abandoned"}
)


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
