"""Upstream calls are metered, ledgered and billed like built-in ones: the upstream's per-tool cost
counts against the quota, every admitted call leaves one usage event, and an upstream tool's own
`isError` result is recorded as a failure, so finance never bills it."""

from __future__ import annotations

from typing import Any

from tenantry.client import connect
from tenantry.db.engine import Database
from tests.conftest import Admin
from tests.federation.test_upstreams import add_upstream
from tests.metering.test_gateway_metering import ledger_count_is, ledger_rows, limited_tenant


async def test_upstream_calls_count_their_cost_and_are_ledgered_with_their_outcome(
    gateway_url: str,
    admin: Admin,
    db: Database,
    fixture_upstream: Any,
) -> None:
    _, url = fixture_upstream
    tenant = await limited_tenant(admin, calls_per_window=8)
    await add_upstream(admin, tenant, url, "alpha", costs={"rich": 5})
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        echoed = await client.call_tool("fx__echo", {"text": "one"})  # 1 unit
        rich = await client.call_tool("fx__rich", {})  # 5 units
        failed = await client.call_tool("fx__fail", {})  # 1 unit, the upstream says isError
        over = await client.call_tool("fx__rich", {})  # 5 more would make 12 > 8
        last = await client.call_tool("fx__echo", {"text": "two"})  # the 8th unit still fits
    assert not echoed.is_error
    assert echoed.meta is not None
    assert "tenantry/event_id" in echoed.meta
    assert not rich.is_error
    assert failed.is_error
    assert over.is_error
    assert over.structured_content["error"] == "quota_exceeded"
    assert not last.is_error
    await ledger_count_is(db, tenant, 4)
    rows = sorted((row.tool, row.units, row.outcome) for row in await ledger_rows(db, tenant))
    assert rows == [
        ("fx__echo", 1, "ok"),
        ("fx__echo", 1, "ok"),
        ("fx__fail", 1, "upstream_tool_error"),
        ("fx__rich", 5, "ok"),
    ]
    assert {str(row.event_id) for row in await ledger_rows(db, tenant)} >= {
        echoed.meta["tenantry/event_id"],
        last.meta["tenantry/event_id"] if last.meta else "",
    }
