"""A tenant's own identity provider: its RS256/ES256 tokens authenticate for that tenant only, with the
subject and roles its claims name; everything else about a token is refused; keys rotate."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tenantry.auth.issuers import TenantIssuers
from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.federation.ssrf import check_url
from tests.conftest import Admin, TenantHandle, serve_asgi
from tests.governance.test_governance_gateway import READ_ONLY, bridge, set_policy


class IdentityProvider:
    """A tenant's issuer: signing keys made here, their public halves served as a JWKS on loopback."""

    def __init__(self) -> None:
        self.issuer = f"https://idp.example/{uuid.uuid4().hex[:8]}"
        self.keys: dict[str, Any] = {}
        self.served: list[dict[str, Any]] = []
        self.add_key("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.add_key("ec-1", ec.generate_private_key(ec.SECP256R1()))
        self.requests = 0

    def add_key(self, kid: str, private: Any) -> None:
        self.keys[kid] = private
        if isinstance(private, rsa.RSAPrivateKey):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
            jwk["alg"] = "RS256"
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
            jwk["alg"] = "ES256"
        self.served.append({**jwk, "kid": kid, "use": "sig"})

    def token(self, kid: str = "rsa-1", *, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": "tenantry", "sub": "alice", "iat": now, "exp": now + 300, **claims}
        algorithm = "RS256" if kid.startswith("rsa") else "ES256"
        return jwt.encode(body, self.keys[kid], algorithm=algorithm, headers={"kid": kid, **(headers or {})})

    def app(self) -> Starlette:
        async def jwks(request: Request) -> JSONResponse:
            self.requests += 1
            return JSONResponse({"keys": self.served})

        return Starlette(routes=[Route("/jwks.json", jwks)])


def hmac_signed_with_public_key(provider: IdentityProvider) -> str:
    """What a forger makes of a public RSA key: an HS256 token whose HMAC secret is the key's PEM."""
    pem = (
        provider.keys["rsa-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = {"iss": provider.issuer, "aud": "tenantry", "sub": "mallory", "exp": int(time.time()) + 60}
    signing_input = header + b"." + b64(json.dumps(body).encode())
    return (signing_input + b"." + b64(hmac.new(pem, signing_input, hashlib.sha256).digest())).decode()


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[IdentityProvider, str]]:
    provider = IdentityProvider()
    with serve_asgi(provider.app()) as (url, _server):
        yield provider, f"{url}/jwks.json"


@pytest.fixture
async def registered(
    admin: Admin, tenant_a: TenantHandle, idp: tuple[IdentityProvider, str]
) -> AsyncIterator[IdentityProvider]:
    provider, jwks_url = idp
    body = {"issuer": provider.issuer, "jwks_url": jwks_url, "audience": "tenantry", "roles_claim": "groups"}
    r = await admin.http.put(f"/api/tenants/{tenant_a.id}/identity-provider", json=body)
    assert r.status_code == 200, r.text
    yield provider
    await admin.http.delete(f"/api/tenants/{tenant_a.id}/identity-provider")


def as_caller(tenant: TenantHandle | str, token: str) -> dict[str, str]:
    tenant_id = tenant if isinstance(tenant, str) else tenant.id
    return {"Tenant-ID": tenant_id, "Authorization": f"Bearer {token}"}


async def test_the_tenants_issuer_speaks_for_that_tenant_only_with_its_subject_and_roles(
    gateway_url: str,
    admin: Admin,
    tenant_a: TenantHandle,
    tenant_b: TenantHandle,
    http: httpx.AsyncClient,
    registered: IdentityProvider,
) -> None:
    await set_policy(admin, tenant_a, READ_ONLY)
    reader = registered.token(sub="alice@acme", groups=["reader"], org="acme")
    listed = await bridge(http, tenant_a, as_caller(tenant_a, reader), "listTools")
    assert listed.status_code == 200, listed.text
    assert {t["name"] for t in listed.json()["tools"]} == {"data_get", "data_list"}
    async with connect(f"{gateway_url}/mcp", as_caller(tenant_a, registered.token("ec-1", groups="writer"))) as client:
        assert not (await client.call_tool("data_put", {"key": "notes/idp", "value": 1})).is_error
    # The same token, presented for another tenant: refused, whatever that tenant has.
    other = await bridge(http, tenant_b, as_caller(tenant_b, reader), "listTools")
    assert (other.status_code, other.json()["error"]) == (401, "invalid_token")
    anonymous = await http.post(
        f"/api/tenant/{tenant_a.id}/tool", headers={"Authorization": f"Bearer {reader}"}, json={"method": "listTools"}
    )
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "missing_tenant_id")


@pytest.mark.parametrize(
    "forge",
    [
        lambda p: p.token(aud="someone-else"),
        lambda p: p.token(iss="https://evil.example"),
        lambda p: p.token(exp=int(time.time()) - 10),
        lambda p: p.token(headers={"kid": "no-such-key"}),
        lambda p: jwt.encode(
            {"iss": p.issuer, "aud": "tenantry", "sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none"
        ),
        # HS256 "signed" with the issuer's public key: the algorithm-confusion forgery.
        lambda p: hmac_signed_with_public_key(p),
        lambda p: p.token(sub=""),
        lambda p: p.token()[:-4] + "AAAA",  # the signature tampered with
    ],
    ids=["audience", "issuer", "expired", "unknown-kid", "alg-none", "alg-confusion", "no-subject", "tampered"],
)
async def test_every_bad_token_is_refused(
    tenant_a: TenantHandle, http: httpx.AsyncClient, registered: IdentityProvider, forge: Any
) -> None:
    r = await bridge(http, tenant_a, as_caller(tenant_a, forge(registered)), "listTools")
    assert r.status_code == 401
    assert r.json()["error"] in {"invalid_token", "token_expired"}


async def test_registration_is_checked_and_an_issuer_is_one_tenants(
    admin: Admin,
    tenant_a: TenantHandle,
    tenant_b: TenantHandle,
    http: httpx.AsyncClient,
    registered: IdentityProvider,
    idp: tuple[IdentityProvider, str],
) -> None:
    _, jwks_url = idp
    path = f"/api/tenants/{tenant_b.id}/identity-provider"
    taken = await admin.http.put(path, json={"issuer": registered.issuer, "jwks_url": jwks_url, "audience": "tenantry"})
    assert (taken.status_code, taken.json()["error"]) == (409, "issuer_taken")
    metadata = await admin.http.put(
        path, json={"issuer": "https://b.example", "jwks_url": "http://169.254.169.254/keys", "audience": "x"}
    )
    assert (metadata.status_code, metadata.json()["error"]) == (400, "upstream_url_forbidden")
    weak = await admin.http.put(
        path, json={"issuer": "https://b.example", "jwks_url": jwks_url, "audience": "x", "algorithms": ["HS256"]}
    )
    assert weak.status_code == 400
    assert (await admin.http.get(path)).status_code == 404  # nothing stored
    mine = (await admin.http.get(f"/api/tenants/{tenant_a.id}/identity-provider")).json()
    assert (mine["issuer"], mine["roles_claim"]) == (registered.issuer, "groups")
    # Removed: its tokens stop at once.
    token = registered.token(groups=["reader"])
    assert (await bridge(http, tenant_a, as_caller(tenant_a, token), "listTools")).status_code == 200
    assert (await admin.http.delete(f"/api/tenants/{tenant_a.id}/identity-provider")).status_code == 200
    assert (await bridge(http, tenant_a, as_caller(tenant_a, token), "listTools")).status_code == 401


async def test_a_new_signing_key_is_fetched_once_and_a_flood_of_unknown_ones_is_not(
    db: Database, tenant_a: TenantHandle, registered: IdentityProvider
) -> None:
    now = [1000.0]
    guard: Any = lambda url: check_url(url, allow_private=False, allow_loopback=True)  # noqa: E731
    issuers = TenantIssuers(db, guard, clock=lambda: now[0])
    tenant = uuid.UUID(tenant_a.id)
    assert (await issuers.verify(tenant, registered.token())).subject == "alice"
    assert issuers.fetches == 1
    registered.add_key("rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    rotated = registered.token("rsa-2")
    for _ in range(20):  # within the refetch interval: refused without asking the issuer again
        with pytest.raises(Exception, match="no key"):
            await issuers.verify(tenant, rotated)
    assert issuers.fetches == 1
    now[0] += 11
    assert (await issuers.verify(tenant, rotated)).subject == "alice"
    assert issuers.fetches == 2
    assert (await issuers.verify(tenant, registered.token("ec-1"))).subject == "alice"
    assert issuers.fetches == 2
