"""Governance: who a key speaks for (subject, roles), each tenant's policy document, and kills.

- `api_keys.subject` / `api_keys.roles` / `api_keys.tools`: the identity a key carries into every call
  (a key made before this has no subject: its name stands for it, and no roles), and optionally the
  only tools it may call (glob patterns; NULL: no restriction of its own).
- `tenant_policies`: one versioned policy document per tenant, under forced RLS. A change is
  announced on `tenantry_tenant_changes` (0007's function) so every replica recompiles it.
- `tenant_identity_providers`: a tenant's own token issuer (issuer, JWKS URL, audience, which claims
  name the subject and the roles); forced RLS. An issuer belongs to one tenant (unique), so a token
  of tenant A's issuer can never authenticate for tenant B. Announced like the policy.
- `governance_triggers`: each time a tenant's policy trigger fired (an agent looping, a subject
  probing for tools it is denied) and what it did (flag, throttle, kill); forced RLS.
- `kills`: what admins stopped (a session, key, subject, tool or tenant of `applies_to`; a tool of
  every tenant when `applies_to` is NULL) until they lift it. Admin data, not tenant data: only the
  owner reads and writes it (the application role has no grant), so it needs no RLS. Every gateway
  holds the live ones in memory; a change is announced on `tenantry_kills` (payload: the kill's id)
  and every replica reloads them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from tenantry.db.rls import drop_tenant_table_policies, migration_app_role, tenant_table_policies

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    role = migration_app_role()
    op.execute(
        """
        ALTER TABLE api_keys
            ADD COLUMN subject text CHECK (length(subject) BETWEEN 1 AND 200),
            ADD COLUMN roles text[] NOT NULL DEFAULT '{}',
            ADD COLUMN tools text[]
        """
    )
    op.execute(
        """
        CREATE TABLE tenant_policies (
            tenant_id uuid PRIMARY KEY REFERENCES tenants (id),
            version integer NOT NULL CHECK (version > 0),
            document jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    for statement in tenant_table_policies("tenant_policies", role):
        op.execute(statement)
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_policies TO {role}")
    op.execute(
        """
        CREATE TRIGGER tenant_policies_notify
        AFTER INSERT OR UPDATE OR DELETE ON tenant_policies
        FOR EACH ROW EXECUTE FUNCTION tenantry_notify_tenant_credentials()
        """
    )
    op.execute(
        """
        CREATE TABLE tenant_identity_providers (
            tenant_id uuid PRIMARY KEY REFERENCES tenants (id),
            issuer text NOT NULL CHECK (length(issuer) BETWEEN 1 AND 500),
            jwks_url text NOT NULL CHECK (length(jwks_url) BETWEEN 1 AND 2048),
            audience text NOT NULL CHECK (length(audience) BETWEEN 1 AND 500),
            subject_claim text NOT NULL DEFAULT 'sub',
            roles_claim text NOT NULL DEFAULT 'roles',
            algorithms text[] NOT NULL DEFAULT '{RS256,ES256}',
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT tenant_identity_providers_issuer_key UNIQUE (issuer)
        )
        """
    )
    for statement in tenant_table_policies("tenant_identity_providers", role):
        op.execute(statement)
    op.execute(f"GRANT SELECT ON tenant_identity_providers TO {role}")
    op.execute(
        """
        CREATE TRIGGER tenant_identity_providers_notify
        AFTER INSERT OR UPDATE OR DELETE ON tenant_identity_providers
        FOR EACH ROW EXECUTE FUNCTION tenantry_notify_tenant_credentials()
        """
    )
    op.execute(
        """
        CREATE TABLE governance_triggers (
            tenant_id uuid NOT NULL REFERENCES tenants (id),
            id uuid NOT NULL DEFAULT gen_random_uuid(),
            trigger text NOT NULL CHECK (trigger IN ('loop', 'probing')),
            action text NOT NULL CHECK (action IN ('flag', 'throttle', 'kill')),
            subject text NOT NULL,
            session text NOT NULL DEFAULT '',
            tool text NOT NULL DEFAULT '',
            detail text NOT NULL DEFAULT '',
            fired_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, id)
        )
        """
    )
    op.execute("CREATE INDEX governance_triggers_recent ON governance_triggers (tenant_id, fired_at)")
    for statement in tenant_table_policies("governance_triggers", role):
        op.execute(statement)
    op.execute(f"GRANT SELECT, INSERT ON governance_triggers TO {role}")
    op.execute(
        """
        CREATE TABLE kills (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            applies_to uuid REFERENCES tenants (id),
            scope text NOT NULL CHECK (scope IN ('session', 'key', 'subject', 'tool', 'tenant')),
            target text NOT NULL CHECK (length(target) BETWEEN 1 AND 300),
            reason text NOT NULL DEFAULT '' CHECK (length(reason) <= 500),
            created_at timestamptz NOT NULL DEFAULT now(),
            lifted_at timestamptz,
            CHECK (applies_to IS NOT NULL OR scope = 'tool')
        )
        """
    )
    op.execute("CREATE INDEX kills_live ON kills (created_at) WHERE lifted_at IS NULL")
    op.execute(
        """
        CREATE FUNCTION tenantry_notify_kills() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('tenantry_kills', COALESCE(NEW.id, OLD.id)::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER kills_notify AFTER INSERT OR UPDATE OR DELETE ON kills
        FOR EACH ROW EXECUTE FUNCTION tenantry_notify_kills()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER kills_notify ON kills")
    op.execute("DROP FUNCTION tenantry_notify_kills()")
    op.execute("DROP TABLE kills")
    for statement in drop_tenant_table_policies("governance_triggers"):
        op.execute(statement)
    op.execute("DROP TABLE governance_triggers")
    op.execute("DROP TRIGGER tenant_identity_providers_notify ON tenant_identity_providers")
    for statement in drop_tenant_table_policies("tenant_identity_providers"):
        op.execute(statement)
    op.execute("DROP TABLE tenant_identity_providers")
    op.execute("DROP TRIGGER tenant_policies_notify ON tenant_policies")
    for statement in drop_tenant_table_policies("tenant_policies"):
        op.execute(statement)
    op.execute("DROP TABLE tenant_policies")
    op.execute("ALTER TABLE api_keys DROP COLUMN tools, DROP COLUMN roles, DROP COLUMN subject")
