"""The shared audit trail can be fenced, as the data store is (0014): a tenant's trail moves with its tier.

Since tier revision 2 (`db/tier_schema.py`) a schema- or database-tier tenant's audit records live in
its own copy. A move copies its records and chain head from one copy to the other; the copy it leaves
(the shared tables, for a tenant leaving the shared tier) has its head marked `moved`, and the trigger
`audit_chain_heads_fence` then refuses any append there (SQLSTATE TNMOV: the drain leaves the record
pending and retries it where the tenant now lives), so none lands where nobody will read it. The
statements are `tier_schema.AUDIT_FENCE`, the ones revision 2 runs in every copy.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from tenantry.db.tier_schema import AUDIT_FENCE

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in AUDIT_FENCE:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_chain_heads_fence ON audit_chain_heads")
    op.execute("ALTER TABLE audit_chain_heads DROP COLUMN moved")
