"""Announce every change to a tenant's upstreams on the `tenantry_upstream_changes` channel.

Running gateways cache upstream rows, discovered tools and pooled sessions;
they LISTEN on this channel (`federation/changes.py`) and drop what a payload
names, so a change made anywhere (the CLI, another replica, SQL by hand) is
seen everywhere within about a second, not at the end of the discovery TTL.
NOTIFY is transactional: delivered at commit, never for a rolled-back change,
and identical payloads in one transaction are delivered once.

Payloads: `<tenant_id>:<upstream_id>` for one upstream (a row of `upstreams`
inserted, updated or deleted, cascaded deletes included; a pinned definition
re-approved), `<tenant_id>:*` for all of a tenant's (its status changed:
suspension, offboarding). The channel name is part of the gateway's contract.

The functions run as whoever writes (the application role for tenant-scoped
writes): `pg_notify` and a new function's EXECUTE are granted to PUBLIC, so
nothing needs granting.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION tenantry_notify_upstream_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            changed record;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                changed := OLD;
            ELSE
                changed := NEW;
            END IF;
            PERFORM pg_notify('tenantry_upstream_changes', changed.tenant_id::text || ':' || changed.id::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER upstreams_notify_change
        AFTER INSERT OR UPDATE OR DELETE ON upstreams
        FOR EACH ROW EXECUTE FUNCTION tenantry_notify_upstream_change()
        """
    )
    # Only a changed digest is news to other replicas: a first-seen pin (INSERT) is made by whichever
    # gateway discovers the tool first, and re-pinning the same definition changes nothing anyone serves.
    # Pins deleted with their upstream are announced by the upstream's own row.
    op.execute(
        """
        CREATE FUNCTION tenantry_notify_pin_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('tenantry_upstream_changes', NEW.tenant_id::text || ':' || NEW.upstream_id::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER upstream_tool_pins_notify_change
        AFTER UPDATE ON upstream_tool_pins
        FOR EACH ROW WHEN (OLD.sha256 IS DISTINCT FROM NEW.sha256)
        EXECUTE FUNCTION tenantry_notify_pin_change()
        """
    )
    # Offboarding and suspension keep the tenant's rows (soft delete) but end its upstream sessions.
    op.execute(
        """
        CREATE FUNCTION tenantry_notify_tenant_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('tenantry_upstream_changes', NEW.id::text || ':*');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER tenants_notify_status_change
        AFTER UPDATE OF status ON tenants
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION tenantry_notify_tenant_change()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER tenants_notify_status_change ON tenants")
    op.execute("DROP FUNCTION tenantry_notify_tenant_change()")
    op.execute("DROP TRIGGER upstream_tool_pins_notify_change ON upstream_tool_pins")
    op.execute("DROP FUNCTION tenantry_notify_pin_change()")
    op.execute("DROP TRIGGER upstreams_notify_change ON upstreams")
    op.execute("DROP FUNCTION tenantry_notify_upstream_change()")
