"""What an admin change did, for its audit record: the fields it changed, before and after, never a secret.

An admin REST handler notes its change on its request (`note_change`); the record of the request,
written before the answer goes out, carries it as its `detail`. A CLI command records its change with
`record_change`, in the tenant's own trail wherever its isolation tier keeps it:

- the shared tables (a shared-tier tenant, the system trail) and a schema-tier tenant's copy (a schema
  of the same database, reached through its own recording function): in the change's own transaction,
  so both commit, or neither;
- a database-tier tenant's copy (another database: no transaction spans both): in a transaction of its
  own, committed just before the change's (`record_change` is that transaction's last statement). If
  it fails, the change rolls back; if the change's commit then fails, the trail holds the record of a
  change that did not happen: the side an audit trail should err on.

A tenant that is moving between tiers has no trail to write to: the change is refused with a retryable
`tenant_moving` and nothing changes.

The detail:

    {"action": "tenant.update", "target": "<id>",
     "changes": {"plan": {"before": "free", "after": "pro"}}}

A field that holds a secret (a key's secret, an upstream's credential headers, a token) is never
written, only that it changed: {"headers": {"changed": true}}.
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.audit.records import ADMITTED, SYSTEM_TENANT, AuditRecord
from tenantry.db.engine import Database
from tenantry.db.rls import identifier
from tenantry.db.router import SCHEMA, SHARED, SHARED_PLACEMENT, tenant_moving
from tenantry.observability import current_request

# A field whose name holds one of these is never written, only that it changed.
SECRET_MARKERS: Final = ("secret", "token", "password", "credential", "authorization", "api_key", "apikey", "private")
SECRET_FIELDS: Final = frozenset({"headers", "key_hash"})


def is_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_FIELDS or any(marker in lowered for marker in SECRET_MARKERS)


def describe(
    action: str, target: object, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The change from `before` to `after` (None: created / deleted), field by field, secrets masked."""
    old, new = before or {}, after or {}
    changes: dict[str, Any] = {}
    for name in sorted({*old, *new}):
        was, now = old.get(name), new.get(name)
        if was == now and before is not None and after is not None:
            continue
        if is_secret(name):
            changes[name] = {"changed": True}
        else:
            changes[name] = {"before": _masked(was), "after": _masked(now)}
    return {"action": action, "target": str(target), "changes": changes}


def _masked(value: Any) -> Any:
    """`value` with a secret anywhere inside it (a nested object's `secret`, say) replaced."""
    if isinstance(value, Mapping):
        return {k: "[secret]" if is_secret(str(k)) else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


def note_change(
    tenant_id: uuid.UUID | None,
    action: str,
    target: object,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> None:
    """Put the change on the current request's audit record (whose tenant it is: `tenant_id`)."""
    record = current_request()
    if record is None:
        return
    record.detail = describe(action, target, before, after)
    if tenant_id is not None:
        record.tenant = str(tenant_id)


_RECORD = text("SELECT tenantry_record_audit(ARRAY[CAST(:tenant AS uuid)], ARRAY[1], ARRAY[CAST(:doc AS json)], true)")
# The same, by the function of a schema-tier tenant's copy (its tables, whatever the search path).
_RECORD_IN_SCHEMA = (
    "SELECT {schema}.tenantry_record_audit(ARRAY[CAST(:tenant AS uuid)], ARRAY[1], ARRAY[CAST(:doc AS json)], true)"
)


def operator() -> str:
    """Who runs a CLI command: the operating system's user."""
    try:
        return f"cli:{getpass.getuser()}"[:200]
    except (OSError, KeyError):
        return "cli:unknown"


async def record_change(
    db: Database,
    conn: AsyncConnection,
    tenant_id: uuid.UUID | None,
    action: str,
    target: object,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    by: str | None = None,
) -> None:
    """Record a change made outside a request made in `conn`'s transaction, in the tenant's trail (see
    the module docstring). The last statement of that transaction: the recording function unbinds the
    tenant when it ends. `by`: who made it when it was not a CLI command (the gateway itself, say
    "system:tier-mover"): the record's subject, and its transport and method are "system" instead of
    "cli"."""
    transport = "system" if by else "cli"
    record = AuditRecord(
        tenant_id=tenant_id or SYSTEM_TENANT,
        transport=transport,
        method=f"{transport} {action}",
        decision=ADMITTED,
        outcome="ok",
        subject=by or operator(),
        detail=describe(action, target, before, after),
    )
    params = {"tenant": record.tenant_id, "doc": record.document()}
    placement = SHARED_PLACEMENT if tenant_id is None else await db.router.placement(tenant_id)
    if placement.moving:
        raise tenant_moving()
    if placement.tier == SHARED:
        await conn.execute(_RECORD, params)
        return
    db.router.check(placement)  # a copy on an older revision has no trail yet: refused, retryably
    if placement.tier == SCHEMA:
        await conn.execute(text(_RECORD_IN_SCHEMA.format(schema=identifier(str(placement.name)))), params)
        return
    async with db.tenant(record.tenant_id) as copy:
        await copy.execute(_RECORD, params)
