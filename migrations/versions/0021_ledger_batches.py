"""The shared ledger stores a drained batch in set-based statements, as a role of its own.

With many active tenants, every entry of a drained batch was its own tenant, and `tenantry_record_usage`
/ `tenantry_record_audit` paid their per-tenant statements for each: ~210 µs of PostgreSQL CPU per
tenant of a batch, which made PostgreSQL's CPU per call 2.6 times higher with 10,000 active tenants than
with 10 (#18). `tenantry_ledger_usage` and `tenantry_ledger_audit` store the whole batch in two
statements each (~50 µs per tenant), as the dedicated role `<app role>_ledger`, which only they reach.
`tenantry/db/ledger_schema.py` tells what the role may do and why the application role's policies are
untouched. The per-tenant functions stay: tier copies, admin changes and tests still use them.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from tenantry.db.ledger_schema import drop_statements, ledger_statements
from tenantry.db.rls import migration_app_role

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in ledger_statements(migration_app_role()):
        op.execute(statement)


def downgrade() -> None:
    for statement in drop_statements(migration_app_role()):
        op.execute(statement)
