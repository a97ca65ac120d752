"""Billing fixtures: a fake Stripe per test, tenants with Stripe customers, usage events, a clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from tenantry.db.engine import Database
from tenantry.db.models import tenants
from tenantry.metering.ledger import UsageEvent, insert_events
from tenantry.settings import Settings
from tests.billing.fake_stripe import FakeStripe, fake_stripe

WEBHOOK_SECRET = "whsec_test_0123456789abcdef"


@pytest.fixture
def stripe_fake() -> Iterator[FakeStripe]:
    with fake_stripe() as fake:
        yield fake


@pytest.fixture
def billing_settings(settings: Settings, stripe_fake: FakeStripe) -> Settings:
    return settings.model_copy(
        update={
            "stripe_api_key": "sk_test_fake",
            "stripe_api_base": stripe_fake.url,
            "stripe_max_network_retries": 0,
            "stripe_timeout_seconds": 0.5,
            "stripe_webhook_secret": WEBHOOK_SECRET,
            "billing_reporter_enabled": False,
        }
    )


class Clock:
    """The reporter's clock, moved only by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def make_tenant(db: Database, *, customer: str | None = None, plan: str = "free", **extra: Any) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    async with db.system() as conn:
        await conn.execute(
            insert(tenants).values(
                id=tenant_id,
                name=f"b-{tenant_id.hex[:8]}",
                plan=plan,
                status="active",
                stripe_customer_id=customer,
                **extra,
            )
        )
    return tenant_id


def new_customer() -> str:
    return f"cus_{uuid.uuid4().hex[:14]}"


async def record(
    db: Database,
    tenant_id: uuid.UUID,
    ok: int,
    failed: int = 0,
    *,
    tool: str = "data_put",
    units: int = 1,
    at: datetime | None = None,
) -> int:
    """Record `ok` successful and `failed` failed calls; return the billable units they add."""
    at_ms = int((at or datetime.now(UTC)).timestamp() * 1000)
    events = [
        UsageEvent(uuid.uuid4(), tenant_id, tool, units, "ok" if i < ok else "quota_exceeded", 1.0, at_ms)
        for i in range(ok + failed)
    ]
    await insert_events(db, events)
    return ok * units
