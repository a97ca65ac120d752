"""The usage ledger (one row per completed tool call) and per-tenant limit overrides.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

from tenantry.db.rls import drop_tenant_table_policies, migration_app_role, tenant_table_policies

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    role = migration_app_role()
    # Overrides of the plan's limits for one tenant, e.g. {"calls_per_window": 5000}.
    op.execute("ALTER TABLE tenants ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'::jsonb")
    op.execute(
        """
        CREATE TABLE usage_events (
            tenant_id uuid NOT NULL REFERENCES tenants (id),
            event_id uuid NOT NULL,
            tool text NOT NULL,
            units integer NOT NULL CHECK (units >= 0),
            outcome text NOT NULL,
            latency_ms double precision NOT NULL CHECK (latency_ms >= 0),
            occurred_at timestamptz NOT NULL,
            metered boolean NOT NULL DEFAULT true,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, event_id)
        )
        """
    )
    op.execute("CREATE INDEX usage_events_tenant_time_idx ON usage_events (tenant_id, occurred_at)")
    for statement in tenant_table_policies("usage_events", role):
        op.execute(statement)
    # Append-only for the app role: it records events and reads its own, never rewrites them.
    op.execute(f"GRANT SELECT, INSERT ON usage_events TO {role}")


def downgrade() -> None:
    for statement in drop_tenant_table_policies("usage_events"):
        op.execute(statement)
    op.execute("DROP TABLE usage_events")
    op.execute("ALTER TABLE tenants DROP COLUMN limits")
