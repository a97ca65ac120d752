"""The tenant data store: a small key -> JSON document store under RLS.

Every statement runs in `db.tenant(...)`, so the database, not these
queries, decides which rows exist; the queries carry no tenant filter of
their own beyond the `tenant_id` they write.
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
    SELECT :tenant_id, :key, CAST(:value AS jsonb), :size
    WHERE EXISTS (SELECT 1 FROM tenant_data WHERE key = :key)
       OR (SELECT count(*) FROM tenant_data) < :max_keys
    ON CONFLICT (tenant_id, key) DO UPDATE
        SET value = excluded.value, size_bytes = excluded.size_bytes, updated_at = now()
    RETURNING (xmax = 0) AS created, updated_at
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
        row = (
            await conn.execute(
                _PUT,
                {
                    "tenant_id": ctx.tenant_id,
                    "key": args.key,
                    "value": encoded,
                    "size": size,
                    "max_keys": ctx.settings.data_max_keys_per_tenant,
                },
            )
        ).one_or_none()
    if row is None:
        raise Conflict(
            f"the data store holds its limit of {ctx.settings.data_max_keys_per_tenant} keys; delete some first",
            code="store_full",
        )
    return {
        "key": args.key,
        "created": bool(row.created),
        "size_bytes": size,
        "updated_at": row.updated_at.isoformat(),
    }


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
