"""Announce every change of what a tenant's credentials resolve to on `tenantry_tenant_changes`.

Every gateway caches, for a few seconds, what a credential resolves to: the
tenant, whether the key is revoked, the tenant's status, plan and limits. A
change made through one replica used to reach the others only when that
cache expired, so a suspended tenant or a revoked key could still be served
elsewhere. These triggers `pg_notify` the tenant's id at commit whenever one
of those columns changes, wherever the change is made (a replica, the CLI,
billing, SQL by hand); every gateway LISTENs (`db/listener.py`) and forgets
that tenant's cached credentials (`tenants.watch`).

The payload is the tenant id alone; the channel name is part of the gateway's
contract. NOTIFY is transactional and folds identical payloads in one
transaction, so a statement changing many keys of one tenant is one message.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION tenantry_notify_tenant_credentials() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            changed record;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                changed := OLD;
            ELSE
                changed := NEW;
            END IF;
            IF TG_TABLE_NAME = 'tenants' THEN
                PERFORM pg_notify('tenantry_tenant_changes', changed.id::text);
            ELSE
                PERFORM pg_notify('tenantry_tenant_changes', changed.tenant_id::text);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER tenants_notify_credentials
        AFTER UPDATE OF status, plan, limits, deleted_at ON tenants
        FOR EACH ROW WHEN (
            OLD.status IS DISTINCT FROM NEW.status OR OLD.plan IS DISTINCT FROM NEW.plan
            OR OLD.limits IS DISTINCT FROM NEW.limits OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at
        )
        EXECUTE FUNCTION tenantry_notify_tenant_credentials()
        """
    )
    op.execute(
        """
        CREATE TRIGGER api_keys_notify_credentials_update
        AFTER UPDATE OF revoked_at ON api_keys
        FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
        EXECUTE FUNCTION tenantry_notify_tenant_credentials()
        """
    )
    op.execute(
        """
        CREATE TRIGGER api_keys_notify_credentials_delete
        AFTER DELETE ON api_keys
        FOR EACH ROW EXECUTE FUNCTION tenantry_notify_tenant_credentials()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER api_keys_notify_credentials_delete ON api_keys")
    op.execute("DROP TRIGGER api_keys_notify_credentials_update ON api_keys")
    op.execute("DROP TRIGGER tenants_notify_credentials ON tenants")
    op.execute("DROP FUNCTION tenantry_notify_tenant_credentials()")
