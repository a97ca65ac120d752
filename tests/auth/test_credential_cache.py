"""What the gateway remembers of credentials: how long it trusts it, and how much of it it keeps.

With 10,000 tenants calling, a resolved credential must outlive the few-second TTL while changes are
announced (else nearly every call re-reads its key), must not outlive it while they are not, and the
cache must stay within its bound however many tenants pass through it.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from tenantry import tenants as tenant_service
from tenantry.auth import api_keys
from tenantry.auth.resolver import CredentialResolver
from tenantry.db.engine import Database
from tenantry.errors import Unauthenticated
from tenantry.plans import PlanBook
from tenantry.settings import Settings
from tests import conftest

TTL, MAX_AGE = 5.0, 600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def new_key(db: Database) -> tuple[uuid.UUID, str]:
    async with db.system() as conn:
        tenant = await tenant_service.create_tenant(conn, f"cache-{uuid.uuid4().hex[:8]}")
        _, secret = await api_keys.create_key(conn, tenant.id, "k")
    return tenant.id, secret


async def revoke_behind_the_caches_back(db: Database, tenant_id: uuid.UUID) -> None:
    """Revoke by SQL: nothing in this process hears of it (no listener runs here)."""
    async with db.system() as conn:
        await conn.execute(text("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = :t"), {"t": tenant_id})


def resolver(db: Database, settings: Settings, clock: Clock, *, listening: bool, **options: int) -> CredentialResolver:
    tuned = conftest.test_settings(
        database_url=settings.database_url, auth_cache_ttl_seconds=TTL, auth_cache_max_age_seconds=MAX_AGE
    )
    return CredentialResolver(tuned, db, PlanBook(tuned), announced=lambda: listening, clock=clock, **options)


async def test_while_changes_are_announced_a_credential_is_trusted_past_the_ttl(
    db: Database, settings: Settings
) -> None:
    clock = Clock()
    tenant_id, key = await new_key(db)
    credentials = resolver(db, settings, clock, listening=True)
    assert (await credentials.resolve(key)).tenant_id == tenant_id
    await revoke_behind_the_caches_back(db, tenant_id)
    clock.now += 10 * TTL
    # An announced revocation would have been forgotten at once; none came, so the entry holds.
    assert (await credentials.resolve(key)).tenant_id == tenant_id
    credentials.forget(tenant_id)  # what the announcement does
    with pytest.raises(Unauthenticated) as refused:
        await credentials.resolve(key)
    assert refused.value.code == "credential_revoked"


async def test_a_credential_is_read_again_past_its_max_age_even_while_changes_are_announced(
    db: Database, settings: Settings
) -> None:
    clock = Clock()
    tenant_id, key = await new_key(db)
    credentials = resolver(db, settings, clock, listening=True)
    await credentials.resolve(key)
    await revoke_behind_the_caches_back(db, tenant_id)
    clock.now += MAX_AGE + 1
    with pytest.raises(Unauthenticated) as refused:
        await credentials.resolve(key)
    assert refused.value.code == "credential_revoked"


async def test_while_the_listener_is_down_the_ttl_bounds_staleness(db: Database, settings: Settings) -> None:
    clock = Clock()
    tenant_id, key = await new_key(db)
    credentials = resolver(db, settings, clock, listening=False)
    await credentials.resolve(key)
    await revoke_behind_the_caches_back(db, tenant_id)
    clock.now += TTL / 2
    assert (await credentials.resolve(key)).tenant_id == tenant_id  # within the TTL: cached
    clock.now += TTL
    with pytest.raises(Unauthenticated) as refused:
        await credentials.resolve(key)
    assert refused.value.code == "credential_revoked"


async def test_the_cache_stays_within_its_bound_however_many_tenants_call(db: Database, settings: Settings) -> None:
    clock = Clock()
    keys = [await new_key(db) for _ in range(6)]
    credentials = resolver(db, settings, clock, listening=True, max_entries=3)
    for _ in range(2):
        for tenant_id, key in keys:
            assert (await credentials.resolve(key)).tenant_id == tenant_id  # an evicted one is read again
            assert credentials.sizes()["credentials"] <= 3
            assert credentials.sizes()["tenants"] <= 3  # an evicted tenant leaves nothing behind
    credentials.forget(keys[-1][0])
    assert credentials.sizes() == {"credentials": 2, "tenants": 2}
