"""A database-tier tenant's own login on another server.

The gateway's application role password (`TENANTRY_DB_APP_PASSWORD`) opens the gateway's own server;
sending it to a server an admin named would hand it to whoever runs that server. So a tenant placed on
another server is reached as a login role of its own there, `<app role>_t_<tenant>`: a member of the
application role (so the tier copy's grants and RLS policies, written for the application role, apply
to it; it is neither superuser nor BYPASSRLS), with a generated password sealed with the tenant's other
placement secrets, and the only role besides the owner that may connect to the tenant's database.
Provisioning creates it, or resets its password when the tenant is placed there again.

The password goes to the server as a SCRAM-SHA-256 verifier, never in clear, so it cannot surface in
that server's statement log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import uuid

import asyncpg
from sqlalchemy.engine import make_url

from tenantry.db.migrate import connect_server, ensure_database
from tenantry.db.rls import identifier
from tenantry.errors import Conflict

SCRAM_ITERATIONS = 4096


def login_name(app_role: str, tenant_id: uuid.UUID) -> str:
    suffix = f"_t_{tenant_id.hex}"
    return app_role[: 63 - len(suffix)] + suffix


def new_password() -> str:
    return secrets.token_urlsafe(32)


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802/7677), as `pg_authid` keeps it."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored).decode()}:{b64(server).decode()}"


async def _connect(owner_url: str, database: str) -> asyncpg.Connection:
    return await connect_server(owner_url, database=database)


async def ensure_login(owner_url: str, login: str, password: str, app_role: str) -> None:
    """Create (or reset) `login` on the server `owner_url` names, member of `app_role` (created without
    a login if the server has none), allowed to connect to `owner_url`'s database and no other of ours.
    The database is created here if missing, so its CONNECT grant can be narrowed at once."""
    role, user = identifier(app_role), identifier(login)
    database = str(make_url(owner_url).database)
    await ensure_database(owner_url)
    conn = await _connect(owner_url, "postgres")
    try:
        async with conn.transaction():
            for name in (role, user):
                exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
                if not exists:
                    await conn.execute(f"CREATE ROLE {name} NOLOGIN")
            verifier = scram_verifier(password)  # base64, '$' and ':' only: safe inside the literal
            await conn.execute(f"ALTER ROLE {user} WITH LOGIN NOCREATEDB NOCREATEROLE INHERIT PASSWORD '{verifier}'")
            # Made here without either; but a role of that name someone made a superuser (which only a
            # superuser owner could undo) would turn RLS off for the tenant: refuse it.
            unsafe = "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = $1"
            if await conn.fetchval(unsafe, user):
                raise Conflict(
                    f"the role {user} on the tenant's server bypasses row-level security; refusing to use it",
                    code="unsafe_tenant_login",
                )
            await conn.execute(f"GRANT {role} TO {user}")
            quoted = '"' + database.replace('"', '""') + '"'
            await conn.execute(f"REVOKE CONNECT ON DATABASE {quoted} FROM PUBLIC")
            await conn.execute(f"GRANT CONNECT ON DATABASE {quoted} TO {user}")
    finally:
        await conn.close()


async def drop_login(owner_url: str, login: str) -> None:
    """Drop `login` (after its database was dropped; already gone: nothing to do)."""
    conn = await _connect(owner_url, "postgres")
    try:
        await conn.execute(f"DROP ROLE IF EXISTS {identifier(login)}")
    finally:
        await conn.close()
