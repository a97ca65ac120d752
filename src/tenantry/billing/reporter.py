"""The usage reporter: successful tool calls -> Stripe meter events, exactly once.

One cycle, under a PostgreSQL advisory lock so one replica reports at a time:

1. **Aggregate** (one transaction): for each tenant with a Stripe customer
   and each meter, the usage events with outcome `ok` that no report covers
   yet are claimed by a new `usage_reports` row (rows in
   `usage_report_events`, whose primary key lets an event be covered once).
   The row's units are computed from exactly the events it covers.
2. **Send**: each pending row becomes one meter event whose `identifier` (and
   `Idempotency-Key`) is derived from the row id, so a resend is the same
   event to Stripe.
3. **Mark**: only after Stripe accepted it, the row becomes `sent`.

A crash after 1 leaves a pending row (sent next cycle); a crash between 2 and
3 resends the same identifier, which Stripe deduplicates; events recorded
meanwhile go into the next row. Transient failures and 429s back the row off
(`next_attempt_at`) and end the cycle; a permanent failure (unknown
customer) parks the row, logs it, shows it in `/health`, and the cycle goes
on with other tenants. A tenant without a Stripe customer is not
aggregated: its events stay unreported and visible in `reconcile` and
`/health` until it gets one. The ledger (`usage_events`) is never updated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry.billing.stripe_client import (
    MeterEvent,
    PermanentStripeFailure,
    StripeBilling,
    TransientStripeFailure,
)
from tenantry.db.engine import Database
from tenantry.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# Called at named points of a cycle; tests raise from it to kill the reporter right there.
FaultHook = Callable[[str], Awaitable[None]]

LOCK_KEY = 0x74656E616E747279  # "tenantry"
# Stripe takes meter event timestamps up to 35 days old; keep a margin for slow retries.
MAX_EVENT_AGE = timedelta(days=35) - timedelta(hours=1)
BACKOFF_BASE = timedelta(seconds=5)
BACKOFF_MAX = timedelta(minutes=30)


def utcnow() -> datetime:
    return datetime.now(UTC)


def identifier_for(report_id: uuid.UUID) -> str:
    """The meter event identifier of a report row: the same on every attempt."""
    return f"tenantry-{report_id}"


@dataclass
class ReportRun:
    locked: bool = True
    reports_created: int = 0
    sent: int = 0
    units_sent: int = 0
    parked: int = 0
    deferred: int = 0
    errors: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "ran": self.locked,
            "reports_created": self.reports_created,
            "sent": self.sent,
            "units_sent": self.units_sent,
            "parked": self.parked,
            "deferred": self.deferred,
            "errors": self.errors,
        }


_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")

_CANDIDATES = text(
    """
    SELECT e.tenant_id, e.tool
    FROM usage_events e JOIN tenants t ON t.id = e.tenant_id
    WHERE e.outcome = 'ok' AND t.stripe_customer_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM usage_report_events r
                      WHERE r.tenant_id = e.tenant_id AND r.event_id = e.event_id)
      AND NOT EXISTS (SELECT 1 FROM usage_reports p
                      WHERE p.tenant_id = e.tenant_id AND p.status = 'parked')
      AND (CAST(:tenants AS uuid[]) IS NULL OR e.tenant_id = ANY(CAST(:tenants AS uuid[])))
    GROUP BY e.tenant_id, e.tool
    """
)
_NEW_REPORT = text(
    """
    INSERT INTO usage_reports (tenant_id, id, meter, units, event_count, event_timestamp, next_attempt_at)
    VALUES (:tenant_id, :id, :meter, 0, 0, :now, :now)
    """
)
_COVER = text(
    """
    INSERT INTO usage_report_events (tenant_id, event_id, report_id)
    SELECT e.tenant_id, e.event_id, :id FROM usage_events e
    WHERE e.tenant_id = :tenant_id AND e.outcome = 'ok' AND e.tool = ANY(CAST(:tools AS text[]))
      AND NOT EXISTS (SELECT 1 FROM usage_report_events r
                      WHERE r.tenant_id = e.tenant_id AND r.event_id = e.event_id)
    """
)
_TOTAL = text(
    """
    UPDATE usage_reports u
    SET units = s.units, event_count = s.n, first_occurred_at = s.first, last_occurred_at = s.last,
        event_timestamp = LEAST(GREATEST(s.last, :oldest), :now)
    FROM (SELECT coalesce(sum(e.units), 0) AS units, count(*) AS n,
                 min(e.occurred_at) AS first, max(e.occurred_at) AS last
          FROM usage_report_events r
          JOIN usage_events e ON e.tenant_id = r.tenant_id AND e.event_id = r.event_id
          WHERE r.tenant_id = :tenant_id AND r.report_id = :id) s
    WHERE u.tenant_id = :tenant_id AND u.id = :id
    RETURNING u.event_count
    """
)
_DELETE_EMPTY = text("DELETE FROM usage_reports WHERE tenant_id = :tenant_id AND id = :id")
_DUE = text(
    """
    SELECT r.tenant_id, r.id, r.meter, r.units, r.event_timestamp, r.attempts, t.stripe_customer_id
    FROM usage_reports r JOIN tenants t ON t.id = r.tenant_id
    WHERE r.status = 'pending' AND r.next_attempt_at <= :now
      AND (CAST(:tenants AS uuid[]) IS NULL OR r.tenant_id = ANY(CAST(:tenants AS uuid[])))
    ORDER BY r.created_at, r.id
    LIMIT :limit
    """
)
_MARK_SENT = text(
    """
    UPDATE usage_reports SET status = 'sent', sent_at = :now, attempts = attempts + 1, last_error = NULL,
                             stripe_customer_id = :customer
    WHERE tenant_id = :tenant_id AND id = :id AND status = 'pending'
    """
)
_DEFER = text(
    """
    UPDATE usage_reports SET attempts = attempts + 1, next_attempt_at = :next, last_error = :error
    WHERE tenant_id = :tenant_id AND id = :id
    """
)
_PARK = text(
    """
    UPDATE usage_reports SET status = 'parked', attempts = attempts + 1, last_error = :error,
                             stripe_customer_id = :customer
    WHERE tenant_id = :tenant_id AND id = :id
    """
)
_UNPARK = text(
    """
    UPDATE usage_reports SET status = 'pending', next_attempt_at = :now
    WHERE tenant_id = :tenant_id AND status = 'parked'
    """
)


def backoff(attempts: int) -> timedelta:
    return min(BACKOFF_BASE * (1 << min(attempts, 20)), BACKOFF_MAX)


async def unpark_tenant(conn: Any, tenant_id: uuid.UUID, now: datetime) -> int:
    """Retry a tenant's parked rows (its Stripe customer changed, or an operator fixed the cause)."""
    result = await conn.execute(_UNPARK, {"tenant_id": tenant_id, "now": now})
    return int(result.rowcount)


class Reporter:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        stripe: StripeBilling,
        *,
        clock: Clock = utcnow,
        fault: FaultHook | None = None,
        batch_size: int = 500,
    ) -> None:
        self._settings = settings
        self._db = db
        self._stripe = stripe
        self._clock = clock
        self._fault = fault
        self._batch = batch_size
        self._stopping = asyncio.Event()
        self.last_run: ReportRun | None = None

    def meter_for(self, tool: str) -> str:
        return self._settings.billing_tool_meters.get(tool, self._settings.billing_meter_event_name)

    async def _at(self, point: str) -> None:
        if self._fault is not None:
            await self._fault(point)

    async def run_once(self, tenants: Collection[uuid.UUID] | None = None) -> ReportRun:
        """One cycle, if no other replica holds the lock. `tenants` limits it to those tenants."""
        run = ReportRun()
        async with self._db.system() as lock:
            if not (await lock.execute(_TRY_LOCK, {"key": LOCK_KEY})).scalar_one():
                run.locked = False
                return run
            now = self._clock()
            scope = sorted(tenants) if tenants is not None else None
            run.reports_created = await self.aggregate(now, scope)
            await self._at("after_aggregate")
            await self.send_due(now, run, scope)
        self.last_run = run
        return run

    async def aggregate(self, now: datetime, tenants: list[uuid.UUID] | None = None) -> int:
        created = 0
        async with self._db.system() as conn:
            groups: dict[tuple[uuid.UUID, str], list[str]] = defaultdict(list)
            for row in await conn.execute(_CANDIDATES, {"tenants": tenants}):
                groups[(row.tenant_id, self.meter_for(row.tool))].append(row.tool)
            for (tenant_id, meter), tools in groups.items():
                report_id = uuid.uuid4()
                params = {"tenant_id": tenant_id, "id": report_id}
                await conn.execute(_NEW_REPORT, {**params, "meter": meter, "now": now})
                await conn.execute(_COVER, {**params, "tools": sorted(tools)})
                covered = (await conn.execute(_TOTAL, {**params, "now": now, "oldest": now - MAX_EVENT_AGE})).scalar()
                if not covered:
                    await conn.execute(_DELETE_EMPTY, params)
                    continue
                created += 1
        return created

    async def send_due(self, now: datetime, run: ReportRun, tenants: list[uuid.UUID] | None = None) -> None:
        async with self._db.system() as conn:
            due = (await conn.execute(_DUE, {"now": now, "limit": self._batch, "tenants": tenants})).all()
        for row in due:
            keys = {"tenant_id": row.tenant_id, "id": row.id}
            if row.stripe_customer_id is None:
                await self._park(keys, None, "the tenant has no Stripe customer", run)
                continue
            if row.units == 0:
                async with self._db.system() as conn:
                    await conn.execute(_MARK_SENT, {**keys, "now": now, "customer": row.stripe_customer_id})
                continue
            event = MeterEvent(
                identifier=identifier_for(row.id),
                event_name=row.meter,
                customer_id=row.stripe_customer_id,
                value=row.units,
                timestamp=max(row.event_timestamp, now - MAX_EVENT_AGE),
            )
            await self._at("before_send")
            try:
                await self._stripe.send_meter_event(event)
            except TransientStripeFailure as exc:
                async with self._db.system() as conn:
                    await conn.execute(_DEFER, {**keys, "next": now + backoff(row.attempts), "error": exc.detail})
                run.deferred += 1
                run.errors.append(exc.detail)
                log.warning("billing: report %s for tenant %s deferred: %s", row.id, row.tenant_id, exc.detail)
                return  # Stripe is struggling (or limiting us): the rest waits for the next cycle
            except PermanentStripeFailure as exc:
                await self._park(keys, row.stripe_customer_id, exc.detail, run)
                continue
            await self._at("after_send")
            async with self._db.system() as conn:
                await conn.execute(_MARK_SENT, {**keys, "now": now, "customer": row.stripe_customer_id})
            run.sent += 1
            run.units_sent += row.units
            await self._at("after_mark")

    async def _park(self, keys: dict[str, Any], customer: str | None, error: str, run: ReportRun) -> None:
        async with self._db.system() as conn:
            await conn.execute(_PARK, {**keys, "customer": customer, "error": error})
        run.parked += 1
        run.errors.append(error)
        log.error("billing: report %s for tenant %s parked: %s", keys["id"], keys["tenant_id"], error)

    async def run(self) -> None:
        """Report every `billing_report_interval_seconds` until `stop()` (a lifespan task)."""
        from tenantry.billing.dunning import enforce_past_due

        while not self._stopping.is_set():
            try:
                await self.run_once()
                async with self._db.system() as conn:
                    await enforce_past_due(conn, self._settings, self._clock())
            except (DBAPIError, OSError) as exc:
                log.warning("billing reporter cycle failed: %s", exc)
            except Exception:  # the task must outlive any one bad cycle; its rows are resent next time
                log.exception("billing reporter cycle failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._settings.billing_report_interval_seconds)

    def stop(self) -> None:
        self._stopping.set()
