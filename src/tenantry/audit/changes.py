"""What an admin change did, for its audit record: the fields it changed, before and after, never a secret.

An admin handler describes its change (`describe`) and notes it on its request (`note_change`); the
record of the request, written before the answer goes out, carries it as its `detail`:

    {"action": "tenant.update", "target": "<id>",
     "changes": {"plan": {"before": "free", "after": "pro"}}}

A field that holds a secret (a key's secret, an upstream's credential headers, a token) is never
written, only that it changed: {"headers": {"changed": true}}.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Final

from tenantry.observability import current_request

SECRET_FIELDS: Final = frozenset(
    {"secret", "token", "access_token", "password", "credentials", "headers", "authorization", "key_hash", "api_key"}
)


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
        if name.lower() in SECRET_FIELDS:
            changes[name] = {"changed": True}
        else:
            changes[name] = {"before": was, "after": now}
    return {"action": action, "target": str(target), "changes": changes}


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
