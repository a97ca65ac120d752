"""The ledger stream's entries as the drain reads them: their tenant and documents, grouped for one insert.

An entry is the tenant (`t`) and a usage event (`v`), an audit record (`a`), or both, as the gateway
writes them (`ledger.py`); older gateways' eight-field usage events are still understood. The fast path
(`group_entries`) hands the documents on unparsed; the rest go to the drain's slow path.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from tenantry.metering.ledger import UsageEvent

# An entry as read: its stream (shard), its id, its fields.
Entry = tuple[str, bytes, dict[bytes, bytes]]
# An entry that can never be stored, and why.
Dead = tuple[str, bytes, dict[bytes, bytes], str]


@dataclass(frozen=True, slots=True)
class Docs:
    usage: str | None  # the usage event's document
    audit: str | None  # the audit record's document


def parse_entry(fields: dict[bytes, bytes]) -> tuple[uuid.UUID, Docs]:
    """An entry's tenant and documents, any format (the eight-field usage events of gateways before 0006
    too); ValueError when it is neither a usage event nor an audit record."""
    if b"a" not in fields:
        event = UsageEvent.from_fields(fields)
        return event.tenant_id, Docs(event.document(), None)
    try:
        tenant = uuid.UUID(fields[b"t"].decode())
        audit = fields[b"a"].decode()
    except (KeyError, ValueError) as exc:  # UnicodeDecodeError too
        raise ValueError(f"not an audit record: {exc!r}") from exc
    usage = UsageEvent.from_fields({k: v for k, v in fields.items() if k != b"a"}) if b"v" in fields else None
    if usage is not None and usage.tenant_id != tenant:
        raise ValueError("the usage event and the audit record name different tenants")
    return tenant, Docs(None if usage is None else usage.document(), audit)


def group_entries(
    entries: list[Entry],
) -> tuple[dict[uuid.UUID, list[str]], dict[uuid.UUID, list[str]], list[Entry]]:
    """The fast path: entries as the gateway writes them (`t`, and `v` and/or `a`) grouped by tenant,
    their usage and audit documents passed on unparsed; and the rest (older-format or malformed
    entries, for the slow path)."""
    batch: dict[uuid.UUID, list[str]] = {}
    audit: dict[uuid.UUID, list[str]] = {}
    tenants: dict[bytes, uuid.UUID | None] = {}
    odd: list[Entry] = []
    for entry in entries:
        fields = entry[2]
        raw_tenant, doc, record = fields.get(b"t"), fields.get(b"v"), fields.get(b"a")
        if raw_tenant is None or len(fields) != 1 + (doc is not None) + (record is not None) or len(fields) == 1:
            odd.append(entry)
            continue
        if raw_tenant in tenants:
            tenant = tenants[raw_tenant]
        else:
            try:
                tenant = uuid.UUID(raw_tenant.decode())
            except (ValueError, UnicodeDecodeError):
                tenant = None
            tenants[raw_tenant] = tenant
        try:
            text_doc = None if doc is None else doc.decode()
            text_record = None if record is None else record.decode()
        except UnicodeDecodeError:
            tenant = None
        if tenant is None:
            odd.append(entry)
            continue
        if text_doc is not None:
            _add(batch, tenant, text_doc)
        if text_record is not None:
            _add(audit, tenant, text_record)
    return batch, audit, odd


def _add(grouped: dict[uuid.UUID, list[str]], tenant: uuid.UUID, doc: str) -> None:
    docs = grouped.get(tenant)  # no setdefault: it would build a list per entry
    if docs is None:
        grouped[tenant] = [doc]
    else:
        docs.append(doc)


def stream_entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply, with their stream: RESP2 answers [[stream, entries], ...],
    RESP3 (redis-py 8's default protocol) {stream: entries}."""
    streams = reply.items() if isinstance(reply, dict) else reply or []
    return [
        (stream.decode() if isinstance(stream, bytes) else str(stream), entry_id, field_pairs(fields))
        for stream, items in streams
        for entry_id, fields in items
    ]


def field_pairs(flat: list[bytes] | None) -> dict[bytes, bytes]:
    """A stream entry's fields as RESP2 sends them (name, value, name, value...)."""
    if not flat:
        return {}
    items = iter(flat)
    return dict(zip(items, items, strict=True))
