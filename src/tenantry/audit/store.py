"""Reading the trail: a filtered page at a time, an export of any size, and verification of a chain.

Reads run as the application role with the tenant bound, so RLS decides what exists, as for every
tenant table (the system trail is tenant `SYSTEM_TENANT`). A tenant's trail lives where its isolation
tier keeps its data (tier revision 2): reads go through `db.tenant(T)`, the data plane the router picks,
so a schema- or database-tier tenant's trail is read from its own copy (and, while it moves, is refused
with a retryable `tenant_moving`); the system trail is always the shared one.

Pages are newest first and keyed by (at, seq), the table's primary key after the tenant: the cursor is
the last record's position, so a page costs the same at the millionth record as at the first, and
records appended meanwhile never shift a page. An export walks the same key oldest first, a page per
transaction, and streams: its memory does not grow with the trail.

Verification walks a tenant's chain by seq from its anchor (where retention left it; seq 0 and a
zero hash before anything was dropped) and names the first broken link: a record whose stored hash is
not the hash of its contents (edited), whose previous hash is not its predecessor's (a record before it
removed or replaced), a gap in seq (removed), or a chain that ends before its head (the last records
removed). An admin who keeps `head_hash` elsewhere can also prove nothing was rewritten wholesale.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.audit.records import SYSTEM_TENANT
from tenantry.db.engine import CONTROL, DATA, Database
from tenantry.errors import BadRequest

PAGE_MAX: Final = 1000
_EXPORT_PAGE: Final = 1000
_ZERO: Final = bytes(32)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

COLUMNS: Final = (
    "at",
    "seq",
    "id",
    "request_id",
    "transport",
    "method",
    "tool",
    "subject",
    "key_id",
    "session",
    "decision",
    "reason",
    "outcome",
    "status",
    "latency_ms",
    "event_id",
    "args_digest",
    "args",
    "detail",
    "hash",
)
_SELECT: Final = (
    "SELECT at, (extract(epoch FROM at) * 1000000)::bigint AS at_us, seq, id, request_id, transport, method, tool,"
    " subject, key_id, session, decision, reason, outcome, status, latency_us, event_id, args_digest, args, detail,"
    " hash FROM audit_records WHERE tenant_id = :tenant"
)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    since: datetime | None = None
    until: datetime | None = None
    subject: str | None = None
    tool: str | None = None
    decision: Literal["admitted", "refused"] | None = None
    outcome: str | None = None
    method: str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):  # a time without a zone is UTC
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise BadRequest("since must be before until", code="invalid_range")

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses, params = [], {}
        if self.since is not None:
            clauses.append("at >= :since")
            params["since"] = self.since
        if self.until is not None:
            clauses.append("at < :until")
            params["until"] = self.until
        for name in ("subject", "tool", "decision", "outcome", "method", "request_id"):
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"{name} = :{name}")
                params[name] = value
        return "".join(f" AND {c}" for c in clauses), params


def _trail(db: Database, tenant_id: uuid.UUID) -> AbstractAsyncContextManager[AsyncConnection]:
    """A transaction on the tables that hold `tenant_id`'s trail (see the module docstring)."""
    return db.tenant(tenant_id, plane=CONTROL if tenant_id == SYSTEM_TENANT else DATA)


def encode_cursor(at_us: int, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{at_us}.{seq}".encode()).decode().rstrip("=")


def cursor_of(record: dict[str, Any]) -> str:
    """The cursor of a record as `page` answers it: pages older or newer than it start there."""
    at = datetime.fromisoformat(record["at"])
    return encode_cursor((at - _EPOCH) // _MICROSECOND, int(record["seq"]))


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_us, seq = (int(part) for part in raw.split("."))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("cursor is not one this API gave", code="invalid_cursor") from None
    if not (0 <= at_us < 2**53 and 0 < seq < 2**62):  # what a real record can hold (µs as a double, exact)
        raise BadRequest("cursor is not one this API gave", code="invalid_cursor")
    return at_us, seq


def _public(row: Any) -> dict[str, Any]:
    return {
        "at": row.at.isoformat(),
        "seq": row.seq,
        "id": str(row.id),
        "request_id": row.request_id,
        "transport": row.transport,
        "method": row.method,
        "tool": row.tool,
        "subject": row.subject,
        "key_id": row.key_id,
        "session": row.session,
        "decision": row.decision,
        "reason": row.reason,
        "outcome": row.outcome,
        "status": row.status,
        "latency_ms": row.latency_us / 1000,
        "event_id": None if row.event_id is None else str(row.event_id),
        "args_digest": row.args_digest,
        "args": row.args,
        "detail": row.detail,
        "hash": row.hash.hex(),
    }


async def page(
    db: Database,
    tenant_id: uuid.UUID,
    where: AuditFilter,
    *,
    limit: int = 100,
    cursor: str | None = None,
    newer: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to `limit` records, newest first, older than `cursor`; and the cursor of the next page (None: last).

    `newer`: the `limit` records just newer than `cursor` instead (still shown newest first), and the cursor
    of the page newer still (None: none newer) — a console's "newer" link, on the same key."""
    if not 1 <= limit <= PAGE_MAX:
        raise BadRequest(f"limit must be 1 to {PAGE_MAX}", code="invalid_request")
    clauses, params = where.where()
    if cursor is not None:
        at_us, seq = decode_cursor(cursor)
        clauses += f" AND (at, seq) {'>' if newer else '<'} (to_timestamp(:c_at / 1000000.0::double precision), :c_seq)"
        params |= {"c_at": at_us, "c_seq": seq}
    order = "at, seq" if newer else "at DESC, seq DESC"
    sql = text(f"{_SELECT}{clauses} ORDER BY {order} LIMIT :limit")
    async with _trail(db, tenant_id) as conn:
        rows = (await conn.execute(sql, {"tenant": tenant_id, "limit": limit + 1, **params})).all()
    more = len(rows) > limit
    rows = list(reversed(rows[:limit])) if newer else rows[:limit]
    edge = (rows[0] if newer else rows[-1]) if rows else None
    return [_public(r) for r in rows], encode_cursor(edge.at_us, edge.seq) if more and edge is not None else None


async def records(db: Database, tenant_id: uuid.UUID, where: AuditFilter) -> AsyncIterator[dict[str, Any]]:
    """Every record matching `where`, oldest first, a page per transaction."""
    clauses, params = where.where()
    after: tuple[int, int] | None = None
    while True:
        keyed = clauses
        if after is not None:
            keyed += " AND (at, seq) > (to_timestamp(:c_at / 1000000.0::double precision), :c_seq)"
            params |= {"c_at": after[0], "c_seq": after[1]}
        sql = text(f"{_SELECT}{keyed} ORDER BY at, seq LIMIT {_EXPORT_PAGE}")
        async with _trail(db, tenant_id) as conn:
            rows = (await conn.execute(sql, {"tenant": tenant_id, **params})).all()
        for row in rows:
            yield _public(row)
        if len(rows) < _EXPORT_PAGE:
            return
        after = (rows[-1].at_us, rows[-1].seq)


async def export(
    db: Database, tenant_id: uuid.UUID, where: AuditFilter, form: Literal["jsonl", "csv"]
) -> AsyncIterator[str]:
    """The records as JSON Lines, or CSV with a header (args and detail as JSON text), in chunks."""
    if form == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        count = 0
        async for record in records(db, tenant_id, where):
            writer.writerow([_cell(record[c]) for c in COLUMNS])
            count += 1
            if count % 200 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()
        return
    lines: list[str] = []
    async for record in records(db, tenant_id, where):
        lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        if len(lines) == 200:
            yield "".join(lines)
            lines.clear()
    if lines:
        yield "".join(lines)


def _cell(value: Any) -> Any:
    """A CSV cell: JSON for objects, and text a spreadsheet would run as a formula quoted with a '."""
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@dataclass(frozen=True, slots=True)
class Verification:
    tenant_id: uuid.UUID
    checked: int
    first_seq: int  # where the check started (the anchor's seq + 1)
    head_seq: int
    head_hash: str
    broken: dict[str, Any] | None  # the first broken link: seq, id, at, problem

    @property
    def intact(self) -> bool:
        return self.broken is None

    def public(self) -> dict[str, Any]:
        return {
            "tenant_id": str(self.tenant_id),
            "intact": self.intact,
            "checked": self.checked,
            "first_seq": self.first_seq,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "broken": self.broken,
        }


# Up to the head as read: a record the drain appends while the walk runs (the transaction reads committed
# rows statement by statement) is not a chain running past its head.
_VERIFY = text(
    "SELECT seq, id, at, prev_hash, hash, tenantry_audit_hash(r) AS computed FROM audit_records r"
    " WHERE tenant_id = :tenant AND seq > :after AND seq <= :head ORDER BY seq"
)


async def verify(db: Database, tenant_id: uuid.UUID) -> Verification:
    """Walk the tenant's chain and name its first broken link, if any."""
    async with _trail(db, tenant_id) as conn:
        head = (
            await conn.execute(
                text("SELECT seq, hash, anchor_seq, anchor_hash FROM audit_chain_heads WHERE tenant_id = :t"),
                {"t": tenant_id},
            )
        ).one_or_none()
        head_seq, head_hash = (head.seq, bytes(head.hash)) if head else (0, _ZERO)
        expected_seq, previous = (head.anchor_seq + 1, bytes(head.anchor_hash)) if head else (1, _ZERO)
        first = expected_seq
        checked = 0
        broken: dict[str, Any] | None = None
        rows = await conn.stream(_VERIFY, {"tenant": tenant_id, "after": expected_seq - 1, "head": head_seq})
        async for row in rows:
            problem = None
            if row.seq != expected_seq:
                problem = (
                    f"records {expected_seq} to {row.seq - 1} are missing"
                    if row.seq > expected_seq
                    else f"seq {row.seq} appears twice"
                )
            elif bytes(row.prev_hash) != previous:
                problem = "its previous hash is not the hash of the record before it (that record was replaced)"
            elif bytes(row.computed) != bytes(row.hash):
                problem = "its contents do not match its hash (the record was edited)"
            if problem is not None:
                broken = {"seq": row.seq, "id": str(row.id), "at": row.at.isoformat(), "problem": problem}
                break
            checked += 1
            expected_seq += 1
            previous = bytes(row.hash)
        await rows.close()
    if broken is None and (expected_seq - 1 != head_seq or previous != head_hash):
        broken = {
            "seq": expected_seq,
            "id": None,
            "at": None,
            "problem": f"the chain ends at seq {expected_seq - 1} but its head is at seq {head_seq}"
            " (the last records were removed, or the head was altered)",
        }
    return Verification(tenant_id, checked, first, head_seq, head_hash.hex(), broken)


async def known(db: Database, tenant_id: uuid.UUID) -> bool:
    """Whether `tenant_id` has a trail to read: the system's, an existing tenant's (wherever its tier
    keeps it), or one left by a tenant since removed (a trail outlives its tenant: offboarding brings a
    tier tenant's trail back to the shared tables, where this looks)."""
    if tenant_id == SYSTEM_TENANT:
        return True
    async with db.system() as conn:
        found = await conn.execute(
            text(
                "SELECT EXISTS (SELECT FROM tenants WHERE id = :t)"
                " OR EXISTS (SELECT FROM audit_chain_heads WHERE tenant_id = :t)"
            ),
            {"t": tenant_id},
        )
        return bool(found.scalar_one())


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time with its zone (the CLI's --since/--until)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} is not an ISO 8601 time: {value[:40]!r}", code="invalid_range") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
