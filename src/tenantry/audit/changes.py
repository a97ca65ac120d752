"""What an admin change did, for its audit record: the fields it changed, before and after, never a secret.

An admin REST handler notes its change on its request (`note_change`); the record of the request,
written before the answer goes out, carries it as its `detail`. A CLI command records its change in the
change's own transaction (`record_change`): both commit, or neither. The detail:

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


def operator() -> str:
    """Who runs a CLI command: the operating system's user."""
    try:
        return f"cli:{getpass.getuser()}"[:200]
    except (OSError, KeyError):
        return "cli:unknown"


async def record_change(
    conn: AsyncConnection,
    tenant_id: uuid.UUID | None,
    action: str,
    target: object,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> None:
    """Record a change made outside a request (the CLI) in the change's own transaction. The last
    statement of that transaction: the recording function unbinds the tenant when it ends."""
    record = AuditRecord(
        tenant_id=tenant_id or SYSTEM_TENANT,
        transport="cli",
        method=f"cli {action}",
        decision=ADMITTED,
        outcome="ok",
        subject=operator(),
        detail=describe(action, target, before, after),
    )
    await conn.execute(_RECORD, {"tenant": record.tenant_id, "doc": record.document()})
