"""Tenant API keys: made once, shown once, stored as a SHA-256 hash.

A key is `tnt_` + 43 URL-safe characters (256 random bits). A key that long
needs no slow KDF: SHA-256 cannot be brute-forced back to 256 random bits,
and hashing costs about a microsecond on the hot path.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db.engine import note_tenant_changed
from tenantry.db.models import api_keys
from tenantry.errors import Conflict, NotFound

KEY_PREFIX = "tnt_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    subject: str | None
    roles: list[str]
    tools: list[str] | None

    def public(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "tenant_id": str(self.tenant_id),
            "name": self.name,
            "subject": self.subject or self.name,
            "roles": self.roles,
            "tools": self.tools,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


_COLUMNS = (
    api_keys.c.id,
    api_keys.c.tenant_id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
    api_keys.c.subject,
    api_keys.c.roles,
    api_keys.c.tools,
)


async def create_key(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    name: str,
    *,
    subject: str | None = None,
    roles: Sequence[str] = (),
    tools: Sequence[str] | None = None,
) -> tuple[ApiKeyInfo, str]:
    """Store a new key for `tenant_id`, speaking for `subject` (default: its name) with `roles`, and
    able to call only `tools` (glob patterns; None: no restriction of its own); return its record and
    the secret (the only time it exists)."""
    secret = generate_key()
    row = (
        await conn.execute(
            insert(api_keys)
            .values(
                tenant_id=tenant_id,
                id=uuid.uuid4(),
                name=name,
                prefix=secret[: len(KEY_PREFIX) + 6],
                key_hash=hash_key(secret),
                subject=subject,
                roles=sorted(set(roles)),
                tools=None if tools is None else list(dict.fromkeys(tools)),
            )
            .returning(*_COLUMNS)
        )
    ).one()
    return ApiKeyInfo(*row), secret


async def list_keys(conn: AsyncConnection, tenant_id: uuid.UUID) -> list[ApiKeyInfo]:
    rows = await conn.execute(
        select(*_COLUMNS).where(api_keys.c.tenant_id == tenant_id).order_by(api_keys.c.created_at)
    )
    return [ApiKeyInfo(*row) for row in rows]


# `update_key(tools=UNCHANGED)`: the scope stays (None would mean: any tool).
UNCHANGED: list[str] = []


async def update_key(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    key_id: uuid.UUID,
    *,
    roles: Sequence[str] | None = None,
    tools: Sequence[str] | None = UNCHANGED,
) -> ApiKeyInfo:
    """Change a live key's `roles` (None: unchanged) and `tools` (None: any tool; omitted: unchanged).
    Every replica forgets what it cached for the tenant at commit (here, and migration 0017's trigger
    elsewhere), so the next call with the key is judged by what it carries now."""
    values: dict[str, object] = {}
    if roles is not None:
        values["roles"] = sorted(set(roles))
    if tools is not UNCHANGED:
        values["tools"] = None if tools is None else list(dict.fromkeys(tools))
    where = (api_keys.c.tenant_id == tenant_id, api_keys.c.id == key_id)
    current = (await conn.execute(select(*_COLUMNS).where(*where).with_for_update())).one_or_none()
    if current is None:
        raise NotFound(f"no key {key_id} for tenant {tenant_id}", code="key_not_found")
    if current.revoked_at is not None:
        raise Conflict("a revoked key cannot be changed; create a new one", code="key_revoked")
    if not values:
        return ApiKeyInfo(*current)
    row = (await conn.execute(update(api_keys).where(*where).values(**values).returning(*_COLUMNS))).one()
    note_tenant_changed(conn, tenant_id)
    return ApiKeyInfo(*row)


async def revoke_key(conn: AsyncConnection, tenant_id: uuid.UUID, key_id: uuid.UUID) -> ApiKeyInfo:
    row = (
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.tenant_id == tenant_id, api_keys.c.id == key_id)
            .values(revoked_at=func.coalesce(api_keys.c.revoked_at, func.now()))
            .returning(*_COLUMNS)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"no key {key_id} for tenant {tenant_id}", code="key_not_found")
    note_tenant_changed(conn, tenant_id)
    return ApiKeyInfo(*row)


async def revoke_all_keys(conn: AsyncConnection, tenant_id: uuid.UUID) -> int:
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.tenant_id == tenant_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    note_tenant_changed(conn, tenant_id)
    return result.rowcount
