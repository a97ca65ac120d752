"""Upstream MCP servers per tenant, the pinned tool definitions, and the drift log; all under forced RLS.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from tenantry.db.rls import drop_tenant_table_policies, migration_app_role, tenant_table_policies

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("upstream_tool_drift", "upstream_tool_pins", "upstreams")


def upgrade() -> None:
    role = migration_app_role()
    op.execute(
        """
        CREATE TABLE upstreams (
            tenant_id uuid NOT NULL REFERENCES tenants (id),
            id uuid NOT NULL DEFAULT gen_random_uuid(),
            name text NOT NULL CHECK (name ~ '^[a-z][a-z0-9-]{0,39}$'),
            url text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
            transport text NOT NULL CHECK (transport IN ('streamable_http', 'sse')),
            credentials bytea NOT NULL,
            header_names text[] NOT NULL DEFAULT '{}',
            costs jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, id),
            CONSTRAINT upstreams_tenant_name_key UNIQUE (tenant_id, name)
        )
        """
    )
    # A definition approved by the tenant's admin (first seen = approved); calls go only to pinned tools.
    op.execute(
        """
        CREATE TABLE upstream_tool_pins (
            tenant_id uuid NOT NULL,
            upstream_id uuid NOT NULL,
            tool text NOT NULL,
            sha256 text NOT NULL,
            definition jsonb NOT NULL,
            approved_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, upstream_id, tool),
            FOREIGN KEY (tenant_id, upstream_id) REFERENCES upstreams (tenant_id, id) ON DELETE CASCADE
        )
        """
    )
    # One row per changed definition seen: the audit trail of a rug pull.
    op.execute(
        """
        CREATE TABLE upstream_tool_drift (
            tenant_id uuid NOT NULL,
            upstream_id uuid NOT NULL,
            tool text NOT NULL,
            pinned_sha256 text NOT NULL,
            seen_sha256 text NOT NULL,
            definition jsonb NOT NULL,
            seen_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, upstream_id, tool, seen_sha256),
            FOREIGN KEY (tenant_id, upstream_id) REFERENCES upstreams (tenant_id, id) ON DELETE CASCADE
        )
        """
    )
    for table in TABLES:
        for statement in tenant_table_policies(table, role):
            op.execute(statement)
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON upstreams, upstream_tool_pins TO {role}")
    op.execute(f"GRANT SELECT, INSERT ON upstream_tool_drift TO {role}")


def downgrade() -> None:
    for table in TABLES:
        for statement in drop_tenant_table_policies(table):
            op.execute(statement)
        op.execute(f"DROP TABLE {table}")
