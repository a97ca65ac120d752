"""A move that dies (its process killed mid-way) leaves its claim: the mover releases it once it is stale
and no move holds the tenant's lock, so the tenant is served again without an admin. A running move is
never taken over, and a move whose claim was taken back does not switch."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tenantry import tiers
from tenantry.db import provision
from tenantry.db.engine import Database
from tenantry.db.provision import move_lock, owner_transaction
from tenantry.db.router import SCHEMA, SHARED
from tenantry.errors import Conflict, Unavailable
from tenantry.settings import Settings
from tenantry.tier_moves import MOVER, STALE_AFTER, TierMover
from tests.billing.conftest import make_tenant
from tests.conftest import eventually

_PUT = text("INSERT INTO tenant_data (tenant_id, key, value, size_bytes) VALUES (:t, :k, '\"v\"', 1)")


async def _with_rows(db: Database) -> uuid.UUID:
    tenant_id = await make_tenant(db)
    async with db.tenant(tenant_id) as conn:
        await conn.execute(_PUT, {"t": tenant_id, "k": "a"})
    return tenant_id


async def _die_mid_move(db: Database, tenant_id: uuid.UUID, claimed_ago: timedelta) -> None:
    """What a move killed after fencing its source leaves: the claim, and the source fenced."""
    async with db.system() as conn:
        await conn.execute(
            text("UPDATE tenants SET moving_since = now() - CAST(:ago AS interval) WHERE id = :t"),
            {"t": tenant_id, "ago": claimed_ago},
        )
    placement = await db.router.placement(tenant_id)
    async with owner_transaction(db.system_engine, db.router.owner_url(placement), placement) as conn:
        await provision.fence(conn, tenant_id, moved=True)
    db.router.forget(tenant_id)


async def _moving_since(db: Database, tenant_id: uuid.UUID) -> Any:
    async with db.system() as conn:
        return (
            await conn.execute(text("SELECT moving_since FROM tenants WHERE id = :t"), {"t": tenant_id})
        ).scalar_one()


async def _released_by_a_mover(settings: Settings, db: Database, tenant_id: uuid.UUID) -> None:
    """Run passes of a mover until the tenant's claim is gone. The test gateway's own mover may run a
    pass meanwhile (one replica's at a time) and release it first: either way, a mover released it."""
    mover = TierMover(settings, db)

    async def released() -> bool:
        await mover.run_once(tenant_id)
        return await _moving_since(db, tenant_id) is None

    await eventually(released, within=10, what="the stale claim released")


async def test_the_claim_a_dead_move_left_is_released_and_the_tenant_served_again(
    settings: Settings, db: Database
) -> None:
    tenant_id = await _with_rows(db)
    await _die_mid_move(db, tenant_id, STALE_AFTER + timedelta(minutes=1))
    with pytest.raises(Unavailable):  # refused while claimed
        async with db.tenant(tenant_id) as conn:
            await conn.execute(_PUT, {"t": tenant_id, "k": "b"})

    await _released_by_a_mover(settings, db, tenant_id)

    db.router.forget(tenant_id)
    async with db.tenant(tenant_id) as conn:  # unfenced: writes land again, where the data always was
        await conn.execute(_PUT, {"t": tenant_id, "k": "b"})
        keys = (await conn.execute(text("SELECT key FROM tenant_data ORDER BY key"))).scalars().all()
        assert keys == ["a", "b"]
        record = (
            await conn.execute(
                text(
                    "SELECT transport, subject, detail FROM audit_records"
                    " WHERE method = 'system tenant.tier_move_released'"
                )
            )
        ).one()
    assert (record.transport, record.subject) == ("system", MOVER)
    assert record.detail["changes"]["moving_since"]["after"] is None
    assert record.detail["changes"]["tier"] == {"before": SHARED, "after": None}
    # And the tenant can be moved on, by the mover or an admin.
    assert (await tiers.move_tenant(db, settings, tenant_id, SCHEMA))["moved"] is True


async def test_a_recent_claim_or_one_whose_move_is_still_running_is_left_alone(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiers, "MOVE_LOCK_WAIT_S", 0.3)
    recent = await _with_rows(db)
    await _die_mid_move(db, recent, STALE_AFTER - timedelta(minutes=1))
    running = await _with_rows(db)
    await _die_mid_move(db, running, STALE_AFTER + timedelta(minutes=1))
    mover = TierMover(settings, db)
    async with move_lock(db.system_engine, running) as free:  # a move of it runs, on another "replica"
        assert free
        assert (await mover.run_once(recent)).released == []
        assert (await mover.run_once(running)).released == []
        with pytest.raises(Conflict, match="under way"):  # an admin's move waits for it, then gives up
            await tiers.move_tenant(db, settings, running, SCHEMA)
    assert await _moving_since(db, recent) is not None
    assert await _moving_since(db, running) is not None
    await _released_by_a_mover(settings, db, running)  # its lock let go: released


async def test_a_move_whose_claim_was_taken_back_fails_instead_of_switching(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = await _with_rows(db)
    copy_rows = provision.copy_rows

    async def released_meanwhile(src: Any, dst: Any, tenant: uuid.UUID) -> int:
        # Recovery judged the claim stale while the rows were being copied (a replica of an older version
        # whose move held no lock): it unfenced the source and cleared the claim.
        async with db.system() as conn:
            await conn.execute(text("UPDATE tenants SET moving_since = NULL WHERE id = :t"), {"t": tenant})
        return await copy_rows(src, dst, tenant)

    monkeypatch.setattr(tiers, "copy_rows", released_meanwhile)
    with pytest.raises(Conflict, match="taken back"):
        await tiers.move_tenant(db, settings, tenant_id, SCHEMA)
    db.router.forget(tenant_id)
    placement = await db.router.placement(tenant_id)
    assert (placement.tier, placement.moving) == (SHARED, False)
    async with db.tenant(tenant_id) as conn:  # still served where it was, unfenced
        await conn.execute(_PUT, {"t": tenant_id, "k": "b"})


async def test_two_moves_of_one_tenant_at_once_run_one_after_the_other(settings: Settings, db: Database) -> None:
    """Two deliveries of one onboarding place the tenant at the same moment: the second waits for the
    first and then finds the tenant where it wants it."""
    tenant_id = await _with_rows(db)
    first, second = await asyncio.gather(*(tiers.move_tenant(db, settings, tenant_id, SCHEMA) for _ in range(2)))
    assert sorted([first["moved"], second["moved"]]) == [False, True]
    db.router.forget(tenant_id)
    placement = await db.router.placement(tenant_id)
    assert (placement.tier, placement.moving) == (SCHEMA, False)
