"""The audit trail's refused and unusual records get partial indexes of their own.

A page filtered on `decision = refused` or on an outcome other than `ok` matched so few records that
PostgreSQL read the tenant's whole trail to fill it (207 ms at 200,000 records). The indexes
(`audit_schema.UNUSUAL_INDEXES`, which tier revision 3 also runs in every copy) hold only those
records, so admitted calls, nearly all of them, write nothing more.

Building them on a large shared trail holds off the drain's inserts while it runs (an index on a
partitioned table cannot be built concurrently): run it in a quiet hour.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from tenantry.db.audit_schema import UNUSUAL_INDEXES

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in UNUSUAL_INDEXES:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP INDEX audit_records_unusual")
    op.execute("DROP INDEX audit_records_refused")
