"""A tenant's report: per tool, resource and prompt, what was called, what failed, what was refused and how fast.

It reads the hourly roll-ups the database keeps as events are drained (`usage_rollups` and
`refusal_rollups`, migration 0011), never the raw events, so a 7-day report over a million events
reads a few thousand rows. One function serves the admin (`GET /api/tenants/{id}/report`, the CLI, on
the owner's pool) and the tenant itself (`usage_summary` with `report`, under RLS); both name the
tenant explicitly, so the two can never disagree.

- Roll-ups are hourly (UTC), so the range is widened to whole hours; the answer's `since`/`until`
  say which range it covers. Day buckets are UTC days.
- Latency percentiles come from a fixed histogram (`LATENCY_BOUNDS_MS`): `p95` is the upper bound of
  the bucket holding the 95th percentile (so the true p95 is at most that), capped at the largest
  latency seen (which is also its value when it falls past the last bound).
- Errors are events whose outcome is not `ok`, by outcome code; refusals (which leave no usage event)
  come from refused audit records, by reason.
- Like `usage.py`, it includes calls up to the ledger drain, which lags by well under a second.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.errors import BadRequest, Unavailable
from tenantry.metering.meter import Meter
from tenantry.plans import Limits

Bucket = Literal["hour", "day"]
BUCKETS: Final = ("hour", "day")
DEFAULT_RANGE: Final = timedelta(days=7)
MAX_RANGE: Final = timedelta(days=400)
# Hourly points over more than a month make a plot nobody can read and an answer of megabytes.
MAX_HOURLY_RANGE: Final = timedelta(days=31)
# Upper bounds (ms, exclusive) of the latency histogram's buckets; one more bucket holds the rest.
# Frozen in migration 0011 (`tenantry_latency_bounds()`), which the roll-ups were counted with.
LATENCY_BOUNDS_MS: Final = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

# Sections of the report, by the `kind` the roll-ups hold.
SECTIONS: Final = {"tool": "tools", "resource": "resources", "prompt": "prompts", "request": "requests"}

# The SQL is spelled out (no string building): a period is a UTC hour or day (`:unit`).
_EVENTS_FROM_ROLLUPS = text(
    """
    SELECT date_trunc(CAST(:unit AS text), bucket, 'UTC') AS period, kind, name, outcome,
           CAST(sum(calls) AS bigint) AS calls, CAST(sum(units) AS bigint) AS units,
           sum(latency_sum_ms) AS latency_sum, min(latency_min_ms) AS latency_min,
           max(latency_max_ms) AS latency_max, tenantry_histogram_sum(latency_histogram) AS histogram
    FROM usage_rollups WHERE tenant_id = :tenant_id AND bucket >= :since AND bucket < :until
    GROUP BY 1, 2, 3, 4
    """
)
_REFUSALS_FROM_ROLLUPS = text(
    """
    SELECT date_trunc(CAST(:unit AS text), bucket, 'UTC') AS period, kind, name, reason,
           CAST(sum(refusals) AS bigint) AS refusals
    FROM refusal_rollups WHERE tenant_id = :tenant_id AND bucket >= :since AND bucket < :until
    GROUP BY 1, 2, 3, 4
    """
)

# The same rows counted from the raw events and audit records: what the roll-ups must always equal (tests),
# and the reference the benchmark times them against. Never used to answer a report. The histogram comes
# as parallel arrays of slots and counts.
_EVENTS_FROM_EVENTS = text(
    """
    SELECT period, kind, name, outcome, CAST(sum(calls) AS bigint) AS calls, CAST(sum(units) AS bigint) AS units,
           sum(latency_sum) AS latency_sum, min(latency_min) AS latency_min, max(latency_max) AS latency_max,
           array_agg(slot) AS slots, array_agg(calls) AS slot_counts
    FROM (SELECT date_trunc(CAST(:unit AS text), occurred_at, 'UTC') AS period, tenantry_usage_kind(tool) AS kind,
                 tenantry_usage_name(tool) AS name, outcome,
                 width_bucket(latency_ms, tenantry_latency_bounds()) AS slot, count(*) AS calls,
                 CAST(sum(units) AS bigint) AS units, sum(latency_ms) AS latency_sum, min(latency_ms) AS latency_min,
                 max(latency_ms) AS latency_max
          FROM usage_events WHERE tenant_id = :tenant_id AND occurred_at >= :since AND occurred_at < :until
          GROUP BY 1, 2, 3, 4, 5) e
    GROUP BY 1, 2, 3, 4
    """
)
_REFUSALS_FROM_RECORDS = text(
    """
    SELECT date_trunc(CAST(:unit AS text), at, 'UTC') AS period, tenantry_refusal_kind(method, tool) AS kind,
           coalesce(tenantry_usage_name(tool), method) AS name, coalesce(reason, outcome) AS reason,
           count(*) AS refusals
    FROM audit_records
    WHERE tenant_id = :tenant_id AND at >= :since AND at < :until AND decision = 'refused'
    GROUP BY 1, 2, 3, 4
    """
)


def report_range(
    since: datetime | None, until: datetime | None, bucket: str = "day", *, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """A checked [since, until), widened to whole hours; the default is the 7 days before `until` (now)."""
    if bucket not in BUCKETS:
        raise BadRequest(f"unknown bucket {bucket!r}; buckets are {', '.join(BUCKETS)}", code="invalid_bucket")
    until = _aware(until) if until is not None else (now or datetime.now(UTC))
    since = _aware(since) if since is not None else until - DEFAULT_RANGE
    if since >= until:
        raise BadRequest("'since' must be before 'until'", code="invalid_range")
    if until - since > MAX_RANGE:
        raise BadRequest(f"a report may span at most {MAX_RANGE.days} days", code="invalid_range")
    if bucket == "hour" and until - since > MAX_HOURLY_RANGE:
        raise BadRequest(
            f"hourly buckets may span at most {MAX_HOURLY_RANGE.days} days; use bucket=day", code="invalid_range"
        )
    start = _floor(since, "hour")
    end = _floor(until, "hour")
    return start, end if end == until else end + timedelta(hours=1)


def _aware(moment: datetime) -> datetime:
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _floor(moment: datetime, bucket: str) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def _periods(since: datetime, until: datetime, bucket: str) -> Iterator[datetime]:
    step = timedelta(days=1) if bucket == "day" else timedelta(hours=1)
    period = _floor(since, bucket)
    while period < until:
        yield period
        period += step


class _Tally:
    """What a set of roll-up rows adds up to."""

    __slots__ = ("calls", "errors", "histogram", "latency_max", "latency_min", "latency_sum", "refusals", "units")

    def __init__(self) -> None:
        self.calls = 0
        self.units = 0
        self.errors: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.latency_sum = 0.0
        self.latency_min = math.inf
        self.latency_max = 0.0
        self.histogram = [0] * (len(LATENCY_BOUNDS_MS) + 1)

    def add_events(self, row: Any, histogram: list[int]) -> None:
        self.calls += row.calls
        self.units += row.units
        if row.outcome != "ok":
            self.errors[row.outcome] += row.calls
        self.latency_sum += row.latency_sum
        self.latency_min = min(self.latency_min, row.latency_min)
        self.latency_max = max(self.latency_max, row.latency_max)
        for slot, count in enumerate(histogram):
            self.histogram[slot] += count

    def latency(self) -> dict[str, Any]:
        if not self.calls:
            return {"count": 0, "avg": None, "min": None, "max": None, "p95": None}
        return {
            "count": self.calls,
            "avg": round(self.latency_sum / self.calls, 3),
            "min": self.latency_min,
            "max": self.latency_max,
            "p95": self.percentile(0.95),
        }

    def percentile(self, q: float) -> float:
        """The upper bound of the histogram bucket holding the q-th latency, capped at the largest seen."""
        rank = max(1, math.ceil(q * self.calls))
        seen = 0
        for slot, count in enumerate(self.histogram):
            seen += count
            if seen >= rank and slot < len(LATENCY_BOUNDS_MS):
                return min(float(LATENCY_BOUNDS_MS[slot]), self.latency_max)
        return self.latency_max

    def point(self, period: datetime) -> dict[str, Any]:
        return {
            "start": period.isoformat(),
            "calls": self.calls,
            "units": self.units,
            "errors": sum(self.errors.values()),
            "refusals": sum(self.refusals.values()),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "units": self.units,
            "ok": self.calls - sum(self.errors.values()),
            "errors": dict(sorted(self.errors.items())),
            "refusals": dict(sorted(self.refusals.items())),
            "latency_ms": self.latency(),
        }


async def build_report(
    conn: AsyncConnection,
    meter: Meter | None,
    tenant_id: uuid.UUID,
    limits: Limits,
    since: datetime,
    until: datetime,
    bucket: str = "day",
    *,
    from_raw_events: bool = False,
) -> dict[str, Any]:
    """The report of `tenant_id` over [since, until) (checked by `report_range`), bucketed by `bucket`.

    `from_raw_events` counts the raw events and audit records instead of the roll-ups: the reference
    tests and the benchmark compare the roll-ups with, never how a report is answered. `meter=None`
    leaves the quota out (the reference)."""
    params = {"tenant_id": tenant_id, "since": since, "until": until, "unit": bucket}
    events_sql, refusals_sql = (
        (_EVENTS_FROM_EVENTS, _REFUSALS_FROM_RECORDS)
        if from_raw_events
        else (_EVENTS_FROM_ROLLUPS, _REFUSALS_FROM_ROLLUPS)
    )
    totals = _Tally()
    items: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    item_points: dict[tuple[str, str], dict[datetime, _Tally]] = defaultdict(lambda: defaultdict(_Tally))
    points: dict[datetime, _Tally] = defaultdict(_Tally)
    for row in await conn.execute(events_sql, params):
        key = (row.kind, row.name)
        histogram = row.histogram if not from_raw_events else _histogram(row.slots, row.slot_counts)
        for tally in (totals, items[key], item_points[key][row.period], points[row.period]):
            tally.add_events(row, histogram)
    for row in await conn.execute(refusals_sql, params):
        key = (row.kind, row.name)
        for tally in (totals, items[key], item_points[key][row.period], points[row.period]):
            tally.refusals[row.reason] += row.refusals
    report: dict[str, Any] = {
        "tenant_id": str(tenant_id),
        "since": since.isoformat(),
        "until": until.isoformat(),
        "bucket": bucket,
        "latency_bounds_ms": list(LATENCY_BOUNDS_MS),
        "totals": totals.summary(),
    }
    for kind, section in SECTIONS.items():
        report[section] = {
            name: {
                **tally.summary(),
                "series": [p.point(period) for period, p in sorted(item_points[(k, name)].items())],
            }
            for (k, name), tally in sorted(items.items())
            if k == kind
        }
    empty = _Tally()
    report["series"] = [
        {**points.get(period, empty).point(period), "latency_ms": points.get(period, empty).latency()}
        for period in _periods(since, until, bucket)
    ]
    if meter is not None:
        report["quota"] = await quota(meter, tenant_id, limits)
    return report


def _histogram(slots: list[int], counts: list[int]) -> list[int]:
    histogram = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for slot, count in zip(slots, counts, strict=True):
        histogram[slot] += count
    return histogram


async def quota(meter: Meter, tenant_id: uuid.UUID, limits: Limits) -> dict[str, Any]:
    """Quota utilisation per kind, now. A report is history: an unreachable meter leaves `used` unknown
    (with the error's code) rather than failing the report."""
    try:
        usage = await meter.usage(tenant_id, limits)
    except Unavailable as exc:
        return {"calls": {"used": None, "limit": limits.calls_per_window, "error": exc.code}}
    calls = {"used": usage["used"], "limit": usage["limit"], "window_seconds": usage["window_seconds"]}
    return {"calls": cast(dict[str, Any], calls)}
