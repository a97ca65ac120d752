"""A call that finds its tenant moving waits briefly for the move to end instead of being refused at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from pydantic import ValidationError

from tenantry import tiers
from tenantry.db.engine import Database
from tenantry.db.router import SCHEMA, SHARED
from tenantry.errors import Unavailable
from tenantry.settings import Settings
from tests import conftest
from tests.conftest import TEST_DB, eventually
from tests.db.test_tiers import _keys, _put, _tenant


@asynccontextmanager
async def _move_held_at_the_fence(db: Database, settings: Settings, tenant_id: uuid.UUID) -> AsyncIterator[None]:
    """A move of the tenant to the schema tier, stopped (by a lock on its storage row) after it was claimed
    and before it switches; it goes on when the block ends, and the move is awaited then."""
    blocker = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{TEST_DB}")
    lock = blocker.transaction()
    await lock.start()
    await blocker.execute("SELECT 1 FROM tenant_storage WHERE tenant_id = $1 FOR UPDATE", tenant_id)
    move = asyncio.create_task(tiers.move_tenant(db, settings, tenant_id, SCHEMA))
    try:
        await eventually(lambda: _moving(db, tenant_id), what="the move's claim")
        yield
    finally:
        await lock.rollback()
        await blocker.close()
        await move


async def _moving(db: Database, tenant_id: uuid.UUID) -> bool:
    return (await db.router.placement(tenant_id)).moving


async def _held(db: Database) -> bool:
    return db.router.status()["moves_awaited"] == 1


async def test_a_call_issued_during_a_quick_move_waits_for_it_and_is_served_on_the_new_tier(
    settings: Settings,
) -> None:
    db = Database(settings.model_copy(update={"tier_move_hold_ms": 20_000}))
    try:
        tenant_id = await _tenant(db)
        await _put(db, tenant_id, "before")
        async with _move_held_at_the_fence(db, settings, tenant_id):
            call = asyncio.create_task(_keys(db, tenant_id))
            await eventually(lambda: _held(db), what="the call waiting for the move")
            assert not call.done()
        assert await asyncio.wait_for(call, 10) == ["before"]  # served once the switch was heard
        assert db.router.cached(tenant_id) is not None
        assert db.router.cached(tenant_id).tier == SCHEMA  # type: ignore[union-attr]
        assert db.router.status()["moves_awaited"] == 0
    finally:
        await db.dispose()


async def test_with_a_hold_of_zero_a_call_during_a_move_is_refused_at_once(settings: Settings) -> None:
    db = Database(settings.model_copy(update={"tier_move_hold_ms": 0}))
    try:
        tenant_id = await _tenant(db)
        await _put(db, tenant_id, "before")
        async with _move_held_at_the_fence(db, settings, tenant_id):
            with pytest.raises(Unavailable) as refused:
                await _keys(db, tenant_id)
            assert refused.value.code == "tenant_moving"
            assert db.router.status()["moves_awaited"] == 0
        assert await _keys(db, tenant_id) == ["before"]
    finally:
        await db.dispose()


async def test_a_move_longer_than_the_hold_is_refused_retryably_when_the_hold_ends(settings: Settings) -> None:
    db = Database(settings.model_copy(update={"tier_move_hold_ms": 200}))
    try:
        tenant_id = await _tenant(db)
        await _put(db, tenant_id, "before")
        async with _move_held_at_the_fence(db, settings, tenant_id):
            with pytest.raises(Unavailable) as refused:
                await asyncio.wait_for(_put(db, tenant_id, "during"), 10)
            assert refused.value.code == "tenant_moving"
        assert await _keys(db, tenant_id) == ["before"]  # the refused write left nothing behind
        assert (await db.router.placement(tenant_id)).tier == SCHEMA
    finally:
        await db.dispose()


async def test_a_shared_tier_call_never_waits_and_is_served_as_before(db: Database) -> None:
    tenant_id = await _tenant(db)
    await _put(db, tenant_id, "k")
    assert (await db.router.placement(tenant_id)).tier == SHARED
    assert await _keys(db, tenant_id) == ["k"]
    assert db.router.status()["moves_awaited"] == 0


def test_a_negative_or_huge_hold_or_move_interval_is_refused_by_the_settings() -> None:
    for bad in (-1, 60_001, "soon"):
        with pytest.raises(ValidationError, match="tier_move_hold_ms"):
            conftest.test_settings(tier_move_hold_ms=bad)
    for bad in (0, -5, 3601, "often"):
        with pytest.raises(ValidationError, match="tier_move_interval_seconds"):
            conftest.test_settings(tier_move_interval_seconds=bad)
    defaults = conftest.test_settings()
    assert (defaults.tier_move_hold_ms, defaults.tier_move_interval_seconds) == (2000, 30.0)
