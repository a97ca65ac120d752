"""A tenant's report: per tool, resource and prompt, what was called, what failed, what was refused and how fast.

It reads the hourly roll-ups the database keeps as events are drained (`usage_rollups` and
`refusal_rollups`, migration 0012), never the raw events: a 7-day report over a million events reads
one row per hour, item and outcome (~22,000 in bench/bench_report.py) instead of a million. One
function serves the admin (`GET /api/tenants/{id}/report`, the CLI, on the owner's pool) and the
tenant itself (`usage_summary` with `report`, under RLS); both name the tenant explicitly, so the two
can never disagree.

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
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db.engine import Database
from tenantry.db.router import SHARED
from tenantry.errors import BadRequest, Unavailable
from tenantry.metering.meter import Meter
from tenantry.metering.quotas import quota_usage
from tenantry.plans import Limits

BUCKETS: Final = ("hour", "day")
DEFAULT_RANGE: Final = timedelta(days=7)
MAX_RANGE: Final = timedelta(days=400)
# Hourly points over more than a month make a plot nobody can read and an answer of megabytes.
MAX_HOURLY_RANGE: Final = timedelta(days=31)
# Upper bounds (ms, exclusive) of the latency histogram's buckets; one more bucket holds the rest.
# Frozen in migration 0012 (`tenantry_latency_bounds()`), which the roll-ups were counted with.
LATENCY_BOUNDS_MS: Final = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

# Sections of the report, by the `kind` the roll-ups hold.
SECTIONS: Final = {"tool": "tools", "resource": "resources", "prompt": "prompts", "request": "requests"}

# The database does the adding and this module only shapes the answer. A query may answer several
# groupings at once (GROUPING SETS); `grouping_set` tells them apart (a bit per column left out: period,
# kind, outcome/reason). A period is a UTC hour or day (`:unit`). The items' series come from a query of
# their own: grouped with the histograms, hourly, they made the hash table spill to disk (2x slower).
_PER_ITEM, _PER_PERIOD = 4, 3
_EVENTS = """
    SELECT GROUPING(period, kind, outcome) AS grouping_set, period, kind, name, outcome,
           CAST(sum(calls) AS bigint) AS calls, CAST(sum(units) AS bigint) AS units,
           CAST(coalesce(sum(calls) FILTER (WHERE outcome <> 'ok'), 0) AS bigint) AS errors,
           sum(latency_sum_ms) AS latency_sum, min(latency_min_ms) AS latency_min,
           max(latency_max_ms) AS latency_max,
           -- Slot by slot with the native sum (a custom aggregate over the arrays, tried first, made the
           -- report 12x slower): one term per histogram slot, len(LATENCY_BOUNDS_MS) + 1 of them.
           CAST(ARRAY[
               sum(h[1]), sum(h[2]), sum(h[3]), sum(h[4]), sum(h[5]), sum(h[6]), sum(h[7]), sum(h[8]), sum(h[9]),
               sum(h[10]), sum(h[11]), sum(h[12]), sum(h[13]), sum(h[14]), sum(h[15]), sum(h[16]), sum(h[17])
           ] AS bigint[]) AS histogram
    FROM (SELECT date_trunc(CAST(:unit AS text), bucket, 'UTC') AS period, latency_histogram AS h, *
          FROM usage_rollups WHERE tenant_id = :tenant_id AND bucket >= :since AND bucket < :until) r
    GROUP BY GROUPING SETS ((kind, name, outcome), (period))
"""
_EVENT_SERIES = """
    SELECT date_trunc(CAST(:unit AS text), bucket, 'UTC') AS period, kind, name,
           CAST(sum(calls) AS bigint) AS calls, CAST(sum(units) AS bigint) AS units,
           CAST(coalesce(sum(calls) FILTER (WHERE outcome <> 'ok'), 0) AS bigint) AS errors
    FROM usage_rollups WHERE tenant_id = :tenant_id AND bucket >= :since AND bucket < :until
    GROUP BY 1, 2, 3
"""
_REFUSALS = """
    SELECT GROUPING(period, kind, reason) AS grouping_set, period, kind, name, reason,
           CAST(sum(refusals) AS bigint) AS refusals
    FROM (SELECT date_trunc(CAST(:unit AS text), bucket, 'UTC') AS period, * FROM refusal_rollups
          WHERE tenant_id = :tenant_id AND bucket >= :since AND bucket < :until) r
    GROUP BY GROUPING SETS ((kind, name, reason), (period), (period, kind, name))
"""
# The same report counted from the raw events and audit records (the `*_recount` views of migration
# 0012, under the caller's RLS): what the roll-ups must always equal (tests), and the reference the
# benchmark times them against. Never used to answer a report.
_QUERIES = {
    False: (text(_EVENTS), text(_EVENT_SERIES), text(_REFUSALS)),
    True: (
        text(_EVENTS.replace("usage_rollups", "usage_rollups_recount")),
        text(_EVENT_SERIES.replace("usage_rollups", "usage_rollups_recount")),
        text(_REFUSALS.replace("refusal_rollups", "refusal_rollups_recount")),
    ),
}


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
    """What some roll-up rows add up to: an item's, a period's, or everything's."""

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

    def add_events(self, row: Any) -> None:
        self.calls += row.calls
        self.units += row.units
        if row.outcome is not None and row.outcome != "ok":
            self.errors[row.outcome] += row.calls
        self.latency_sum += row.latency_sum
        self.latency_min = min(self.latency_min, row.latency_min)
        self.latency_max = max(self.latency_max, row.latency_max)
        for slot, count in enumerate(row.histogram):
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

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "units": self.units,
            "ok": self.calls - sum(self.errors.values()),
            "errors": dict(sorted(self.errors.items())),
            "refusals": dict(sorted(self.refusals.items())),
            "latency_ms": self.latency(),
        }


class _Points(dict[datetime, dict[str, Any]]):
    """An item's points by period, made on first use; a period's text is made once for every item (an
    hourly 7-day report has thousands of points over 169 periods)."""

    def __init__(self, starts: dict[datetime, str]) -> None:
        super().__init__()
        self._starts = starts

    def __missing__(self, period: datetime) -> dict[str, Any]:
        start = self._starts.get(period)
        if start is None:
            start = self._starts[period] = period.isoformat()
        point = self[period] = {"start": start, "calls": 0, "units": 0, "errors": 0, "refusals": 0}
        return point


async def _refusals(
    conn: AsyncConnection, db: Database | None, tenant_id: uuid.UUID, sql: Any, params: dict[str, Any]
) -> list[Any]:
    """The refusal rows of the report: a schema- or database-tier tenant's refusals are rolled up in its
    own copy, with the trail whose records they count (tier revision 2); everyone else's here."""
    placement = None if db is None else db.router.cached(tenant_id) or await db.router.placement(tenant_id)
    if db is None or placement is None or placement.tier == SHARED:
        return list(await conn.execute(sql, params))
    async with db.tenant(tenant_id) as copy:
        return list(await copy.execute(sql, params))


async def build_report(
    conn: AsyncConnection,
    meter: Meter | None,
    tenant_id: uuid.UUID,
    limits: Limits,
    since: datetime,
    until: datetime,
    bucket: str = "day",
    *,
    db: Database | None = None,
    tool_counts: tuple[int, int] | None = None,
    recount: bool = False,
    item_series: bool = True,
) -> dict[str, Any]:
    """The report of `tenant_id` over [since, until) (checked by `report_range`), bucketed by `bucket`.

    `recount` counts the raw events and audit records instead of the roll-ups: the reference tests and
    the benchmark compare the roll-ups with, never how a report is answered. `meter=None` leaves the
    quotas out; `tool_counts` is the catalog's (exposed, offered) tool count for `quotas.max_tools`;
    `item_series=False` leaves each item's `series` empty (one query less: the console plots hours from
    `hourly_series` and needs only the items' totals here)."""
    params = {"tenant_id": tenant_id, "since": since, "until": until, "unit": bucket}
    events_sql, series_sql, refusals_sql = _QUERIES[recount]
    totals = _Tally()
    items: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    periods: dict[datetime, _Tally] = defaultdict(_Tally)
    # An item's series is sparse (periods it was used in); the report's is dense, for plots.
    starts: dict[datetime, str] = {}
    item_points: dict[tuple[str, str], _Points] = defaultdict(lambda: _Points(starts))
    for row in await conn.execute(events_sql, params):
        if row.grouping_set == _PER_ITEM:
            items[(row.kind, row.name)].add_events(row)
            totals.add_events(row)
        else:
            periods[row.period].add_events(row)
            periods[row.period].errors["all"] += row.errors  # outcomes are grouped out here
    for row in await conn.execute(series_sql, params) if item_series else ():
        point = item_points[(row.kind, row.name)][row.period]
        point.update(calls=row.calls, units=row.units, errors=row.errors)
    for row in await _refusals(conn, db, tenant_id, refusals_sql, params):
        if row.grouping_set == _PER_ITEM:
            items[(row.kind, row.name)].refusals[row.reason] += row.refusals
            totals.refusals[row.reason] += row.refusals
        elif row.grouping_set == _PER_PERIOD:
            periods[row.period].refusals["all"] += row.refusals
        elif item_series:
            item_points[(row.kind, row.name)][row.period]["refusals"] = row.refusals
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
            name: {**tally.summary(), "series": [p for _, p in sorted(item_points[(k, name)].items())]}
            for (k, name), tally in sorted(items.items())
            if k == kind
        }
    series = []
    for period in _periods(since, until, bucket):
        tally = periods.get(period) or _Tally()
        series.append(
            {
                "start": period.isoformat(),
                "calls": tally.calls,
                "units": tally.units,
                "errors": sum(tally.errors.values()),
                "refusals": sum(tally.refusals.values()),
                "latency_ms": tally.latency(),
            }
        )
    report["series"] = series
    if meter is not None:
        if db is None:
            raise ValueError("a report with quotas reads the tenant's storage: pass `db`")
        report.update(await quotas(conn, meter, tenant_id, limits, tool_counts, db=db))
    return report


async def quotas(
    conn: AsyncConnection,
    meter: Meter,
    tenant_id: uuid.UUID,
    limits: Limits,
    tool_counts: tuple[int, int] | None,
    *,
    db: Database,
) -> dict[str, Any]:
    """Every kind of quota as used/limit now, as the usage API shows it (`quotas.py`). A report is
    history: an unreachable meter leaves the quotas out, with the error's code, rather than failing it."""
    try:
        return {"quotas": await quota_usage(conn, meter, tenant_id, limits, db=db, tools=tool_counts)}
    except Unavailable as exc:
        return {"quotas": None, "quotas_error": exc.code}


# The console's plots need only calls and units per hour of the most called items: one grouping of the
# roll-ups, no histograms, no refusals, and only the rows of the items plotted (a 7-day hourly report at
# 1M events was 250 ms p95 of the page). Each item's points equal the full report's `series` (tests).
_PLOT_SERIES = text(
    """
    WITH hourly AS (
        SELECT bucket, kind, name, CAST(sum(calls) AS bigint) AS calls, CAST(sum(units) AS bigint) AS units
        FROM usage_rollups
        WHERE tenant_id = :tenant_id AND bucket >= :since AND bucket < :until
          AND kind IN ('tool', 'resource', 'prompt')
        GROUP BY bucket, kind, name
    ), most AS (
        SELECT kind, name FROM hourly GROUP BY kind, name ORDER BY sum(calls) DESC, name, kind LIMIT :most
    )
    -- One row per item, its hours as offsets from :since: a few rows to Python, not thousands.
    SELECT kind, name, array_agg(CAST(extract(epoch FROM bucket - :since) / 3600 AS integer)) AS hours,
           array_agg(calls) AS calls, array_agg(units) AS units
    FROM hourly JOIN most USING (kind, name) GROUP BY kind, name
    """
)


async def hourly_series(
    conn: AsyncConnection, tenant_id: uuid.UUID, since: datetime, until: datetime, *, most: int = 8
) -> dict[str, dict[str, list[int]]]:
    """Calls and units per UTC hour of [since, until) (whole hours, checked by `report_range`) of the `most`
    most called tools, resources and prompts, by `<section>:<name>` (`tools:data_get`): `{"calls": [...],
    "units": [...]}`, one count per hour of `hours_of(since, until)`."""
    size = len(hours_of(since, until))
    out: dict[str, dict[str, list[int]]] = {}
    params = {"tenant_id": tenant_id, "since": since, "until": until, "most": most}
    for kind, name, hours, calls, units in await conn.execute(_PLOT_SERIES, params):
        dense = out[f"{SECTIONS[kind]}:{name}"] = {"calls": [0] * size, "units": [0] * size}
        for hour, called, used in zip(hours, calls, units, strict=True):
            dense["calls"][hour] = called
            dense["units"][hour] = used
    return out


def hours_of(since: datetime, until: datetime) -> list[str]:
    """Every UTC hour start of [since, until), as the report's dense `series` names them."""
    return [period.isoformat() for period in _periods(since, until, "hour")]
