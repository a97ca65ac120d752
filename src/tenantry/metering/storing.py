"""Storing the ledger's documents: usage events in the shared tables, audit records where the tenant lives.

The drain (`drain.py`), the ledger's direct fallback (`ledger.py`) and tests store through here. Usage
events are the operator's billing ledger, read across tenants by the Stripe reporter: they stay in the
shared tables in every isolation tier. An audit record goes to its tenant's trail, which moves with its
tier (tier revision 2): the shared tables for a shared-tier tenant and the system trail, the tenant's
own schema or database otherwise (`db/router.py` says which, from memory).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import Database
from tenantry.db.router import MOVED_SQLSTATE, SHARED, tenant_moving
from tenantry.errors import Unavailable

log = logging.getLogger(__name__)

# The system trail's tenant (`audit.records.SYSTEM_TENANT`, a floor above this one): always shared.
SYSTEM_TRAIL = uuid.UUID(int=0)

# The shared tables' batch writer (migration 0021, `db/ledger_schema.py`): the whole batch, whatever its
# number of tenants, in set-based statements.
_RECORD = text(
    "SELECT tenantry_ledger_usage(CAST(:tenants AS uuid[]), CAST(:counts AS integer[]), CAST(:events AS json[]))"
)
_RECORD_WITH_AUDIT = text(
    "SELECT tenantry_ledger_usage(CAST(:tenants AS uuid[]), CAST(:counts AS integer[]), CAST(:events AS json[])),"
    " tenantry_ledger_audit(CAST(:a_tenants AS uuid[]), CAST(:a_counts AS integer[]), CAST(:a_docs AS json[]),"
    " :fresh)"
)
_RECORD_AUDIT = text(
    "SELECT 0, tenantry_ledger_audit(CAST(:a_tenants AS uuid[]), CAST(:a_counts AS integer[]),"
    " CAST(:a_docs AS json[]), :fresh)"
)
# A tier tenant's records, in its own copy (the function there is 0010's, on the copy's tables).
_RECORD_AUDIT_COPY = text(
    "SELECT tenantry_record_audit(CAST(:t AS uuid[]), CAST(:n AS integer[]), CAST(:docs AS json[]), :fresh)"
)

# SQLSTATE classes that mean "this data can never be stored" (a data exception such as malformed
# JSON or a bad uuid; an integrity violation such as a tenant that no longer exists), not "try again
# later". Not permission errors: a role missing its grant would otherwise divert every event to the
# dead-letter stream, where a stalled drain (lag and last_error in /health) gets it fixed.
_UNSTORABLE = ("22", "23")


def unstorable(exc: DBAPIError) -> bool:
    state = getattr(exc.orig, "sqlstate", None) or ""
    return state.startswith(_UNSTORABLE)


@dataclass(frozen=True, slots=True)
class Stored:
    new: int  # usage events that were new
    # Tenants moving between isolation tiers (or whose copy cannot be written right now): their entries
    # must stay pending and be stored again later (idempotent: by event id, by audit record id).
    waiting: frozenset[uuid.UUID] = frozenset()
    why: Unavailable | None = None  # the first reason one was left waiting


async def store_documents(
    db: Database,
    batch: dict[uuid.UUID, list[str]],
    audit: dict[uuid.UUID, list[str]] | None = None,
    *,
    fresh: bool = False,
    hold: frozenset[uuid.UUID] = frozenset(),
) -> Stored:
    """Store usage events and audit records given as documents, grouped by tenant (see `insert_documents`).
    `hold`: tenants to leave waiting without trying (the drain's, whose earlier entries wait).

    Usage events, and the audit records of shared-tier tenants, go to the shared tables in one statement,
    as before tiers (the router's answer for each tenant is a dict hit). A schema- or database-tier
    tenant's audit records go to its own copy, through `db.tenant(T)`, in a transaction each, after that
    statement. A tenant that is moving is left out, whole, and reported `waiting`; so is one whose copy
    refused with a retryable error (its usage events may then be stored already: storing them again adds
    nothing). A placement this replica had not heard had changed shows as the fence's TNMOV on the shared
    statement: it is asked again and the statement retried."""
    if not batch and not audit:
        return Stored(0)
    for _ in range(_ROUTE_ATTEMPTS):
        shared, routed, waiting = await _route(db, audit or {}, hold)
        waiting |= hold & batch.keys()
        usage = {t: docs for t, docs in batch.items() if t not in waiting} if waiting else batch
        try:
            new = await _insert_shared(db, usage, shared, fresh) if usage or shared else 0
            break
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != MOVED_SQLSTATE:
                raise
            for tenant_id in shared:  # one of them has moved (its old copy is fenced): ask the router again
                db.router.forget(tenant_id)
    else:
        raise tenant_moving()
    why = tenant_moving() if waiting else None
    for tenant_id in sorted(routed):
        params = {"t": [tenant_id], "n": [len(routed[tenant_id])], "docs": routed[tenant_id], "fresh": fresh}
        try:
            async with db.tenant(tenant_id) as conn:
                await conn.execute(_RECORD_AUDIT_COPY, params)
        except Unavailable as exc:  # moving, a copy not migrated yet, its pools busy: all retryable
            waiting.add(tenant_id)
            why = why or exc
        except (DBAPIError, OSError) as exc:
            if isinstance(exc, DBAPIError) and unstorable(exc):
                raise
            # One tenant's copy out of reach (its own database server down, say) must not stall every
            # tenant's drain and billing: its records wait, and the drain's lag shows it in /health.
            log.warning("audit records of tenant %s wait: its copy cannot be written (%s)", tenant_id, exc)
            waiting.add(tenant_id)
            why = why or _copy_unavailable(tenant_id, exc)
    return Stored(new, frozenset(waiting), why)


def _copy_unavailable(tenant_id: uuid.UUID, exc: Exception) -> Unavailable:
    return Unavailable(
        f"the audit trail of tenant {tenant_id} cannot be written now ({type(exc).__name__}); retry shortly",
        code="audit_copy_unavailable",
        extra={"retry_after_ms": 1000},
    )


_ROUTE_ATTEMPTS = 3


async def _route(
    db: Database, audit: dict[uuid.UUID, list[str]], hold: frozenset[uuid.UUID] = frozenset()
) -> tuple[dict[uuid.UUID, list[str]], dict[uuid.UUID, list[str]], set[uuid.UUID]]:
    """`audit` split by where each tenant's trail lives: the shared tables, its own copy, or nowhere
    right now (moving)."""
    shared: dict[uuid.UUID, list[str]] = {}
    routed: dict[uuid.UUID, list[str]] = {}
    waiting: set[uuid.UUID] = set(hold & audit.keys())
    for tenant_id, docs in audit.items():
        if tenant_id in waiting:
            continue
        if tenant_id == SYSTEM_TRAIL:  # the system trail is shared, and has no tenant row to look up
            shared[tenant_id] = docs
            continue
        placement = db.router.cached(tenant_id) or await db.router.placement(tenant_id)
        if placement.moving:
            waiting.add(tenant_id)
        elif placement.tier == SHARED:
            shared[tenant_id] = docs
        else:
            routed[tenant_id] = docs
    return shared, routed, waiting


async def _insert_shared(
    db: Database, batch: dict[uuid.UUID, list[str]], audit: dict[uuid.UUID, list[str]], fresh: bool
) -> int:
    params: dict[str, Any] = {}
    if batch:
        # In tenant order, like the audit records (the roll-up trigger locks its rows in key order anyway).
        usage = sorted(batch)
        params["tenants"] = usage
        params["counts"] = [len(batch[t]) for t in usage]
        params["events"] = [doc for t in usage for doc in batch[t]]
    if audit:
        tenants = sorted(audit)
        params["a_tenants"] = tenants
        params["a_counts"] = [len(audit[t]) for t in tenants]
        params["a_docs"] = [doc for t in tenants for doc in audit[t]]
        params["fresh"] = fresh
    statement = _RECORD if not audit else (_RECORD_WITH_AUDIT if batch else _RECORD_AUDIT)
    # One statement is its own transaction (the functions' tenant bindings end with it): no BEGIN/COMMIT.
    async with db.app_engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = (await autocommit.execute(statement, params)).one()
        return int(row[0])


async def insert_documents(
    db: Database,
    batch: dict[uuid.UUID, list[str]],
    audit: dict[uuid.UUID, list[str]] | None = None,
    *,
    fresh: bool = False,
) -> int:
    """Store usage events and audit records given as documents, grouped by tenant, in one statement
    whatever the number of tenants (`tenantry_ledger_usage` and `tenantry_ledger_audit`, set-based, as
    the ledger role), and each tier tenant's audit records in its own copy (`store_documents`); return
    how many usage events were new. Audit records go in tenant order, the order every writer locks the
    tenants' chains in. `fresh`: the drain read these entries for the first time, so no audit record of
    them can be stored yet (none is looked for). Raises a retryable `Unavailable` (`tenant_moving`, say)
    when a tenant's records could not be stored yet (the others were)."""
    stored = await store_documents(db, batch, audit, fresh=fresh)
    if stored.why is not None:
        raise stored.why
    return stored.new
