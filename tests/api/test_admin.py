"""Admin REST: tenants and keys, and what it refuses."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import ADMIN_KEY, Admin


async def test_admin_creates_reads_lists_updates_and_deprovisions_a_tenant(admin: Admin) -> None:
    created = await admin.http.post("/api/tenants", json={"name": "Acme", "plan": "starter"})
    assert created.status_code == 201
    tenant = created.json()
    assert tenant["status"] == "active"
    assert tenant["plan"] == "starter"
    tid = tenant["id"]

    assert (await admin.http.get(f"/api/tenants/{tid}")).json()["name"] == "Acme"
    listed = (await admin.http.get("/api/tenants", params={"limit": 1000})).json()["tenants"]
    assert tid in {t["id"] for t in listed}

    patched = await admin.http.patch(f"/api/tenants/{tid}", json={"plan": "pro", "status": "suspended"})
    assert patched.status_code == 200
    assert (patched.json()["plan"], patched.json()["status"]) == ("pro", "suspended")
    suspended = (await admin.http.get("/api/tenants", params={"status": "suspended", "limit": 1000})).json()
    assert tid in {t["id"] for t in suspended["tenants"]}

    deleted = await admin.http.delete(f"/api/tenants/{tid}")
    assert deleted.status_code == 200
    assert deleted.json()["status"] == "deprovisioned"
    assert deleted.json()["deleted_at"] is not None
    # Soft delete: still readable, and deleting again changes nothing.
    assert (await admin.http.get(f"/api/tenants/{tid}")).json()["status"] == "deprovisioned"
    assert (await admin.http.delete(f"/api/tenants/{tid}")).json()["deleted_at"] == deleted.json()["deleted_at"]
    refused = await admin.http.patch(f"/api/tenants/{tid}", json={"status": "active"})
    assert refused.status_code == 409


async def test_deprovisioning_revokes_every_key(admin: Admin) -> None:
    tenant = await admin.create_tenant()
    await admin.http.post(f"/api/tenants/{tenant.id}/keys", json={"name": "second"})
    await admin.http.delete(f"/api/tenants/{tenant.id}")
    keys = (await admin.http.get(f"/api/tenants/{tenant.id}/keys")).json()["keys"]
    assert len(keys) == 2
    assert all(k["revoked_at"] for k in keys)
    again = await admin.http.post(f"/api/tenants/{tenant.id}/keys", json={"name": "third"})
    assert again.status_code == 409


async def test_a_key_secret_is_shown_once_and_stored_only_as_a_hash(admin: Admin, db: object) -> None:
    from sqlalchemy import text

    from tenantry.db.engine import Database

    assert isinstance(db, Database)
    tenant = await admin.create_tenant()
    keys = (await admin.http.get(f"/api/tenants/{tenant.id}/keys")).json()["keys"]
    assert len(keys) == 1
    assert "secret" not in keys[0]
    assert tenant.key.startswith(keys[0]["prefix"])
    async with db.system() as conn:
        stored = (
            (await conn.execute(text("SELECT * FROM api_keys WHERE id = :id"), {"id": uuid.UUID(tenant.key_id)}))
            .one()
            ._asdict()
        )
    assert all(tenant.key not in str(value) for value in stored.values())
    assert len(stored["key_hash"]) == 32


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/tenants", {}),
        ("POST", "/api/tenants", {"name": ""}),
        ("POST", "/api/tenants", {"name": "x" * 201}),
        ("POST", "/api/tenants", {"name": "ok", "plan": "gold"}),
        ("POST", "/api/tenants", {"name": "ok", "unknown": 1}),
        ("POST", "/api/tenants", [1, 2]),
        ("PATCH", "/api/tenants/{tid}", {"status": "deprovisioned"}),
        ("PATCH", "/api/tenants/{tid}", {"status": "weird"}),
        ("PATCH", "/api/tenants/{tid}", {"plan": "gold"}),
        ("POST", "/api/tenants/{tid}/keys", {"name": ""}),
    ],
)
async def test_bad_admin_input_gets_400_and_changes_nothing(admin: Admin, method: str, path: str, body: object) -> None:
    tenant = await admin.create_tenant()
    before = (await admin.http.get("/api/tenants", params={"limit": 1000})).json()["tenants"]
    r = await admin.http.request(method, path.format(tid=tenant.id), json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) >= {"error", "detail"}
    after = (await admin.http.get("/api/tenants", params={"limit": 1000})).json()["tenants"]
    assert after == before
    assert len((await admin.http.get(f"/api/tenants/{tenant.id}/keys")).json()["keys"]) == 1


async def test_unknown_and_malformed_ids_get_clear_errors(admin: Admin) -> None:
    missing = await admin.http.get(f"/api/tenants/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["error"] == "tenant_not_found"
    assert (await admin.http.get("/api/tenants/not-a-uuid")).status_code == 400
    tenant = await admin.create_tenant()
    no_key = await admin.http.delete(f"/api/tenants/{tenant.id}/keys/{uuid.uuid4()}")
    assert no_key.status_code == 404
    assert (await admin.http.delete(f"/api/tenants/{tenant.id}/keys/xyz")).status_code == 400


async def test_admin_endpoints_refuse_anyone_else(http: httpx.AsyncClient, admin: Admin) -> None:
    tenant = await admin.create_tenant()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {tenant.key}"}):
        r = await http.get("/api/tenants", headers=headers)
        assert r.status_code == 401
        assert "www-authenticate" in r.headers
    before = (await admin.http.get("/api/tenants", params={"limit": 1000})).json()["tenants"]
    assert (await http.post("/api/tenants", json={"name": "sneaky"})).status_code == 401
    assert (await admin.http.get("/api/tenants", params={"limit": 1000})).json()["tenants"] == before


async def test_an_admin_token_works_like_the_admin_key(http: httpx.AsyncClient) -> None:
    assert (await http.post("/api/auth/token", json={"key": "wrong"})).status_code == 401
    made = await http.post("/api/auth/token", json={"key": ADMIN_KEY})
    assert made.status_code == 200
    token = made.json()["access_token"]
    r = await http.get("/api/tenants", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
