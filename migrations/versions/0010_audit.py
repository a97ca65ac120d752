"""The audit trail: one append-only, hash-chained record per request, call and admin change.

- `audit_records`, partitioned by month on `at` (a default partition catches what falls outside the
  months made so far). Forced RLS like every tenant table, but *append-only* for the application
  role: it is granted SELECT and INSERT, never UPDATE, DELETE or TRUNCATE, and its policies cover
  only those two commands. Records of requests no tenant could be named for (a refused credential)
  belong to the system trail, tenant `00000000-0000-0000-0000-000000000000`. No foreign key to
  `tenants`: a trail outlives its tenant.
- A per-tenant hash chain: each record carries `seq` (1, 2, 3... per tenant), the previous record's
  hash and its own, `sha256(prev_hash || sha256(canonical text of the record))`, where the canonical
  text is `tenantry_audit_canonical(...)` of every column but the hashes (their row's text form: no
  two records share one; jsonb's text form is deterministic). The digests are taken set-based and the
  links chained by a running aggregate (`tenantry_audit_chain`), in one INSERT per tenant per batch.
  `audit_chain_heads` holds each tenant's last seq and hash (the lock that orders
  appends across replicas) and the anchor retention left: the seq and hash of the last record
  dropped with an expired partition, where verification starts.
- `tenantry_record_audit(tenants, counts, docs, fresh)`: the drain's (and the direct fallback's) one
  way in, shaped like `tenantry_record_usage`. For each tenant (in the order given; callers sort them,
  so two drains lock heads in one order) it binds the tenant, locks its head, skips records already
  stored (a replayed stream entry, by id; not looked for when `fresh`: entries read from the stream
  for the first time, which cannot have been stored, and the unique index on (tenant, id, at) still
  refuses a duplicate, sending the batch to the drain's careful path), and appends the rest in order. A document is
  one JSON object as the gateway wrote it: {"id", "at": epoch µs, "rid": request id, "tr":
  transport, "m": method, "tool", "sub": subject, "key", "ses": session, "d": decision, "r": reason,
  "o": outcome, "st": HTTP status, "lat": latency µs, "e": usage event id, "dig": HMAC digest of the
  arguments, "args": redacted arguments (opt-in), "det": detail (admin before/after)}.
- `tenantry_audit_partitions(ahead, keep_months)`: makes the partitions of this month and `ahead`
  more (moving in what the default partition took of their range), and (keep_months > 0) drops every
  partition wholly older than that many months, first moving each tenant's anchor to its last dropped
  record. Run by the owner: at migration, and by a lifespan
  task on a schedule (`audit/maintenance.py`).

The statements themselves live in `tenantry/db/audit_schema.py`, the one source this migration and
tier revision 2 (a tier tenant's own copy of the trail) both take them from.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from tenantry.db.audit_schema import DROP_STATEMENTS, audit_statements
from tenantry.db.rls import migration_app_role

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in audit_statements(migration_app_role()):
        op.execute(statement)


def downgrade() -> None:
    for statement in DROP_STATEMENTS:
        op.execute(statement)
