"""The billing objects of one app, and their lifespan tasks: the reporter, and the tier mover that puts
tenants on the tier their Stripe plan asks for (`tier_moves.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from tenantry.billing.onboarding import Onboarding
from tenantry.billing.reporter import Reporter
from tenantry.billing.stripe_client import StripeBilling
from tenantry.db.engine import Database
from tenantry.settings import Settings
from tenantry.tier_moves import TierMover

log = logging.getLogger(__name__)


@dataclass
class Billing:
    stripe: StripeBilling
    reporter: Reporter
    onboarding: Onboarding
    mover: TierMover
    task: asyncio.Task[None] | None = None
    mover_task: asyncio.Task[None] | None = None

    async def start(self, settings: Settings) -> None:
        """Start the reporter when Stripe is configured and the reporter is on; the tier mover always: it
        moves tenants whose Stripe plan asks for another tier (none without Stripe), and releases what
        a move that died left claimed, however it was started."""
        if settings.billing_enabled and settings.billing_reporter_enabled:
            self.task = asyncio.create_task(self.reporter.run(), name="billing-reporter")
        self.mover_task = asyncio.create_task(self.mover.run(), name="tier-mover")

    async def stop(self) -> None:
        if self.task is not None:
            self.reporter.stop()
            await _finish(self.task, "billing reporter", "its rows are resent next start")
            self.task = None
        if self.mover_task is not None:
            self.mover.stop()
            await _finish(self.mover_task, "tier mover", "a move cut short unwinds, and is due again")
            self.mover_task = None


async def _finish(task: asyncio.Task[None], name: str, consequence: str) -> None:
    try:
        async with asyncio.timeout(10):
            await task
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.warning("%s did not stop within 10 s; cancelled (%s)", name, consequence)


def build_billing(settings: Settings, db: Database) -> Billing:
    stripe = StripeBilling(settings)
    reporter = Reporter(settings, db, stripe)
    return Billing(stripe, reporter, Onboarding(settings, db, reporter=reporter), TierMover(settings, db))
