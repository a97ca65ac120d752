"""Make, fill, check and drop a tenant's tier copy: its own schema or its own database.

The mechanics under `tiers.py` (which decides when): each function is idempotent, so a repeated
onboarding or an interrupted move can simply run again.

- `create_copy`: the schema (on the shared database) or the database (on the shared server, or on
  the server a tenant's URL names) with the data-plane tables of `tier_schema`, in one transaction
  (a copy is whole or absent); an existing copy is upgraded to `tier_schema.HEAD` instead, and one
  made before its tenant's trail moved into it (revision 2) gets, in the same transaction, the
  records that tenant left in the shared trail until then (`adopt_trail`; the caller removes them
  from the shared tables once the new revision is recorded).
- `copy_rows`: the tenant's rows from one data plane to another (`tenant_storage` is rebuilt by the
  destination's own trigger as the rows arrive, so its counters cannot disagree with the rows);
- `copy_trail`: the tenant's audit records, every column as stored (seq and hashes unchanged: the
  chain verifies in its new copy), in batches through a server-side cursor, and its chain head;
- `fingerprint`: row count and an md5 per table, for the move's verification: over the rows in key
  order for the data store, over (seq, hash) in seq order for the trail;
- `fence` / `empty`: mark the tenant's rows of the copy a move leaves `moved` (and back), delete them;
- `drop_copy`: drop the schema or database (after the rows were archived or moved).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tenantry.db import tier_schema
from tenantry.db.migrate import connect_server, ensure_database
from tenantry.db.rls import identifier
from tenantry.db.router import DATABASE, SCHEMA, Placement
from tenantry.errors import BadRequest

_SET_PATH = text("SELECT set_config('search_path', :path, true)")
_HAS_TABLES = text("SELECT to_regclass(:qualified) IS NOT NULL")


@asynccontextmanager
async def _owner_engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def owner_transaction(
    system: AsyncEngine, owner_url: str, placement: Placement
) -> AsyncIterator[AsyncConnection]:
    """The owner's transaction with `placement`'s tables first on the search path."""
    if placement.tier == DATABASE:
        async with _owner_engine(owner_url) as engine, engine.begin() as conn:
            yield conn
        return
    async with system.begin() as conn:
        if placement.tier == SCHEMA:
            await conn.execute(_SET_PATH, {"path": placement.name})
        yield conn


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])?$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")


def check_database_url(tier: str, url: str | None) -> str | None:
    """A database-tier tenant may name another server: a `postgresql+asyncpg://` URL, database included."""
    if url is None:
        return None
    if tier != DATABASE:
        raise BadRequest("only a database-tier tenant may name a database URL", code="invalid_database_url")
    shape = "the database URL must be postgresql+asyncpg://user[:password]@host[:port]/database"
    try:
        parts = make_url(url)
        port = parts.port
    except Exception:  # whatever SQLAlchemy refuses to parse
        raise BadRequest(shape, code="invalid_database_url") from None
    plain = all(_NAME.match(v) for v in (parts.database or "", parts.username or "postgres"))
    if parts.drivername != "postgresql+asyncpg" or not _HOST.match(parts.host or "") or not plain or parts.query:
        raise BadRequest(shape, code="invalid_database_url")
    if port is not None and not 0 < port < 65_536:
        raise BadRequest(shape, code="invalid_database_url")
    return url


async def check_reachable(url: str | None) -> None:
    """A database URL an admin gives must answer before anything is changed for it (a 400, not a 5xx)."""
    if url is None:
        return
    try:
        await check_server(url)
    except Exception as exc:  # whatever stops the connection: the admin's URL, not the gateway, is at fault
        raise BadRequest(
            f"the database server does not answer: {type(exc).__name__}", code="database_unreachable"
        ) from None


# A move's liveness (`move_lock`): a transaction-level advisory lock per tenant, keyed off the tenant id's
# random last 8 bytes, xor a constant of its own (so it never meets the reporter's or the mover's key).
_MOVE_LOCK_SALT = 0x6D6F76_696E67  # "moving"
_TRY_MOVE_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
_MOVE_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout ran out


def move_key(tenant_id: uuid.UUID) -> int:
    return int.from_bytes(tenant_id.bytes[8:], "big", signed=True) ^ _MOVE_LOCK_SALT


@asynccontextmanager
async def move_lock(system: AsyncEngine, tenant_id: uuid.UUID, *, wait_s: float = 0.0) -> AsyncIterator[bool]:
    """Hold the tenant's move lock for the block, on an owner connection of its own, in a transaction that
    ends with the block (or with the process: a crash lets go of it). Yields whether it was had, waiting
    up to `wait_s` for a move that holds it to end: not had means a move of the tenant is running now. A
    claim (`tenants.moving_since`) whose lock is free is one a dead move left (`tier_moves`)."""
    params = {"key": move_key(tenant_id)}
    async with system.connect() as conn, conn.begin():
        if wait_s <= 0:
            yield bool((await conn.execute(_TRY_MOVE_LOCK, params)).scalar_one())
            return
        had = True
        try:
            async with conn.begin_nested():
                await conn.execute(text(f"SET LOCAL lock_timeout = {max(1, round(wait_s * 1000))}"))
                await conn.execute(_MOVE_LOCK, params)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            had = False
        yield had


async def create_copy(
    system: AsyncEngine, owner_url: str, placement: Placement, app_role: str, *, tenant_id: uuid.UUID | None = None
) -> int:
    """Create (or upgrade) `placement`'s copy; returns the revision it is on (`tier_schema.HEAD`). With
    `tenant_id`, an upgrade past `AUDIT_REVISION` brings that tenant's shared trail along (`adopt_trail`)."""
    role = identifier(app_role)
    if placement.tier == DATABASE:
        await _create_database(owner_url)
        namespace = "public"
    else:
        namespace = identifier(str(placement.name))
    async with owner_transaction(system, owner_url, placement) as conn:
        if placement.tier == SCHEMA:
            await conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {namespace}")
            await conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {namespace} TO {role}")
            await conn.execute(_SET_PATH, {"path": namespace})
        else:
            await conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {role}")
            # The trail's functions pin the search path they are made under (`audit_schema.py`): this one.
            await conn.execute(_SET_PATH, {"path": namespace})
        exists = (await conn.execute(_HAS_TABLES, {"qualified": f"{namespace}.tenant_data"})).scalar_one()
        current = placement.revision if exists else 0
        for statement in tier_schema.upgrade_statements(current, role):
            await conn.exec_driver_sql(statement)
        if tenant_id is not None and 0 < current < tier_schema.AUDIT_REVISION:
            await adopt_trail(system, conn, tenant_id)
    return tier_schema.HEAD


async def adopt_trail(system: AsyncEngine, target: AsyncConnection, tenant_id: uuid.UUID) -> int:
    """Copy the tenant's records from the shared trail into `target` (its copy, just given the trail's
    tables) and verify them; returns how many. Nothing appends there meanwhile: the router refuses a copy
    on an older revision, so the drain leaves the tenant's new records waiting."""
    async with system.begin() as source:
        await source.execute(_LOCK_HEAD, {"t": tenant_id})
        adopted = await copy_trail(source, target, tenant_id)
        before, after = await fingerprint(source, tenant_id, TRAIL), await fingerprint(target, tenant_id, TRAIL)
    if before != after:
        raise RuntimeError(f"the adopted trail does not match the shared one: {before} != {after}")
    return adopted


_LOCK_HEAD = text("SELECT 1 FROM audit_chain_heads WHERE tenant_id = :t FOR UPDATE")
TRAIL = ("audit_records", "audit_chain_heads")


async def _create_database(owner_url: str) -> None:
    # CREATE DATABASE copies template1 and fails while anyone else is connected to it (another
    # CREATE DATABASE on the same server, say): that passes in moments, so it is retried briefly.
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            await ensure_database(owner_url)
            return
        except asyncpg.ObjectInUseError:
            if attempt == _CREATE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))


_CREATE_ATTEMPTS = 5


async def copy_rows(source: AsyncConnection, target: AsyncConnection, tenant_id: uuid.UUID) -> int:
    """Copy the tenant's data-store rows; returns how many. The target's trigger counts its storage."""
    rows = (
        await source.execute(
            text(
                "SELECT tenant_id, key, value, size_bytes, created_at, updated_at FROM tenant_data"
                " WHERE tenant_id = :t ORDER BY key"
            ),
            {"t": tenant_id},
        )
    ).all()
    if rows:
        await target.execute(
            text(
                "INSERT INTO tenant_data (tenant_id, key, value, size_bytes, created_at, updated_at)"
                " VALUES (:tenant_id, :key, CAST(:value AS jsonb), :size_bytes, :created_at, :updated_at)"
            ),
            [
                {
                    "tenant_id": r.tenant_id,
                    "key": r.key,
                    "value": _json(r.value),
                    "size_bytes": r.size_bytes,
                    "created_at": r.created_at,
                    "updated_at": r.updated_at,
                }
                for r in rows
            ],
        )
    return len(rows)


_TRAIL_COLUMNS = (
    "tenant_id, at, seq, id, request_id, transport, method, tool, subject, key_id, session, decision, reason,"
    " outcome, status, latency_us, event_id, args_digest, args, detail, prev_hash, hash"
)
# jsonb as its text, cast back on the way in: the same value, and so the same canonical text and hash
# (through Python's floats a number could come back another).
_READ_TRAIL = text(  # constants only
    f"SELECT {_TRAIL_COLUMNS.replace('args, detail', 'args::text AS args, detail::text AS detail')}"  # noqa: S608
    " FROM audit_records WHERE tenant_id = :t ORDER BY seq"
)
_WRITE_TRAIL = text(
    f"INSERT INTO audit_records ({_TRAIL_COLUMNS}) VALUES ("  # noqa: S608
    + ", ".join(
        f"CAST(:{c} AS jsonb)" if c in ("args", "detail") else f":{c}"
        for c in (name.strip() for name in _TRAIL_COLUMNS.split(","))
    )
    + ")"
)
_READ_HEAD = text("SELECT seq, hash, anchor_seq, anchor_hash FROM audit_chain_heads WHERE tenant_id = :t")
_WRITE_HEAD = text(
    "INSERT INTO audit_chain_heads (tenant_id, seq, hash, anchor_seq, anchor_hash)"
    " VALUES (:t, :seq, :hash, :anchor_seq, :anchor_hash)"
)
_TRAIL_BATCH = 1000
_MONTHS = text(
    "SELECT DISTINCT date_trunc('month', at, 'UTC') AS month FROM audit_records WHERE tenant_id = :t ORDER BY 1"
)
_MONTH_FREE = text(
    "SELECT to_regclass(:name) IS NULL AND NOT EXISTS (SELECT FROM audit_records_default WHERE at >= :lo AND at < :hi)"
)


async def copy_trail(
    source: AsyncConnection, target: AsyncConnection, tenant_id: uuid.UUID, *, make_months: bool = False
) -> int:
    """Copy the tenant's audit trail (records and chain head, as stored); returns how many records.

    `make_months`: first make the target's monthly partitions for the months the records fall in (a new
    tier copy has this month's and the next two only), so retention drops them there as it would have
    here; a month whose range the default partition already holds rows of is left to it."""
    if make_months:
        for (month,) in await source.execute(_MONTHS, {"t": tenant_id}):
            lo, hi = month, (month + timedelta(days=32)).replace(day=1)
            name = f"audit_records_y{lo:%Y}m{lo:%m}"
            if (await target.execute(_MONTH_FREE, {"name": name, "lo": lo, "hi": hi})).scalar_one():
                await target.exec_driver_sql(
                    f"CREATE TABLE {name} PARTITION OF audit_records FOR VALUES FROM ('{lo.isoformat()}') TO"
                    f" ('{hi.isoformat()}')"
                )
    head = (await source.execute(_READ_HEAD, {"t": tenant_id})).one_or_none()
    if head is not None:
        await target.execute(_WRITE_HEAD, {"t": tenant_id, **head._asdict()})
    copied = 0
    rows = await source.stream(_READ_TRAIL, {"t": tenant_id})
    async for batch in rows.partitions(_TRAIL_BATCH):
        await target.execute(_WRITE_TRAIL, [row._asdict() for row in batch])
        copied += len(batch)
    return copied


# The rows a move fences in the copy it leaves: what every write of the data store, and every append to
# the audit trail, updates (and so locks) in the same transaction.
_FENCED = ("tenant_storage", "audit_chain_heads")
# The storage row first: a fenced one would refuse the counting trigger's updates.
_EMPTIED = ("tenant_storage", "tenant_data", "audit_chain_heads", "audit_records")


async def fence(conn: AsyncConnection, tenant_id: uuid.UUID, moved: bool) -> None:
    """Fence (or unfence) the tenant's rows in the copy `conn` is on (a move's step 3, `tiers.py`)."""
    for table in _FENCED:
        if moved:
            row = text(f"INSERT INTO {table} (tenant_id) VALUES (:t) ON CONFLICT DO NOTHING")  # noqa: S608 (constants)
            await conn.execute(row, {"t": tenant_id})
        flag = text(f"UPDATE {table} SET moved = :m WHERE tenant_id = :t")  # noqa: S608 (constants)
        await conn.execute(flag, {"t": tenant_id, "m": moved})


async def empty(conn: AsyncConnection, tenant_id: uuid.UUID, tables: tuple[str, ...] = _EMPTIED) -> None:
    """Delete the tenant's rows of `tables` from the copy `conn` is on: a copy left behind, a target emptied
    of what an interrupted move put there, a shared trail a tier copy adopted. As the owner: the
    application role cannot delete audit records."""
    for table in tables:
        await conn.execute(text(f"DELETE FROM {table} WHERE tenant_id = :t"), {"t": tenant_id})  # noqa: S608


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_FINGERPRINTS = {
    "tenant_data": text(
        "SELECT count(*) AS n, coalesce(md5(string_agg(concat_ws('|', key, value::text, size_bytes,"
        " created_at, updated_at), E'\\n' ORDER BY key)), '') AS sum FROM tenant_data WHERE tenant_id = :t"
    ),
    "tenant_storage": text(
        "SELECT count(*) AS n, coalesce(md5(string_agg(concat_ws('|', bytes, keys), ',')), '') AS sum"
        " FROM tenant_storage WHERE tenant_id = :t AND keys > 0"
    ),
    "audit_records": text(
        "SELECT count(*) AS n, coalesce(md5(string_agg(seq || ':' || encode(hash, 'hex'), ',' ORDER BY seq)), '')"
        " AS sum FROM audit_records WHERE tenant_id = :t"
    ),
    "audit_chain_heads": text(
        "SELECT count(*) AS n, coalesce(md5(string_agg(concat_ws('|', seq, encode(hash, 'hex'), anchor_seq,"
        " encode(anchor_hash, 'hex')), ',')), '') AS sum FROM audit_chain_heads WHERE tenant_id = :t"
    ),
}


async def fingerprint(
    conn: AsyncConnection, tenant_id: uuid.UUID, tables: tuple[str, ...] = tier_schema.DATA_PLANE_TABLES
) -> dict[str, dict[str, object]]:
    """{table: {"rows", "checksum"}} of the tenant's data plane (or of `tables` of it) on `conn`."""
    found: dict[str, dict[str, object]] = {}
    for table in tables:
        row = (await conn.execute(_FINGERPRINTS[table], {"t": tenant_id})).one()
        found[table] = {"rows": int(row.n), "checksum": row.sum}
    return found


async def check_server(owner_url: str, *, connect_timeout: float = 5.0) -> None:
    """Connect to the server `owner_url` names (its `postgres` database) and hang up; raises what fails."""
    conn = await connect_server(owner_url, connect_timeout=connect_timeout)
    await conn.close()


async def drop_copy(system: AsyncEngine, owner_url: str, placement: Placement) -> None:
    """Drop `placement`'s schema or database (gone already: nothing to do)."""
    if placement.tier == SCHEMA:
        async with system.begin() as conn:
            await conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {identifier(str(placement.name))} CASCADE")
        return
    if placement.tier != DATABASE:
        return
    parts = make_url(owner_url)
    conn = await connect_server(owner_url)
    try:
        name = '"' + str(parts.database).replace('"', '""') + '"'
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()
