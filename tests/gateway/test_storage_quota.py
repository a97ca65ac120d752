"""The data store's quotas (`storage_bytes`, `storage_keys`), as a tenant and an operator see them.

Storage counts what is stored: per key, its UTF-8 bytes plus the bytes of the canonical JSON of its
value (compact, UTF-8: what `data_put` reports as `size_bytes`). A put that would grow the store past
a limit is refused `storage_quota_exceeded` and changes nothing; racing puts never end above a limit,
and the count always equals a recount of the rows.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
from sqlalchemy import text

from tenantry.db.engine import Database
from tests.conftest import Admin, TenantHandle


async def tenant_with(admin: Admin, **limits: Any) -> TenantHandle:
    """A tenant on the unmetered plan with only `limits` set (so the meter does not get in the way)."""
    tenant = await admin.create_tenant(plan="enterprise")
    r = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": limits})
    assert r.status_code == 200, r.text
    return tenant


async def put(http: httpx.AsyncClient, tenant: TenantHandle, key: str, value: Any) -> httpx.Response:
    body = {"method": "data_put", "params": {"key": key, "value": value}}
    return await http.post(f"/api/tenant/{tenant.id}/tool", json=body, headers=tenant.headers)


async def stored(admin: Admin, tenant: TenantHandle) -> dict[str, Any]:
    r = await admin.http.get(f"/api/tenants/{tenant.id}/usage")
    assert r.status_code == 200, r.text
    quotas: dict[str, Any] = r.json()["quotas"]
    return {"bytes": quotas["storage_bytes"], "keys": quotas["storage_keys"]}


async def recount(db: Database, tenant: TenantHandle) -> tuple[int, int]:
    async with db.system() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(octet_length(key) + size_bytes), 0) AS bytes, count(*) AS keys "
                    "FROM tenant_data WHERE tenant_id = :t"
                ),
                {"t": uuid.UUID(tenant.id)},
            )
        ).one()
    return int(row.bytes), int(row.keys)


def entry_bytes(key: str, value: Any) -> int:
    return len(key.encode()) + len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


async def test_storage_counts_key_and_canonical_json_bytes_and_frees_on_delete(
    http: httpx.AsyncClient, admin: Admin, db: Database
) -> None:
    tenant = await tenant_with(admin, storage_bytes=10_000, storage_keys=10)
    value = {"name": "Zoë", "tags": ["a", "b"], "n": 1.5}
    assert (await put(http, tenant, "café/1", value)).status_code == 200
    assert (await put(http, tenant, "k2", "x" * 100)).status_code == 200
    expected = entry_bytes("café/1", value) + entry_bytes("k2", "x" * 100)
    assert (await stored(admin, tenant))["bytes"] == {"used": expected, "limit": 10_000}
    assert (await stored(admin, tenant))["keys"] == {"used": 2, "limit": 10}
    # An overwrite counts the difference.
    assert (await put(http, tenant, "k2", "y")).status_code == 200
    expected += entry_bytes("k2", "y") - entry_bytes("k2", "x" * 100)
    assert (await stored(admin, tenant))["bytes"]["used"] == expected
    # A delete frees what the key held.
    body = {"method": "data_delete", "params": {"key": "café/1"}}
    assert (await http.post(f"/api/tenant/{tenant.id}/tool", json=body, headers=tenant.headers)).status_code == 200
    now = await stored(admin, tenant)
    assert (now["bytes"]["used"], now["keys"]["used"]) == (entry_bytes("k2", "y"), 1)
    assert await recount(db, tenant) == (now["bytes"]["used"], now["keys"]["used"])


async def test_a_put_past_the_byte_limit_is_refused_and_changes_nothing(
    http: httpx.AsyncClient, admin: Admin, db: Database
) -> None:
    tenant = await tenant_with(admin, storage_bytes=100)
    assert (await put(http, tenant, "a", "x" * 50)).status_code == 200
    before = await recount(db, tenant)
    refused = await put(http, tenant, "b", "x" * 50)
    assert refused.status_code == 409
    body = refused.json()
    assert body["error"] == "storage_quota_exceeded"
    assert (body["quota"], body["used"], body["limit"]) == ("storage_bytes", before[0], 100)
    # Neither the new key nor a grown overwrite is stored; the count did not move.
    grown = await put(http, tenant, "a", "x" * 120)
    assert grown.json()["error"] == "storage_quota_exceeded"
    assert await recount(db, tenant) == before
    assert (await stored(admin, tenant))["bytes"]["used"] == before[0]
    got = await http.post(
        f"/api/tenant/{tenant.id}/tool", json={"method": "data_get", "params": {"key": "a"}}, headers=tenant.headers
    )
    assert got.json()["structuredContent"]["value"] == "x" * 50
    missing = await http.post(
        f"/api/tenant/{tenant.id}/tool", json={"method": "data_get", "params": {"key": "b"}}, headers=tenant.headers
    )
    assert missing.json()["error"] == "key_not_found"


async def test_a_put_past_the_key_limit_is_refused_but_overwrites_still_pass(
    http: httpx.AsyncClient, admin: Admin, db: Database
) -> None:
    tenant = await tenant_with(admin, storage_keys=2)
    assert (await put(http, tenant, "one", 1)).status_code == 200
    assert (await put(http, tenant, "two", 2)).status_code == 200
    refused = await put(http, tenant, "three", 3)
    assert refused.status_code == 409
    assert {k: refused.json()[k] for k in ("error", "quota", "used", "limit")} == {
        "error": "storage_quota_exceeded",
        "quota": "storage_keys",
        "used": 2,
        "limit": 2,
    }
    assert (await put(http, tenant, "two", {"bigger": "value"})).status_code == 200
    assert (await recount(db, tenant))[1] == 2


async def test_the_mcp_refusal_is_a_tool_error_with_the_quota_named(gateway_url: str, admin: Admin) -> None:
    from tenantry.client import connect

    tenant = await tenant_with(admin, storage_keys=0)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        result = await client.call_tool("data_put", {"key": "k", "value": 1})
    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["error"] == "storage_quota_exceeded"
    assert result.structured_content["quota"] == "storage_keys"
    assert result.content[0].text.startswith("storage_quota_exceeded:")  # type: ignore[union-attr]


async def test_concurrent_puts_racing_to_the_limit_never_exceed_it(
    http: httpx.AsyncClient, admin: Admin, db: Database
) -> None:
    # 40 new keys of 20 bytes each (key 4 + value 16) racing for 200 bytes: exactly 10 fit.
    tenant = await tenant_with(admin, storage_bytes=200)
    answers = await asyncio.gather(*(put(http, tenant, f"k{i:03d}", "v" * 14) for i in range(40)))
    assert entry_bytes("k000", "v" * 14) == 20
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 10
    assert {a.json()["error"] for a in answers if a.status_code != 200} == {"storage_quota_exceeded"}
    assert await recount(db, tenant) == (200, 10)
    # Keys too, with overwrites and deletes mixed in: the count always equals a recount.
    keyed = await tenant_with(admin, storage_keys=7)
    for i in range(5):
        assert (await put(http, keyed, f"base{i}", i)).status_code == 200
    delete = {"method": "data_delete", "params": {"key": "base0"}}
    work = [put(http, keyed, f"new{i}", i) for i in range(20)]
    work += [put(http, keyed, f"base{i}", "again") for i in range(1, 5)]
    work.append(http.post(f"/api/tenant/{keyed.id}/tool", json=delete, headers=keyed.headers))
    await asyncio.gather(*work)
    bytes_, keys = await recount(db, keyed)
    assert keys <= 7
    now = await stored(admin, keyed)
    assert (now["bytes"]["used"], now["keys"]["used"]) == (bytes_, keys)


async def test_a_lowered_limit_applies_at_once_and_a_store_over_it_may_still_shrink(
    http: httpx.AsyncClient, admin: Admin, db: Database
) -> None:
    tenant = await tenant_with(admin, storage_bytes=1_000)
    assert (await put(http, tenant, "big", "x" * 300)).status_code == 200
    lowered = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": {"storage_bytes": 100}})
    assert lowered.status_code == 200
    assert (await put(http, tenant, "small", 1)).json()["error"] == "storage_quota_exceeded"
    assert (await put(http, tenant, "big", "x" * 200)).status_code == 200  # shrinks: allowed
    usage = await stored(admin, tenant)
    assert usage["bytes"] == {"used": entry_bytes("big", "x" * 200), "limit": 100}
    raised = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": {"storage_bytes": None}})
    assert raised.status_code == 200
    assert (await put(http, tenant, "small", 1)).status_code == 200
    assert (await stored(admin, tenant))["bytes"]["limit"] is None


async def test_one_tenants_storage_never_counts_against_another(
    http: httpx.AsyncClient, admin: Admin, db: Database
) -> None:
    full = await tenant_with(admin, storage_keys=1)
    other = await tenant_with(admin, storage_keys=1)
    assert (await put(http, full, "a", 1)).status_code == 200
    assert (await put(http, other, "a", 1)).status_code == 200
    assert (await put(http, full, "b", 1)).status_code == 409
    assert await recount(db, other) == (entry_bytes("a", 1), 1)
