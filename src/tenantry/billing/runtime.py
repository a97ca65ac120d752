"""The billing objects of one app, and the reporter's lifespan task."""

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

log = logging.getLogger(__name__)


@dataclass
class Billing:
    stripe: StripeBilling
    reporter: Reporter
    onboarding: Onboarding
    task: asyncio.Task[None] | None = None

    async def start(self, settings: Settings) -> None:
        """Start the reporter when Stripe is configured and the reporter is on."""
        if settings.billing_enabled and settings.billing_reporter_enabled:
            self.task = asyncio.create_task(self.reporter.run(), name="billing-reporter")

    async def stop(self) -> None:
        if self.task is None:
            return
        self.reporter.stop()
        try:
            async with asyncio.timeout(10):
                await self.task
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            log.warning("billing reporter did not stop within 10 s; cancelled (its rows are resent next start)")
        self.task = None


def build_billing(settings: Settings, db: Database) -> Billing:
    stripe = StripeBilling(settings)
    reporter = Reporter(settings, db, stripe)
    return Billing(stripe, reporter, Onboarding(settings, db, reporter=reporter))
