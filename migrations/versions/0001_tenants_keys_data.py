"""Tenants, API keys and the tenant data store, under forced row-level security.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

from tenantry.db.rls import drop_tenant_table_policies, migration_app_role, tenant_table_policies

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    role = migration_app_role()
    # Roles are cluster-wide, so the role may exist already (another database, an earlier run).
    # Whatever it was, it ends up unable to bypass RLS.
    op.execute(
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
            CREATE ROLE {role} LOGIN;
          END IF;
        END $$
        """
    )
    op.execute(f"ALTER ROLE {role} NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    op.execute(
        f"""
        DO $$ BEGIN
          EXECUTE format('GRANT CONNECT ON DATABASE %I TO {role}', current_database());
        END $$
        """
    )

    op.execute(
        """
        CREATE TABLE tenants (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
            plan text NOT NULL DEFAULT 'free' CHECK (plan ~ '^[a-z][a-z0-9_-]{0,39}$'),
            status text NOT NULL DEFAULT 'active'
                CHECK (status IN ('provisioning', 'active', 'suspended', 'deprovisioned')),
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX tenants_created_at_idx ON tenants (created_at)")
    # A bound tenant may read its own row (the health canary does); nothing else.
    op.execute("ALTER TABLE tenants ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE tenants FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenants_self_select ON tenants FOR SELECT TO {role} "
        "USING (id = NULLIF(current_setting('tenantry.tenant_id', true), '')::uuid)"
    )
    op.execute("CREATE POLICY tenants_owner_all ON tenants FOR ALL TO CURRENT_USER USING (true) WITH CHECK (true)")
    op.execute(f"GRANT SELECT ON tenants TO {role}")

    op.execute(
        """
        CREATE TABLE api_keys (
            tenant_id uuid NOT NULL REFERENCES tenants (id),
            id uuid NOT NULL DEFAULT gen_random_uuid(),
            name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
            prefix text NOT NULL,
            key_hash bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz,
            PRIMARY KEY (tenant_id, id),
            CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
        )
        """
    )
    for statement in tenant_table_policies("api_keys", role):
        op.execute(statement)

    op.execute(
        """
        CREATE TABLE tenant_data (
            tenant_id uuid NOT NULL REFERENCES tenants (id),
            key text COLLATE "C" NOT NULL CHECK (length(key) BETWEEN 1 AND 1024),
            value jsonb NOT NULL,
            size_bytes integer NOT NULL CHECK (size_bytes >= 0),
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, key)
        )
        """
    )
    for statement in tenant_table_policies("tenant_data", role):
        op.execute(statement)
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_data TO {role}")


def downgrade() -> None:
    role = migration_app_role()
    for table in ("tenant_data", "api_keys"):
        for statement in drop_tenant_table_policies(table):
            op.execute(statement)
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP TABLE tenants")
    # The role is cluster-wide and may serve other databases: keep it, take back this database.
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {role}")
