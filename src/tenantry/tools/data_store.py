"""The tenant data store: a small key -> JSON document store under RLS.

Every statement runs in `db.tenant(...)`, so the database, not these
queries, decides which rows exist; the queries carry no tenant filter of
their own beyond the `tenant_id` they write.

What a tenant stores is counted by a trigger (migration 0011) in its
`tenant_storage` row: per key, the key's UTF-8 bytes plus `size_bytes`, the
bytes of the canonical JSON written here (compact, UTF-8, not
ASCII-escaped; what `data_put` and `data_list` report). A put reads the
totals back in its own transaction, after its write: the trigger's update
holds the row's lock until commit, so concurrent puts of one tenant see one
another's totals in turn, and a put that grew the store past the plan's
`storage_bytes` or `storage_keys` (or the deployment's
TENANTRY_DATA_MAX_KEYS_PER_TENANT) rolls back: `storage_quota_exceeded` /
`store_full`, nothing written. A store already over a lowered limit may
still shrink: overwrites that do not grow it and deletes pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field
from sqlalchemy import text

from tenantry.errors import BadRequest, Conflict, NotFound
from tenantry.settings import Settings
from tenantry.tools.base import Arguments, BuiltinTool, ToolContext

# Printable text only: control characters (C0, DEL, C1), line and paragraph separators, bidirectional
# controls and the BOM hide what a key says (and PostgreSQL cannot store NUL at all).
_UNPRINTABLE = "\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
PRINTABLE = f"^[^{_UNPRINTABLE}]*$"


def _models(key_limit: int) -> tuple[type[Arguments], type[Arguments], type[Arguments]]:
    """The argument models for keys of at most `key_limit` characters (TENANTRY_DATA_MAX_KEY_LENGTH), so the
    published schema says the limit that is enforced, and an over-long key is refused before the meter."""
    key = Annotated[
        str,
        Field(
            min_length=1,
            max_length=key_limit,
            pattern=PRINTABLE,
            description=f"The key: 1-{key_limit} printable characters, e.g. 'customers/acme/settings'.",
        ),
    ]

    class PutArgs(Arguments):
        key: key
        value: Any = Field(description="Any JSON value (object, array, string, number, boolean or null).")

    class KeyArgs(Arguments):
        key: key

    class ListArgs(Arguments):
        prefix: str = Field(
            default="", max_length=key_limit, pattern=PRINTABLE, description="Only keys that start with this prefix."
        )
        limit: int = Field(default=100, ge=1, le=1000, description="At most this many keys (1-1000).")
        after: str | None = Field(
            default=None,
            max_length=key_limit,
            pattern=PRINTABLE,
            description="Continue after this key (the previous page's next_after).",
        )

    return PutArgs, KeyArgs, ListArgs


_PUT = text(
    """
    INSERT INTO tenant_data (tenant_id, key, value, size_bytes)
    VALUES (:tenant_id, :key, CAST(:value AS jsonb), :size)
    ON CONFLICT (tenant_id, key) DO UPDATE
        SET value = excluded.value, size_bytes = excluded.size_bytes, updated_at = now()
    RETURNING (xmax = 0) AS created, updated_at
    """
)
# The totals after this transaction's write (its own trigger's update), and the bytes that write added.
_STORED = text(
    """
    SELECT bytes, keys, coalesce(nullif(current_setting('tenantry.storage_delta', true), ''), '0')::bigint AS delta
    FROM tenant_storage
    """
)
_GET = text("SELECT value, size_bytes, updated_at FROM tenant_data WHERE key = :key")
_DELETE = text("DELETE FROM tenant_data WHERE key = :key RETURNING size_bytes")
_LIST = text(
    """
    SELECT key, size_bytes, updated_at FROM tenant_data
    WHERE key >= :prefix AND key > :after AND left(key, :prefix_len) = :prefix
    ORDER BY key LIMIT :limit
    """
)


def _encoded(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _value_fits(limit: int) -> Callable[[Any], None]:
    def check(args: Any) -> None:
        size = len(_encoded(args.value).encode())
        if size > limit:
            raise BadRequest(f"value is {size} bytes of JSON; the limit is {limit}", code="value_too_large")

    return check


async def data_put(ctx: ToolContext, args: Any) -> dict[str, Any]:
    encoded = _encoded(args.value)
    size = len(encoded.encode())
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        params = {"tenant_id": ctx.tenant_id, "key": args.key, "value": encoded, "size": size}
        row = (await conn.execute(_PUT, params)).one()
        stored = (await conn.execute(_STORED)).one()
        # Raising here rolls the write back: a refused put changes nothing.
        _check_room(ctx, created=bool(row.created), total_bytes=stored.bytes, keys=stored.keys, added=stored.delta)
    return {
        "key": args.key,
        "created": bool(row.created),
        "size_bytes": size,
        "updated_at": row.updated_at.isoformat(),
    }


def _check_room(ctx: ToolContext, *, created: bool, total_bytes: int, keys: int, added: int) -> None:
    """Refuse a write that grew the store past a limit; `total_bytes` and `keys` include it."""
    limits = ctx.principal.limits
    if created and limits.storage_keys is not None and keys > limits.storage_keys:
        _over_quota("storage_keys", keys - 1, limits.storage_keys, "keys")
    if added > 0 and limits.storage_bytes is not None and total_bytes > limits.storage_bytes:
        _over_quota("storage_bytes", total_bytes - added, limits.storage_bytes, "bytes")
    hard_cap = ctx.settings.data_max_keys_per_tenant
    if created and keys > hard_cap:
        raise Conflict(f"the data store holds its limit of {hard_cap} keys; delete some first", code="store_full")


def _over_quota(quota: str, used: int, limit: int, unit: str) -> None:
    detail = f"the data store holds {used} {unit} and this plan allows {limit}; this put would exceed it"
    raise Conflict(
        f"{detail}: delete or shrink values first",
        code="storage_quota_exceeded",
        extra={"quota": quota, "used": used, "limit": limit},
    )


async def data_get(ctx: ToolContext, args: Any) -> dict[str, Any]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        row = (await conn.execute(_GET, {"key": args.key})).one_or_none()
    if row is None:
        raise NotFound(f"no key {args.key!r} in this tenant's data store", code="key_not_found")
    return {
        "key": args.key,
        "value": row.value,
        "size_bytes": row.size_bytes,
        "updated_at": row.updated_at.isoformat(),
    }


async def data_delete(ctx: ToolContext, args: Any) -> dict[str, Any]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        row = (await conn.execute(_DELETE, {"key": args.key})).one_or_none()
    if row is None:
        raise NotFound(f"no key {args.key!r} in this tenant's data store", code="key_not_found")
    return {"key": args.key, "deleted": True}


async def data_list(ctx: ToolContext, args: Any) -> dict[str, Any]:
    params = {
        "prefix": args.prefix,
        "prefix_len": len(args.prefix),
        "after": args.after or "",
        "limit": args.limit + 1,
    }
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        rows = (await conn.execute(_LIST, params)).all()
    page = rows[: args.limit]
    return {
        "keys": [{"key": r.key, "size_bytes": r.size_bytes, "updated_at": r.updated_at.isoformat()} for r in page],
        "next_after": page[-1].key if len(rows) > args.limit else None,
    }


def tools(settings: Settings) -> tuple[BuiltinTool, ...]:
    """The data store's tools, with the limits of `settings` in their schemas and checks."""
    put_args, key_args, list_args = _models(settings.data_max_key_length)
    return (
        BuiltinTool(
            name="data_put",
            title="Store a JSON value",
            description=(
                "Store a JSON value under a key in this tenant's private data store, replacing any value "
                "already there. Use it to remember settings, notes or results between calls. "
                "Returns whether the key was new."
            ),
            arguments=put_args,
            run=data_put,
            check=_value_fits(settings.data_max_value_bytes),
        ),
        BuiltinTool(
            name="data_get",
            title="Read a stored JSON value",
            description=(
                "Read the JSON value stored under a key in this tenant's private data store. "
                "Fails with key_not_found if nothing is stored there; use data_list to see which keys exist."
            ),
            arguments=key_args,
            run=data_get,
            read_only=True,
        ),
        BuiltinTool(
            name="data_list",
            title="List stored keys",
            description=(
                "List the keys in this tenant's private data store in order, optionally only those starting "
                "with a prefix. Pages: pass the returned next_after as 'after' to continue."
            ),
            arguments=list_args,
            run=data_list,
            read_only=True,
        ),
        BuiltinTool(
            name="data_delete",
            title="Delete a stored value",
            description=(
                "Delete the value stored under a key in this tenant's private data store. "
                "Fails with key_not_found if nothing is stored there."
            ),
            arguments=key_args,
            run=data_delete,
            destructive=True,
        ),
    )
