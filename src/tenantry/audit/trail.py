"""Writing the trail: every record is durable (in the ledger's Redis stream, or PostgreSQL) before the
request it records is answered.

Who writes which record, so that each request leaves exactly one:

- a tool call, on any path (MCP streamable HTTP, the fast path, legacy SSE, the REST bridge): the call
  pipeline (`gateway/calls.py`), admitted or refused. An admitted call's record rides in its usage
  event's stream entry (no round trip of its own); a refused one is an entry of its own;
- any other MCP request the SDK dispatches (initialize, tools/list, ping...): the gateway's message
  middleware (`gateway/server.py`);
- an admin change: the same middleware, with what its handler noted it changed, before and after
  (`audit/changes.py`); one made from the CLI, in the change's own transaction;
- everything else on `/mcp`, `/sse`, `/messages/`, `/api/` and `/webhooks/` (a refused credential, a
  transport error, a REST read, a Stripe event): the outermost middleware (`api/middleware.py`),
  before the response's last bytes go out. Notifications (202 Accepted on an MCP path) are not
  requests: they leave none.

Whoever writes the record marks the request's `RequestRecord.audited`, and the middleware writes only
for a request nobody else did. One exception: on the 2026-07-28 protocol the SDK runs the tools/list
handler itself inside a tools/call's request (to check its Mcp-Param headers); so a streamable HTTP
listing's record waits on the request (`pending`) and the middleware writes it only if no call's was.

When neither Redis nor PostgreSQL takes a record, the request is still
answered (refusing it would not make the trail whole) and `tenantry_audit_failures_total` counts it.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from tenantry.audit.records import (
    ADMITTED,
    ENCODE,
    REFUSED,
    SYSTEM_TENANT,
    ArgumentDigests,
    AuditRecord,
    clean,
    now_us,
)
from tenantry.ids import time_ordered_id
from tenantry.metering.ledger import Ledger, LedgerUnavailable
from tenantry.metrics import Metrics
from tenantry.observability import RequestRecord, current_request
from tenantry.tenancy import Principal

log = logging.getLogger(__name__)

# The transport a path is served on; a path not listed here is not audited (ops: /health, /metrics, docs).
_TRANSPORTS = (
    ("/mcp", "streamable_http"),
    ("/sse", "sse"),
    ("/messages/", "sse"),
    ("/api/", "rest"),
    ("/webhooks/", "rest"),  # Stripe's: a plan change it brings is recorded like an admin's
    ("/console", "console"),  # the admin console: sign-ins (failed ones too), pages read, changes made
)


def transport_of(path: str) -> str | None:
    for prefix, transport in _TRANSPORTS:
        if path == prefix or path.startswith(prefix):
            return transport
    return None


def tenant_of(value: str | None) -> uuid.UUID:
    """A tenant id as the layers below noted it, or the system trail's when there is none."""
    if value:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    return SYSTEM_TENANT


def elapsed_us(started: float) -> int:
    return int((time.perf_counter() - started) * 1_000_000)


class AuditTrail:
    def __init__(
        self, ledger: Ledger, digests: ArgumentDigests, metrics: Metrics | None = None, *, enabled: bool = True
    ) -> None:
        self._ledger = ledger
        self._metrics = metrics
        self.digests = digests
        self.enabled = enabled
        self.failures = 0  # records neither Redis nor PostgreSQL took

    def record(
        self,
        tenant_id: uuid.UUID,
        method: str,
        outcome: str,
        *,
        refused: bool,
        started: float,
        request: RequestRecord | None = None,
        **fields: Any,
    ) -> AuditRecord:
        """A record of the current request (or `request`): who, from its record, and how it ended."""
        request = request if request is not None else current_request()
        if request is not None:
            fields.setdefault("request_id", request.request_id)
            fields.setdefault("subject", request.subject)
            fields.setdefault("key_id", request.key)
            fields.setdefault("session", request.session)
        return AuditRecord(
            tenant_id=tenant_id,
            transport=(request.transport if request is not None else None) or "direct",
            method=method,
            decision=REFUSED if refused else ADMITTED,
            outcome=outcome,
            reason=outcome if refused else None,
            latency_us=elapsed_us(started),
            **fields,
        )

    def call(
        self,
        principal: Principal,
        tool: str,
        outcome: str,
        *,
        admitted: bool,
        started: float,
        event_id: uuid.UUID | None,
        arguments: Any,
        kept: Any = None,
        method: str = "tools/call",
    ) -> str:
        """A tool call's record (or a resource read's, a prompt get's: `method`) as its document, built
        directly (every call makes one): an admitted call's record is identified by its usage event's id."""
        request = current_request()
        event = None if event_id is None else str(event_id)
        doc: dict[str, Any] = {
            "id": event or str(time_ordered_id()),
            "at": now_us(),
            "rid": request.request_id if request is not None else "",
            "tr": (request.transport if request is not None else None) or "direct",
            "m": method,
            "d": ADMITTED if admitted else REFUSED,
            "o": outcome,
            "lat": elapsed_us(started),
            "tool": clean(tool),
            "sub": clean(principal.subject),
            "key": str(principal.key_id),
            "dig": self.digests.digest(principal.tenant_id, arguments),
        }
        if not admitted:
            doc["r"] = outcome
        if principal.session:
            doc["ses"] = clean(principal.session)
        if event is not None:
            doc["e"] = event
        if kept is not None:
            doc["args"] = clean(kept)
        return ENCODE(doc)

    async def write(self, record: AuditRecord, request: RequestRecord | None = None) -> None:
        """Make `record` durable, and mark the request it records as audited."""
        await self.write_document(record.tenant_id, record.document(), request)

    async def write_document(self, tenant_id: uuid.UUID, document: str, request: RequestRecord | None = None) -> None:
        """Make a record given as its document durable, and mark the request it records as audited."""
        request = request if request is not None else current_request()
        if request is not None:
            request.audited = True
        try:
            await self._ledger.append(tenant_id, document)
        except (LedgerUnavailable, ValueError) as exc:  # ValueError: not encodable (a bug, counted all the same)
            self.failures += 1
            if self._metrics is not None:
                self._metrics.audit_failures.inc()
            log.error("an audit record of tenant %s could not be written: %s", tenant_id, exc)
