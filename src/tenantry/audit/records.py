"""One audit record, as the gateway writes it to the ledger stream and `tenantry_record_audit` reads it.

A record says who (tenant, subject, key, session), what (transport, method, tool, a digest of the
arguments), what the gateway decided (admitted or refused, and the code why) and how it ended
(outcome, HTTP status, latency, the usage event of an admitted call). Never a credential, never an
argument value unless the tenant opted in, and then only after personal data was redacted.

The digest of a call's arguments is an HMAC-SHA256, keyed per tenant from the gateway's first secret
key, over the arguments' canonical JSON (keys sorted, no spaces): an auditor holding the arguments can
prove they are what was called (`tenantry audit digest`) without the trail holding them. It is written
`<key id>:<hex>`, so digests made before a key rotation still match against the older key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tenantry.ids import time_ordered_id

# The trail of what no tenant could be named for (a refused credential, a request before authentication).
SYSTEM_TENANT: Final = uuid.UUID(int=0)

ADMITTED: Final = "admitted"
REFUSED: Final = "refused"

ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_CANONICAL = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode


def clean(value: Any) -> Any:
    """`value` as PostgreSQL's json and jsonb can take it: NUL characters and lone surrogates replaced,
    numbers JSON cannot carry (NaN, infinities) null. A record a client's bytes could make unstorable
    would be lost, and an admitted call's usage event with it."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {clean(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class AuditRecord:
    tenant_id: uuid.UUID
    transport: str  # streamable_http, sse, rest, direct (no HTTP request: tests, the CLI)
    method: str  # the JSON-RPC method, or "<HTTP method> <route>" for REST
    decision: str  # admitted or refused
    outcome: str  # ok, or the code of what ended it
    latency_us: int = 0
    request_id: str = ""
    tool: str | None = None
    subject: str | None = None
    key_id: str | None = None
    session: str | None = None
    reason: str | None = None  # why it was refused
    status: int | None = None  # the HTTP status, when the record is of an HTTP request
    event_id: uuid.UUID | None = None  # the usage event of an admitted call
    args_digest: str | None = None
    args: Any = None  # only when the tenant opted in; redacted
    detail: dict[str, Any] | None = None  # an admin change's before/after; a refused credential's claim
    id: uuid.UUID = field(default_factory=time_ordered_id)
    at_us: int = field(default_factory=now_us)

    def document(self) -> str:
        """The record as one JSON object (what `tenantry_record_audit` reads; absent keys are NULL)."""
        doc: dict[str, Any] = {
            "id": str(self.id),
            "at": self.at_us,
            "rid": self.request_id,
            "tr": self.transport,
            "m": clean(self.method),
            "d": self.decision,
            "o": clean(self.outcome),
            "lat": self.latency_us,
        }
        if self.tool is not None:
            doc["tool"] = clean(self.tool)
        if self.subject is not None:
            doc["sub"] = clean(self.subject)
        if self.key_id is not None:
            doc["key"] = clean(self.key_id)
        if self.session is not None:
            doc["ses"] = clean(self.session)
        if self.reason is not None:
            doc["r"] = clean(self.reason)
        if self.status is not None:
            doc["st"] = self.status
        if self.event_id is not None:
            doc["e"] = str(self.event_id)
        if self.args_digest is not None:
            doc["dig"] = self.args_digest
        if self.args is not None:
            doc["args"] = clean(self.args)
        if self.detail is not None:
            doc["det"] = clean(self.detail)
        return ENCODE(doc)


def canonical_arguments(arguments: Any) -> bytes:
    """The arguments' canonical JSON (sorted keys, no spaces), what the digest is taken over."""
    return _CANONICAL(arguments if arguments is not None else {}).encode("utf-8", "surrogatepass")


class ArgumentDigests:
    """HMAC digests of calls' arguments, keyed per tenant from the gateway's secret keys."""

    def __init__(self, secret_keys: Sequence[str]) -> None:
        masters = [hmac.new(key.encode(), b"tenantry audit arguments", hashlib.sha256).digest() for key in secret_keys]
        self._keys = [(hashlib.sha256(master).hexdigest()[:8], master) for master in masters]
        self._tenant_keys: dict[uuid.UUID, bytes] = {}

    def _key(self, master: bytes, tenant_id: uuid.UUID) -> bytes:
        return hmac.new(master, tenant_id.bytes, hashlib.sha256).digest()

    def digest(self, tenant_id: uuid.UUID, arguments: Any) -> str:
        """`<key id>:<hex>` under the first (current) key."""
        key = self._tenant_keys.get(tenant_id)
        if key is None:
            if len(self._tenant_keys) >= 100_000:
                self._tenant_keys.clear()
            key = self._tenant_keys[tenant_id] = self._key(self._keys[0][1], tenant_id)
        return f"{self._keys[0][0]}:{hmac.digest(key, canonical_arguments(arguments), 'sha256').hex()}"

    def matches(self, tenant_id: uuid.UUID, arguments: Any, digest: str) -> bool:
        """Whether `digest` is that of `arguments` under any configured key (old keys included)."""
        kid, _, _ = digest.partition(":")
        body = canonical_arguments(arguments)
        for key_id, master in self._keys:
            if key_id == kid:
                mac = hmac.digest(self._key(master, tenant_id), body, "sha256").hex()
                return hmac.compare_digest(f"{key_id}:{mac}", digest)
        return False
