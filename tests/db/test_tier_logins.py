"""A database-tier tenant on another server is reached as its own login there, never with the gateway's
own application password.

"Another server" is simulated on the test PostgreSQL: a URL with an owner role of its own (not the
gateway's `postgres`), which is all the gateway knows of a server an admin names. Authentication on this
machine is `trust`, so a wrong password would still connect: the tests prove the credentials by what the
server stores (`pg_authid`'s SCRAM verifier against the sealed password) and by who each session is.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tenantry import tiers
from tenantry.db.engine import Database
from tenantry.db.logins import login_name, scram_verifier
from tenantry.db.router import DATABASE, SHARED
from tenantry.settings import Settings
from tests.conftest import SERVER, TEST_DB
from tests.db.test_tiers import _keys, _put, _tenant

GATEWAY_APP_PASSWORD = "the-gateways-own-app-password"


async def _server() -> asyncpg.Connection:
    return await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
async def remote_owner() -> AsyncIterator[str]:
    """The owner role of the "other server": it may create databases and roles, and grant the app role."""
    name = f"tenantry_remote_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = await _server()
    try:
        await conn.execute(f"CREATE ROLE {name} LOGIN CREATEDB CREATEROLE PASSWORD 'remote-owner-pw'")
        yield name
        for database in await conn.fetch(
            "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = $1)", name
        ):
            await conn.execute(f'DROP DATABASE IF EXISTS "{database["datname"]}" WITH (FORCE)')
        await conn.execute(f"DROP ROLE IF EXISTS {name}")
    finally:
        await conn.close()


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[tuple[Database, Settings]]:
    """A gateway whose own application role has a password (the one that must never leave its server)."""
    own = settings.model_copy(update={"db_app_password": GATEWAY_APP_PASSWORD})
    db = Database(own)
    try:
        yield db, own
    finally:
        await db.dispose()


def _remote_url(owner: str, tenant_id: uuid.UUID) -> str:
    # Named after the test database, so the session's teardown drops it whatever happens here.
    return f"{SERVER.replace('postgres@', f'{owner}:remote-owner-pw@')}/{TEST_DB}_t_r{tenant_id.hex[:20]}"


async def _role(login: str) -> asyncpg.Record | None:
    conn = await _server()
    try:
        return await conn.fetchrow(
            """
            SELECT a.rolpassword, a.rolsuper, a.rolbypassrls, a.rolcanlogin,
                   pg_has_role(a.rolname, 'tenantry_app', 'MEMBER') AS member
            FROM pg_authid a WHERE a.rolname = $1
            """,
            login,
        )
    finally:
        await conn.close()


def _verifies(stored: str, password: str) -> bool:
    """`stored` (pg_authid's SCRAM-SHA-256 verifier) is what `password` gives with the same salt."""
    iterations, salt = stored.split("$")[1].split(":")
    return scram_verifier(password, salt=base64.b64decode(salt), iterations=int(iterations)) == stored


async def _app_role_password() -> str | None:
    conn = await _server()
    try:
        value: str | None = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'tenantry_app'")
        return value
    finally:
        await conn.close()


async def test_a_tenant_on_another_server_is_served_as_its_own_login_with_a_sealed_generated_password(
    gateway: tuple[Database, Settings], remote_owner: str
) -> None:
    db, settings = gateway
    tenant_id = await _tenant(db)
    await _put(db, tenant_id, "kept")
    app_role_before = await _app_role_password()
    url = _remote_url(remote_owner, tenant_id)

    moved = await tiers.move_tenant(db, settings, tenant_id, DATABASE, database_url=url)
    assert moved["moved"]

    placement = await db.router.placement(tenant_id)
    login = login_name("tenantry_app", tenant_id)
    assert (placement.tier, placement.app_user) == (DATABASE, login)
    assert placement.app_password
    assert placement.app_password != GATEWAY_APP_PASSWORD
    app_url = make_url(db.router.app_url(placement))
    assert (app_url.username, app_url.password) == (login, placement.app_password)
    assert GATEWAY_APP_PASSWORD not in db.router.app_url(placement)
    async with db.system() as conn:  # nothing in the clear in the tenant row
        row = (
            await conn.execute(
                text("SELECT placement_url, placement_secret FROM tenants WHERE id = :t"), {"t": tenant_id}
            )
        ).one()
    assert "remote-owner-pw" not in row.placement_url
    assert placement.app_password.encode() not in row.placement_secret

    role = await _role(login)
    assert role is not None
    assert role["rolcanlogin"]
    assert role["member"]
    assert not role["rolsuper"]
    assert not role["rolbypassrls"]
    assert _verifies(role["rolpassword"], placement.app_password)
    assert await _app_role_password() == app_role_before  # the gateway's own role was not touched

    async with db.tenant(tenant_id) as conn:  # served as the tenant's login, under RLS
        assert (await conn.execute(text("SELECT current_user"))).scalar_one() == login
    assert await _keys(db, tenant_id) == ["kept"]
    conn = await _server()
    try:
        database = make_url(url).database
        can = "SELECT has_database_privilege($1, $2, 'CONNECT')"
        assert await conn.fetchval(can, login, database)
        assert not await conn.fetchval(can, "tenantry_app", database)  # only its login may connect
    finally:
        await conn.close()
    await tiers.cleanup_tenant(db, settings, tenant_id)
    await tiers.offboard_tier(db, settings, tenant_id)  # logins are cluster-wide: leave none behind
    assert await _role(login) is None


async def test_placing_a_tenant_there_again_resets_its_password_and_cleanup_drops_its_login(
    gateway: tuple[Database, Settings], remote_owner: str
) -> None:
    db, settings = gateway
    tenant_id = await _tenant(db)
    await _put(db, tenant_id, "kept")
    url = _remote_url(remote_owner, tenant_id)
    login = login_name("tenantry_app", tenant_id)

    await tiers.move_tenant(db, settings, tenant_id, DATABASE, database_url=url)
    first = (await db.router.placement(tenant_id)).app_password
    await tiers.cleanup_tenant(db, settings, tenant_id)
    await tiers.move_tenant(db, settings, tenant_id, SHARED)
    await tiers.cleanup_tenant(db, settings, tenant_id)  # the other server's database and login go
    assert await _role(login) is None
    assert await _keys(db, tenant_id) == ["kept"]

    await tiers.move_tenant(db, settings, tenant_id, DATABASE, database_url=url)
    second = (await db.router.placement(tenant_id)).app_password
    assert second
    assert second != first
    role = await _role(login)
    assert role is not None
    assert _verifies(role["rolpassword"], second)
    assert await _keys(db, tenant_id) == ["kept"]
    await tiers.cleanup_tenant(db, settings, tenant_id)
    await tiers.offboard_tier(db, settings, tenant_id)
    assert await _role(login) is None


async def test_the_gateways_own_server_keeps_the_gateways_application_role(
    gateway: tuple[Database, Settings],
) -> None:
    db, settings = gateway
    tenant_id = await _tenant(db)
    await tiers.move_tenant(db, settings, tenant_id, DATABASE)
    placement = await db.router.placement(tenant_id)
    app_url = make_url(db.router.app_url(placement))
    assert (app_url.username, app_url.password) == ("tenantry_app", GATEWAY_APP_PASSWORD)
    assert placement.app_user is None
    async with db.tenant(tenant_id) as conn:
        assert (await conn.execute(text("SELECT current_user"))).scalar_one() == "tenantry_app"
