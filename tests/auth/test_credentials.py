"""Who may call: missing, garbage, expired, revoked, forged and misdirected credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import ADMIN_KEY, JWT_SECRET, Admin, TenantHandle

RPC = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def mcp_status(http: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await http.post("/mcp", headers={**ACCEPT, **headers}, json=RPC)


def tenant_claims(tenant: TenantHandle, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "tenantry",
        "aud": "tenantry:tenant",
        "sub": tenant.id,
        "kid": tenant.key_id,
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return claims


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer garbage", "Bearer tnt_notarealkey", "Bearer a.b.c"],
)
async def test_missing_or_garbage_credentials_get_401_with_www_authenticate(
    http: httpx.AsyncClient, tenant_a: TenantHandle, authorization: str | None
) -> None:
    headers = {"Tenant-ID": tenant_a.id}
    if authorization is not None:
        headers["Authorization"] = authorization
    r = await mcp_status(http, headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] in {"missing_credentials", "invalid_credentials", "invalid_token"}


async def test_an_api_key_and_the_token_made_from_it_both_work(http: httpx.AsyncClient, tenant_a: TenantHandle) -> None:
    assert (await mcp_status(http, tenant_a.headers)).status_code == 200
    made = await http.post("/api/auth/tenant-token", headers={"x-api-key": tenant_a.key})
    assert made.status_code == 200
    body = made.json()
    assert body["token_type"] == "bearer"
    assert body["tenant_id"] == tenant_a.id
    assert 60 <= body["expires_in"] <= 86_400
    # A token names its tenant, so Tenant-ID may be omitted.
    r = await mcp_status(http, {"Authorization": f"Bearer {body['access_token']}"})
    assert r.status_code == 200
    assert {t["name"] for t in r.json()["result"]["tools"]} >= {"data_get"}


async def test_the_token_exchange_refuses_anything_but_a_live_key(
    http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    assert (await http.post("/api/auth/tenant-token")).status_code == 401
    assert (await http.post("/api/auth/tenant-token", headers={"x-api-key": "tnt_wrong"})).status_code == 401
    token = (await http.post("/api/auth/tenant-token", headers={"x-api-key": tenant_a.key})).json()["access_token"]
    assert (await http.post("/api/auth/tenant-token", headers={"x-api-key": token})).status_code == 401


async def test_an_expired_token_gets_401(http: httpx.AsyncClient, tenant_a: TenantHandle) -> None:
    token = jwt.encode(tenant_claims(tenant_a, iat=int(time.time()) - 600, exp=int(time.time()) - 60), JWT_SECRET)
    r = await mcp_status(http, {"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert r.json()["error"] == "token_expired"


async def test_an_unsigned_alg_none_token_is_rejected(http: httpx.AsyncClient, tenant_a: TenantHandle) -> None:
    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(tenant_claims(tenant_a))}."
    r = await mcp_status(http, {"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


async def test_algorithm_confusion_and_foreign_keys_are_rejected(
    http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs256 = jwt.encode(tenant_claims(tenant_a), private, algorithm="RS256")
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The classic confusion: HMAC-sign with the public key's bytes as the secret (built by hand;
    # PyJWT itself refuses to sign that way).
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(tenant_claims(tenant_a))}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    hs_with_public = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    # The right secret under an algorithm we do not accept (built by hand: PyJWT warns on the key length).
    hs512_input = f"{b64({'alg': 'HS512', 'typ': 'JWT'})}.{b64(tenant_claims(tenant_a))}"
    hs512_mac = hmac.new(JWT_SECRET.encode(), hs512_input.encode(), hashlib.sha512).digest()
    hs512 = f"{hs512_input}.{base64.urlsafe_b64encode(hs512_mac).rstrip(b'=').decode()}"
    other_secret = jwt.encode(tenant_claims(tenant_a), "not-the-secret-0123456789abcdef012345")
    for token in (rs256, hs_with_public, hs512, other_secret):
        r = await mcp_status(http, {"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, token


async def test_audience_and_issuer_are_pinned(http: httpx.AsyncClient, tenant_a: TenantHandle) -> None:
    admin_token = (await http.post("/api/auth/token", json={"key": ADMIN_KEY})).json()["access_token"]
    wrong_aud = jwt.encode(tenant_claims(tenant_a, aud="someone-else"), JWT_SECRET)
    wrong_iss = jwt.encode(tenant_claims(tenant_a, iss="evil"), JWT_SECRET)
    for token in (admin_token, wrong_aud, wrong_iss):
        assert (await mcp_status(http, {"Authorization": f"Bearer {token}"})).status_code == 401
    # and a tenant token is no admin token
    tenant_token = jwt.encode(tenant_claims(tenant_a), JWT_SECRET)
    r = await http.get("/api/tenants", headers={"Authorization": f"Bearer {tenant_token}"})
    assert r.status_code == 401


async def test_a_token_whose_key_belongs_to_another_tenant_is_rejected(
    http: httpx.AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    forged = jwt.encode(tenant_claims(tenant_a, kid=tenant_b.key_id), JWT_SECRET)
    assert (await mcp_status(http, {"Authorization": f"Bearer {forged}"})).status_code == 401


async def test_a_revoked_key_and_its_tokens_stop_working_at_once(
    http: httpx.AsyncClient, admin: Admin, tenant_a: TenantHandle
) -> None:
    token = (await http.post("/api/auth/tenant-token", headers={"x-api-key": tenant_a.key})).json()["access_token"]
    assert (await mcp_status(http, tenant_a.headers)).status_code == 200
    r = await admin.http.delete(f"/api/tenants/{tenant_a.id}/keys/{tenant_a.key_id}")
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    for headers in (tenant_a.headers, {"Authorization": f"Bearer {token}"}):
        refused = await mcp_status(http, headers)
        assert refused.status_code == 401
        assert refused.json()["error"] == "credential_revoked"


@pytest.mark.parametrize("status", ["suspended", "deprovisioned"])
async def test_a_suspended_or_deprovisioned_tenant_gets_403(http: httpx.AsyncClient, admin: Admin, status: str) -> None:
    tenant = await admin.create_tenant()
    token = (await http.post("/api/auth/tenant-token", headers={"x-api-key": tenant.key})).json()["access_token"]
    if status == "suspended":
        r = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"status": "suspended"})
        assert r.status_code == 200
        refused = await mcp_status(http, tenant.headers)
        assert refused.status_code == 403
        assert refused.json()["error"] == "tenant_suspended"
        bridge = await http.post(f"/api/tenant/{tenant.id}/tool", headers=tenant.headers, json={"method": "listTools"})
        assert bridge.status_code == 403
        await admin.http.patch(f"/api/tenants/{tenant.id}", json={"status": "active"})
        assert (await mcp_status(http, tenant.headers)).status_code == 200
    else:
        assert (await admin.http.delete(f"/api/tenants/{tenant.id}")).status_code == 200
        for headers in ({"Authorization": f"Bearer {token}"}, tenant.headers):
            refused = await mcp_status(http, headers)
            assert refused.status_code == 403
            assert refused.json()["error"] == "tenant_deprovisioned"


@pytest.mark.parametrize("tenant_id", ["not-a-uuid", "1234", "' OR 1=1 --"])
async def test_a_non_uuid_tenant_id_gets_400(http: httpx.AsyncClient, tenant_a: TenantHandle, tenant_id: str) -> None:
    r = await mcp_status(http, {"Tenant-ID": tenant_id, "Authorization": f"Bearer {tenant_a.key}"})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_tenant_id"
    bridge = await http.post(
        f"/api/tenant/{tenant_id}/tool",
        headers={"Authorization": f"Bearer {tenant_a.key}"},
        json={"method": "listTools"},
    )
    assert bridge.status_code == 400


async def test_an_unknown_tenant_id_with_a_valid_key_is_refused(
    http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    r = await mcp_status(http, {"Tenant-ID": str(uuid.uuid4()), "Authorization": f"Bearer {tenant_a.key}"})
    assert r.status_code == 403


async def test_a_credential_that_cannot_be_checked_while_postgresql_is_unreachable_gets_a_503_json_error(
    settings: Any, admin: Admin
) -> None:
    """A key the replica has not cached cannot be checked without PostgreSQL: the client gets a retryable 503
    with the usual JSON error, on MCP and REST alike, not a bare 500."""
    from tests.api.test_health import PostgresLink
    from tests.conftest import serve

    tenant = await admin.create_tenant()
    link = PostgresLink()
    link.start()
    try:
        through_link = settings.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{link.port}")
        with serve(settings.model_copy(update={"database_url": through_link})) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                link.cut()
                mcp = await client.post(
                    "/mcp",
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={**tenant.headers, "Accept": "application/json, text/event-stream"},
                )
                rest = await client.post(
                    f"/api/tenant/{tenant.id}/tool", json={"method": "listTools"}, headers=tenant.headers
                )
    finally:
        link.stop()
    for response in (mcp, rest):
        assert response.status_code == 503
        assert response.json()["error"] == "auth_unavailable"
        assert "retry" in response.json()["detail"]
