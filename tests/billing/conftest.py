"""Billing fixtures: a fake Stripe per test, tenants with Stripe customers, usage events, a clock."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from tenantry.app import create_app
from tenantry.db.engine import Database
from tenantry.db.models import tenants
from tenantry.metering.ledger import UsageEvent, insert_events
from tenantry.services import Services
from tenantry.settings import Settings
from tests.billing.fake_stripe import FakeStripe, fake_stripe, sign
from tests.conftest import free_port, serve_asgi

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


def stripe_event(kind: str, obj: dict[str, Any], *, created: int | None = None, event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": kind,
            "created": created if created is not None else int(time.time()),
            "data": {"object": obj},
        }
    ).encode()


def subscription(
    customer: str, *, plan: str | None = None, price: str | None = None, status: str = "active"
) -> dict[str, Any]:
    return {
        "id": f"sub_{customer}",
        "object": "subscription",
        "customer": customer,
        "status": status,
        "metadata": {"plan": plan} if plan else {},
        "items": {"data": [{"price": {"id": price, "product": "prod_x"}}] if price else []},
    }


async def post_event(
    client: httpx.AsyncClient, payload: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> httpx.Response:
    headers = {"Stripe-Signature": sign(payload, secret, timestamp), "Content-Type": "application/json"}
    return await client.post("/webhooks/stripe", content=payload, headers=headers)


@contextlib.asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    """The app on this test's event loop (no lifespan: enough for REST and webhooks, not for /mcp)."""
    app = create_app(settings)
    services: Services = app.state.services
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            yield client, services
    finally:
        await services.aclose_redis()
        await services.db.dispose()


@contextlib.contextmanager
def serve_app(settings: Settings) -> Iterator[tuple[str, Services]]:
    """The gateway on a loopback port that it knows as its own base URL (onboarding's canary calls it)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(settings.model_copy(update={"gateway_base_url": url}))
    with serve_asgi(app, port):
        yield url, app.state.services
