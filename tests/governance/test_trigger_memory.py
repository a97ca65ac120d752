"""What the triggers remember stays bounded: a throttle that ended is dropped even when its subject
never calls again (with thousands of tenants, most never do)."""

from __future__ import annotations

import uuid
from typing import Any

from tenantry import tenants as tenant_service
from tenantry.db.engine import Database
from tenantry.governance.policy import Policy, parse_document
from tenantry.governance.triggers import TriggerWatch
from tenantry.plans import Limits
from tenantry.tenancy import Principal


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_throttle_that_ended_is_forgotten_when_another_subject_is_throttled(db: Database) -> None:
    async with db.system() as conn:
        tenant = await tenant_service.create_tenant(conn, f"throttles-{uuid.uuid4().hex[:8]}")
    kills: Any = None  # a throttle never kills
    clock = Clock()
    watch = TriggerWatch(db, kills, clock=clock)
    policy = Policy(parse_document({"triggers": {"probing": {"count": 1, "seconds": 10, "action": "throttle"}}}))

    def subject(name: str) -> Principal:
        return Principal(tenant.id, uuid.uuid4(), "free", "api_key", Limits(), subject=name)

    gone, prober = subject("gone-for-good"), subject("prober")
    assert await watch.denied(gone, policy, "secret_tool") is None
    assert (await watch.denied(gone, policy, "secret_tool")) is not None  # throttled
    assert watch.throttling == 1
    clock.now += 11  # its throttle is over; it never calls again
    assert await watch.denied(prober, policy, "secret_tool") is None
    refusal = await watch.denied(prober, policy, "secret_tool")
    assert refusal is not None
    assert refusal.code == "throttled"
    assert watch.throttling == 1  # the prober's alone
    assert watch.throttled(gone) is None
