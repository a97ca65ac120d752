"""Discovery's memory stays bounded however many tenants it serves: a view per tenant, at most
`max_views` of them, and nothing else left behind once a build ends."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from tenantry.db.engine import Database
from tenantry.federation.discovery import Discovery
from tenantry.federation.pool import UpstreamPool
from tenantry.secrets import SecretBox
from tenantry.settings import DEV_SECRET_KEY, Settings


class GatedDatabase:
    """The real database, counting tenant transactions; each waits for `gate` when it is set."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    @contextlib.asynccontextmanager
    async def tenant(self, tenant_id: uuid.UUID, **plane: str) -> AsyncIterator[Any]:
        self.reads += 1
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        async with self.db.tenant(tenant_id, **plane) as conn:
            yield conn


def discovery_over(settings: Settings, db: GatedDatabase, **options: int) -> Discovery:
    pool = UpstreamPool(settings, SecretBox([DEV_SECRET_KEY]))
    return Discovery(settings, db, pool, **options)  # type: ignore[arg-type]


async def test_views_stay_within_their_bound_and_builds_leave_nothing_behind(settings: Settings, db: Database) -> None:
    gated = GatedDatabase(db)
    discovery = discovery_over(settings, gated, max_views=3)
    tenants = [uuid.uuid4() for _ in range(6)]
    for tenant_id in tenants:
        await discovery.view(tenant_id)
        discovery.invalidate(uuid.uuid4())  # a change of a tenant nobody is building: nothing kept for it
    assert discovery.sizes() == {"views": 3, "building": 0}
    reads = gated.reads
    await discovery.view(tenants[-1])  # among the three kept
    assert gated.reads == reads
    await discovery.view(tenants[0])  # evicted: read again
    assert gated.reads == reads + 1
    await discovery.aclose()


async def test_a_change_announced_while_a_view_is_built_keeps_that_view_out_of_the_cache(
    settings: Settings, db: Database
) -> None:
    gated = GatedDatabase(db)
    discovery = discovery_over(settings, gated)
    tenant_id = uuid.uuid4()
    gated.gate = asyncio.Event()
    building = asyncio.create_task(discovery.view(tenant_id))
    await asyncio.wait_for(gated.waiting.wait(), timeout=5)
    assert discovery.sizes()["building"] == 1
    discovery.invalidate(tenant_id)  # the rows it is about to read may be the ones the change replaced
    gated.gate.set()
    await asyncio.wait_for(building, timeout=5)
    assert discovery.sizes() == {"views": 0, "building": 0}
    await discovery.view(tenant_id)
    assert gated.reads == 2  # read again, and now kept
    await discovery.view(tenant_id)
    assert gated.reads == 2
    await discovery.aclose()
