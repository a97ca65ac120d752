"""The tenant data store as MCP resources: each key is `tenantry://data/<key>` (template `tenantry://data/{+key}`).

A key is percent-encoded in its URI, except `/` (so `customers/acme` reads as it is stored). Reads
go through the call pipeline like a tool call (an entry per URI, `DataResource`), so they are
authorised, metered and audited; listings and completions read the store directly, under RLS.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Final
from urllib.parse import quote, unquote

import mcp_types as types
from pydantic import BaseModel

from tenantry.errors import NotFound
from tenantry.tools.base import ToolContext
from tenantry.tools.data_store import PRINTABLE, data_get, data_list

PREFIX: Final = "tenantry://data/"
TEMPLATE: Final = types.ResourceTemplate(
    uri_template=PREFIX + "{+key}",
    name="data",
    title="Stored JSON values",
    description="A value in this tenant's private data store, by its key (as data_get reads it).",
    mime_type="application/json",
)
PAGE: Final = 100
_PRINTABLE: Final = re.compile(PRINTABLE)


def uri_of(key: str) -> str:
    return PREFIX + quote(key, safe="/")


def key_of(uri: str) -> str | None:
    """The key a data URI names, or None when `uri` is not one (or names no valid key)."""
    if not uri.startswith(PREFIX):
        return None
    try:
        key = unquote(uri.removeprefix(PREFIX), errors="strict")
    except UnicodeDecodeError:
        return None
    return key if key and _PRINTABLE.fullmatch(key) else None


class _Read(BaseModel):
    uri: str


@dataclass(frozen=True, slots=True)
class DataResource:
    """The pipeline entry that reads one key (`resource:tenantry://data/<key>`)."""

    name: str
    key: str
    uri: str
    cost: int
    arguments: type[BaseModel] = _Read

    def precheck(self, args: BaseModel) -> None:
        """Nothing: the key was checked when the entry was made."""

    async def execute(self, ctx: ToolContext, args: BaseModel) -> dict[str, Any]:
        try:
            found = await data_get(ctx, SimpleNamespace(key=self.key))
        except NotFound as exc:
            raise NotFound(f"no resource {self.uri[:300]!r}", code="resource_not_found") from exc
        text = json.dumps(found["value"], ensure_ascii=False, separators=(",", ":"))
        return {"contents": [{"uri": self.uri, "mimeType": "application/json", "text": text}]}


async def listed(ctx: ToolContext, after: str | None, limit: int = PAGE) -> tuple[list[types.Resource], str | None]:
    """A page of the store's keys as resources, after key `after`; and the key to continue after."""
    page = await data_list(ctx, SimpleNamespace(prefix="", limit=limit, after=after))
    resources = [
        types.Resource(uri=uri_of(item["key"]), name=item["key"], mime_type="application/json", size=item["size_bytes"])
        for item in page["keys"]
    ]
    return resources, page["next_after"]


async def completed(ctx: ToolContext, prefix: str) -> list[str]:
    """Keys that start with `prefix` (at most 100): the completion of the template's `key`."""
    if not _PRINTABLE.fullmatch(prefix):
        return []
    page = await data_list(ctx, SimpleNamespace(prefix=prefix, limit=PAGE, after=None))
    return [item["key"] for item in page["keys"]]
