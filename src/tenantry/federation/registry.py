"""A tenant's upstream MCP servers and their pinned tool definitions, on a tenant-bound connection.

Every function here takes a connection from `Database.tenant(tenant_id)`, so
RLS decides which rows exist: another tenant's upstream is simply not found.
Credentials are sealed by `SecretBox` before they reach a statement; what
leaves this module for callers (`Upstream.public()`) names the headers only.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db.models import upstream_tool_drift, upstream_tool_pins, upstreams
from tenantry.errors import BadRequest, Conflict, NotFound
from tenantry.secrets import SecretBox

# `openapi`: not MCP at all but a REST API described by an OpenAPI document (`federation/openapi.py`).
TRANSPORTS = ("streamable_http", "sse", "openapi")
NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
# Headers the gateway owns on the upstream connection; a tenant cannot set them.
RESERVED_HEADERS = {"host", "content-length", "content-type", "accept", "mcp-session-id", "mcp-protocol-version"}
SEPARATOR = "__"


@dataclass(frozen=True, slots=True)
class Upstream:
    tenant_id: uuid.UUID
    id: uuid.UUID
    name: str
    url: str
    transport: str
    credentials: bytes
    header_names: list[str]
    costs: dict[str, int]
    created_at: datetime
    updated_at: datetime
    # Kind `openapi` only: the uploaded document (None: fetched from `url`) and the operation filters.
    document: dict[str, Any] | None = field(default=None, repr=False)
    operations: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True  # False: kept, but nothing discovered, listed or called

    def public(self) -> dict[str, Any]:
        kind: dict[str, Any] = {}
        if self.transport == "openapi":
            kind = {"document": "uploaded" if self.document is not None else "url", "operations": self.operations}
        return {
            "id": str(self.id),
            "tenant_id": str(self.tenant_id),
            "name": self.name,
            "url": self.url,
            "transport": self.transport,
            "enabled": self.enabled,
            "header_names": self.header_names,
            "costs": self.costs,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            **kind,
        }


@dataclass(frozen=True, slots=True)
class Pin:
    tool: str
    sha256: str
    definition: dict[str, Any]
    reviewed: bool = False  # an admin approved it (a flagged definition passes only so)


_COLUMNS = tuple(upstreams.c)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise BadRequest(
            "an upstream name is a slug: a lower-case letter, then up to 39 of a-z, 0-9 and '-'",
            code="invalid_upstream_name",
        )
    return name


def check_transport(transport: str) -> str:
    if transport not in TRANSPORTS:
        known = list(TRANSPORTS)
        raise BadRequest(f"unknown transport {transport[:40]!r}; use one of {known}", code="invalid_transport")
    return transport


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not HEADER_NAME.match(name) or name.lower() in RESERVED_HEADERS:
            raise BadRequest(f"header {name[:100]!r} cannot be injected", code="invalid_header")
        if "\r" in value or "\n" in value or len(value) > 8192:
            raise BadRequest(f"the value of header {name!r} is not a valid header value", code="invalid_header")
    return headers


def check_costs(costs: dict[str, int]) -> dict[str, int]:
    for tool, cost in costs.items():
        if not 0 <= cost <= 1_000_000 or not tool or len(tool) > 200:
            raise BadRequest("costs map a tool name to 0..1000000 units", code="invalid_costs")
    return costs


def definition_digest(definition: dict[str, Any]) -> str:
    """sha256 of what a model reads of a tool: its name, description and input schema."""
    canonical = {
        "name": definition.get("name"),
        "description": definition.get("description"),
        "input_schema": definition.get("inputSchema", definition.get("input_schema")),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def create_upstream(
    conn: AsyncConnection,
    box: SecretBox,
    tenant_id: uuid.UUID,
    *,
    name: str,
    url: str,
    transport: str,
    headers: dict[str, str],
    costs: dict[str, int],
    max_upstreams: int | None = None,
    document: dict[str, Any] | None = None,
    operations: dict[str, Any] | None = None,
) -> Upstream:
    """Register an upstream; past `max_upstreams` (the tenant's plan), 409 `upstream_quota_exceeded`."""
    if max_upstreams is not None:
        await _check_room(conn, tenant_id, max_upstreams)
    values = {
        "tenant_id": tenant_id,
        "id": uuid.uuid4(),
        "name": name,
        "url": url,
        "transport": transport,
        "credentials": box.seal(headers),
        "header_names": sorted(headers),
        "costs": costs,
        "operations": operations or {},
    }
    if document is not None:  # else SQL NULL: None would be stored as the JSON value null
        values["document"] = document
    try:
        async with conn.begin_nested():
            row = (await conn.execute(insert(upstreams).values(**values).returning(*_COLUMNS))).one()
    except IntegrityError as exc:
        raise Conflict(f"this tenant already has an upstream named {name!r}", code="upstream_exists") from exc
    return Upstream(*row)


# Creates of one tenant's upstreams queue here until the creator's transaction ends, so each counts
# what the ones before it committed: N concurrent creates against a limit of L make at most L. An
# advisory lock, because the application role may not lock the tenant's row (it can only read it).
_LOCK_UPSTREAMS = text(
    "SELECT pg_advisory_xact_lock(hashtext('tenantry.upstreams'), hashtext(CAST(:tenant_id AS text)))"
)


async def _check_room(conn: AsyncConnection, tenant_id: uuid.UUID, limit: int) -> None:
    await conn.execute(_LOCK_UPSTREAMS, {"tenant_id": str(tenant_id)})
    used = int((await conn.execute(select(func.count()).select_from(upstreams))).scalar_one())
    if used >= limit:
        raise Conflict(
            f"this tenant has {used} upstream(s) and its plan allows {limit}; remove one first",
            code="upstream_quota_exceeded",
            extra={"quota": "max_upstreams", "used": used, "limit": limit},
        )


async def list_upstreams(conn: AsyncConnection) -> list[Upstream]:
    rows = await conn.execute(select(*_COLUMNS).order_by(upstreams.c.name))
    return [Upstream(*row) for row in rows]


async def get_upstream(conn: AsyncConnection, upstream_id: uuid.UUID) -> Upstream:
    row = (await conn.execute(select(*_COLUMNS).where(upstreams.c.id == upstream_id))).one_or_none()
    if row is None:
        raise NotFound(f"no upstream {upstream_id}", code="upstream_not_found")
    return Upstream(*row)


async def update_upstream(
    conn: AsyncConnection,
    box: SecretBox,
    upstream_id: uuid.UUID,
    *,
    url: str | None = None,
    transport: str | None = None,
    headers: dict[str, str] | None = None,
    costs: dict[str, int] | None = None,
    document: dict[str, Any] | None = None,
    operations: dict[str, Any] | None = None,
    enabled: bool | None = None,
) -> Upstream:
    await get_upstream(conn, upstream_id)
    values: dict[str, Any] = {"updated_at": func.now()}
    if url is not None:
        values["url"] = url
    if transport is not None:
        values["transport"] = transport
    if headers is not None:
        values["credentials"] = box.seal(headers)
        values["header_names"] = sorted(headers)
    if costs is not None:
        values["costs"] = costs
    if document is not None:
        values["document"] = document
    if operations is not None:
        values["operations"] = operations
    if enabled is not None:
        values["enabled"] = enabled
    query = update(upstreams).where(upstreams.c.id == upstream_id).values(**values).returning(*_COLUMNS)
    return Upstream(*(await conn.execute(query)).one())


async def delete_upstream(conn: AsyncConnection, upstream_id: uuid.UUID) -> Upstream:
    found = await get_upstream(conn, upstream_id)
    await conn.execute(delete(upstreams).where(upstreams.c.id == upstream_id))
    return found


async def rotate_credentials(conn: AsyncConnection, box: SecretBox) -> int:
    """Re-encrypt every credential this connection can see under the newest key; returns how many."""
    rows = (await conn.execute(select(upstreams.c.tenant_id, upstreams.c.id, upstreams.c.credentials))).all()
    for row in rows:
        await conn.execute(
            update(upstreams)
            .where(upstreams.c.tenant_id == row.tenant_id, upstreams.c.id == row.id)
            .values(credentials=box.rotate(row.credentials))
        )
    return len(rows)


async def pins_for(conn: AsyncConnection, upstream_id: uuid.UUID) -> dict[str, Pin]:
    c = upstream_tool_pins.c
    rows = await conn.execute(select(c.tool, c.sha256, c.definition, c.reviewed).where(c.upstream_id == upstream_id))
    return {row.tool: Pin(row.tool, row.sha256, row.definition, row.reviewed) for row in rows}


async def pin_tool(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    upstream_id: uuid.UUID,
    definition: dict[str, Any],
    *,
    reviewed: bool = False,
) -> Pin:
    """Approve `definition`: insert or replace the pin of its tool (`reviewed`: by an admin)."""
    digest = definition_digest(definition)
    name = str(definition["name"])
    statement = pg_insert(upstream_tool_pins).values(
        tenant_id=tenant_id, upstream_id=upstream_id, tool=name, sha256=digest, definition=definition, reviewed=reviewed
    )
    statement = statement.on_conflict_do_update(
        index_elements=["tenant_id", "upstream_id", "tool"],
        set_={"sha256": digest, "definition": definition, "approved_at": func.now(), "reviewed": reviewed},
    )
    await conn.execute(statement)
    return Pin(name, digest, definition, reviewed)


async def record_drift(
    conn: AsyncConnection, tenant_id: uuid.UUID, upstream_id: uuid.UUID, pin: Pin, definition: dict[str, Any]
) -> bool:
    """Log a changed definition once per (tool, new digest); True when it is new."""
    statement = (
        pg_insert(upstream_tool_drift)
        .values(
            tenant_id=tenant_id,
            upstream_id=upstream_id,
            tool=pin.tool,
            pinned_sha256=pin.sha256,
            seen_sha256=definition_digest(definition),
            definition=definition,
        )
        .on_conflict_do_nothing()
    )
    return bool((await conn.execute(statement)).rowcount)


async def drift_log(conn: AsyncConnection, upstream_id: uuid.UUID) -> list[dict[str, Any]]:
    c = upstream_tool_drift.c
    rows = await conn.execute(
        select(c.tool, c.pinned_sha256, c.seen_sha256, c.seen_at)
        .where(c.upstream_id == upstream_id)
        .order_by(c.seen_at)
    )
    return [
        {"tool": r.tool, "pinned": r.pinned_sha256, "seen": r.seen_sha256, "seen_at": r.seen_at.isoformat()}
        for r in rows
    ]
